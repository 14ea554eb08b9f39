package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/internal/pgtool"
	"github.com/pgporter/pgporter/internal/s3test"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/mover"
)

// A repository on object storage, as a user reaches it: the AWS variables
// that scripts/s3-server prints, and --repo s3://BUCKET/PREFIX. A backup
// of a real cluster goes there; restore-points and check read it from a
// host with an empty cache; an export mounts it and delivers a dump that
// pg_restore reads; what is not built for object storage yet is refused
// with exit code 2 and says so.
func TestObjectStorageCLI(t *testing.T) {
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	srv := s3test.Shared(t)
	srv.SetEnv(t)
	repo := "s3://" + srv.NewBucket(t) + "/prod/db1"

	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "pw"})
	c.CreateDB(t, "shop")
	c.PgBench(t, "shop", 1)
	c.Stop(t)

	code, out, errs := runCLI(t, "restore-points", "--repo", repo)
	require.Equal(t, exitNotFound, code, "an empty bucket holds no repository: %s", errs)
	require.Contains(t, errs, "holds no repository")

	code, out, errs = runCLI(t, "backup", "--repo", repo, "--pgdata", c.DataDir)
	require.Equal(t, 0, code, errs)
	id := lastLine(out)
	require.Regexp(t, `^rp-`, id)

	t.Setenv("PGPORTER_CACHE_DIR", t.TempDir()) // another host
	code, out, errs = runCLI(t, "restore-points", "--repo", repo, "--json")
	require.Equal(t, 0, code, errs)
	var list struct {
		RestorePoints []struct {
			ID string `json:"id"`
		} `json:"restore_points"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &list))
	require.Len(t, list.RestorePoints, 1)
	require.Equal(t, id, list.RestorePoints[0].ID)

	code, out, errs = runCLI(t, "check", "--repo", repo, "--read-data")
	require.Equal(t, 0, code, "%s%s", out, errs)

	// The runs' outcomes are recorded in the bucket, and metrics reads them.
	code, out, errs = runCLI(t, "metrics", "--repo", repo)
	require.Equal(t, 0, code, errs)
	label := regexp.QuoteMeta(`repo="` + repo + `"`)
	require.Regexp(t, `pgporter_repo_up\{`+label+`\} 1\n`, out)
	require.Regexp(t, `pgporter_repo_restore_points\{`+label+`\} 1\n`, out)
	require.Regexp(t, `pgporter_repo_last_run_success\{op="backup",`+label+`\} 1\n`, out)
	require.Regexp(t, `pgporter_repo_last_run_success\{op="check-read-data",`+label+`\} 1\n`, out)

	c.Start(t)
	t.Setenv("PGPASSWORD", "pw")
	home, to := t.TempDir(), t.TempDir()
	code, out, errs = runCLI(t, "--home", home, "export", "--repo", repo, "--db", "shop", "--to", to, "--staging-dir", cliStagingDir(t), "--json")
	require.Equal(t, 0, code, errs)
	var res exportJSON
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
	require.Equal(t, "done", res.State)
	dump := filepath.Join(to, "shop")
	rep, err := mover.Verify(context.Background(), dump)
	require.NoError(t, err)
	require.Empty(t, rep.Problems)
	pgRestore, err := pgtool.Tool("pg_restore", "")
	require.NoError(t, err)
	toc, err := exec.Command(pgRestore, "--list", dump).CombinedOutput()
	require.NoError(t, err, "%s", toc)
	require.Contains(t, string(toc), "TABLE DATA public pgbench_accounts")

	// The export left the blocks it read in this host's cache, on disk;
	// with --cache-size 0 it leaves none.
	blockFiles := func() []string {
		m, err := filepath.Glob(filepath.Join(os.Getenv("PGPORTER_CACHE_DIR"), "repos", "*", "chunks", "blocks", "[0-9a-f]*"))
		require.NoError(t, err)
		return m
	}
	require.NotEmpty(t, blockFiles())
	t.Setenv("PGPORTER_CACHE_SIZE", "") // what the flag sets, restored after the test
	t.Setenv("PGPORTER_CACHE_DIR", t.TempDir())
	code, _, errs = runCLI(t, "--home", home, "export", "--repo", repo, "--db", "shop", "--to", to, "--overwrite", "--staging-dir", cliStagingDir(t), "--cache-size", "0")
	require.Equal(t, 0, code, errs)
	require.Empty(t, blockFiles())

	// Copied to a directory and into another bucket: the same points, and
	// a second copy copies nothing.
	local := filepath.Join(t.TempDir(), "local")
	code, out, errs = runCLI(t, "repo", "copy", "--from", repo, "--to", local, "--json")
	require.Equal(t, 0, code, errs)
	var cp struct {
		Points int `json:"restore_points"`
		Chunks int `json:"chunks"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &cp), out)
	require.Equal(t, 1, cp.Points)
	require.Positive(t, cp.Chunks)
	other := "s3://" + srv.NewBucket(t) + "/copy"
	code, out, errs = runCLI(t, "repo", "copy", "--from", local, "--to", other)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "1 restore points copied")
	code, out, errs = runCLI(t, "repo", "copy", "--from", repo, "--to", other)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "0 restore points copied (1 present already)")
	for _, r := range []string{local, other} {
		code, out, errs = runCLI(t, "check", "--repo", r, "--read-data")
		require.Equal(t, 0, code, "%s: %s%s", r, out, errs)
		code, out, errs = runCLI(t, "restore-points", "--repo", r)
		require.Equal(t, 0, code, errs)
		require.Contains(t, out, id)
	}

	// forget and prune work on object storage: the copy's point goes, and
	// with it every chunk.
	code, out, errs = runCLI(t, "forget", "--repo", other, id)
	require.Equal(t, 0, code, errs)
	code, out, errs = runCLI(t, "restore-points", "--repo", other, "--json")
	require.Equal(t, 0, code, errs)
	require.NotContains(t, out, id)
	code, out, errs = runCLI(t, "prune", "--repo", other, "--json")
	require.Equal(t, 0, code, errs)
	var pr struct {
		Stats struct {
			Live  int `json:"live_chunks"`
			Dead  int `json:"dead_chunks"`
			Packs int `json:"packs_deleted"`
		} `json:"stats"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &pr), out)
	require.Zero(t, pr.Stats.Live)
	require.Equal(t, cp.Chunks, pr.Stats.Dead)
	require.Positive(t, pr.Stats.Packs)
	code, out, errs = runCLI(t, "check", "--repo", other, "--read-data")
	require.Equal(t, 0, code, "%s%s", out, errs)

	// The WAL archive on object storage: wal-push, then wal-fetch byte for
	// byte, a missing segment exit 8 (the end of the archive for
	// PostgreSQL), a conflicting push exit 6.
	walDir := t.TempDir()
	seg := filepath.Join(walDir, "000000010000000000000007")
	segData := bytes.Repeat([]byte("wal "), 4<<20)
	require.NoError(t, os.WriteFile(seg, segData, 0o600))
	code, _, errs = runCLI(t, "wal-push", "--repo", repo, seg)
	require.Equal(t, 0, code, errs)
	fetched := filepath.Join(walDir, "fetched")
	code, _, errs = runCLI(t, "wal-fetch", "--repo", repo, "000000010000000000000007", fetched)
	require.Equal(t, 0, code, errs)
	got, err := os.ReadFile(fetched)
	require.NoError(t, err)
	require.True(t, bytes.Equal(segData, got), "wal-fetch gives back what wal-push stored")
	code, _, _ = runCLI(t, "wal-fetch", "--repo", repo, "000000010000000000000008", fetched)
	require.Equal(t, exitNotFound, code)
	require.NoError(t, os.WriteFile(seg, bytes.Repeat([]byte("xal "), 4<<20), 0o600))
	code, _, errs = runCLI(t, "wal-push", "--repo", repo, seg)
	require.Equal(t, exitConflict, code, errs)

	// repo copy brings the WAL archive too: from the bucket into the
	// directory copied before, whose point it holds already.
	code, out, errs = runCLI(t, "repo", "copy", "--from", repo, "--to", local)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "0 restore points copied (1 present already), 1 WAL files (0 present already)")
	require.NoError(t, os.Remove(fetched))
	code, _, errs = runCLI(t, "wal-fetch", "--repo", local, "000000010000000000000007", fetched)
	require.Equal(t, 0, code, errs)
	got, err = os.ReadFile(fetched)
	require.NoError(t, err)
	require.True(t, bytes.Equal(segData, got), "wal-fetch from the copy gives back what wal-push stored in the bucket")

	_, err = os.Stat("s3:")
	require.ErrorIs(t, err, os.ErrNotExist, "a URL is never taken for a directory")
}

// The point-in-time story of TestExportAt with the repository in a bucket:
// the server archives into it (its archive_command, run as postgres, has
// the AWS variables and a cache of its own), the backup goes there, and
// exports --at the noted time and --at end replay the WAL read from the
// bucket (by this process, through the WAL proxy, for the instance). The
// repository is encrypted: what the archiver pushes, the backup, and what
// the instance replays go through the seal.
func TestExportAtFromBucket(t *testing.T) {
	testsupport.RequireFUSE(t)
	srv := s3test.Shared(t)
	srv.SetEnv(t)
	url := "s3://" + srv.NewBucket(t) + "/pitr"
	env := ""
	for _, kv := range srv.Env() {
		env += kv + " "
	}
	// The archiver's cache: postgres's own, where postgres can reach it.
	pgCache, err := os.MkdirTemp("/var/tmp", "pgporter-pgcache-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(pgCache) })
	pg, err := user.Lookup("postgres")
	require.NoError(t, err)
	uid, err := strconv.Atoi(pg.Uid)
	require.NoError(t, err)
	require.NoError(t, os.Chown(pgCache, uid, -1))
	// The repository is encrypted: the archiver reads its passphrase from
	// a file postgres may read, the commands below from the environment.
	passFile := filepath.Join(pgCache, "repo.pass")
	require.NoError(t, os.WriteFile(passFile, []byte("archive passphrase\n"), 0o600))
	require.NoError(t, os.Chown(passFile, uid, -1))
	code, _, errs := runCLI(t, "repo", "init", "--repo", url, "--encrypt", "--repo-password-file", passFile)
	require.Equal(t, 0, code, errs)
	t.Setenv(crypt.PasswordEnv, "archive passphrase")
	// The archiver has the passphrase from its first start (through the
	// variable, then the flag): a segment completed before the flag is set
	// would otherwise fail its push, and pg_stat_archiver's failed_count,
	// which waitArchived checks, survives the restart.
	c, repo, _ := archivingClusterTo(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "pw"}, url,
		"env "+env+"PGPORTER_CACHE_DIR="+pgCache+" PGPORTER_REPO_PASSWORD_FILE="+passFile+" ")
	c.Stop(t)
	c.Settings["archive_command"] = strings.Replace(c.Settings["archive_command"], " %p", " --repo-password-file "+passFile+" %p", 1)
	c.Start(t)
	c.CreateDB(t, "shop")
	c.Exec(t, "shop", "CREATE TABLE orders(id int primary key, item text); INSERT INTO orders SELECT g, 'before the backup' FROM generate_series(1, 100) g")
	code, _, errs = runCLI(t, "backup", "--repo", repo, "--from-server", c.ConnString("postgres"))
	require.Equal(t, 0, code, errs)
	c.Exec(t, "shop", "INSERT INTO orders SELECT g, 'after the backup' FROM generate_series(101, 250) g")
	noted := c.Query(t, "shop", "SELECT clock_timestamp()::text")
	c.Exec(t, "shop", "DELETE FROM orders WHERE id > 50")
	waitArchived(t, c)
	t.Setenv("PGPASSWORD", "pw")

	code, out, errs := runCLI(t, "restore-points", "--repo", repo, "--json")
	require.Equal(t, 0, code, errs)
	var pts struct {
		Points []struct {
			Recoverable struct {
				LastSegment string `json:"last_segment"`
			} `json:"recoverable"`
		} `json:"restore_points"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &pts), out)
	require.Len(t, pts.Points, 1)
	require.NotEmpty(t, pts.Points[0].Recoverable.LastSegment, "restore-points reads how far the bucket's archive takes the backup")

	home := t.TempDir()
	for _, tc := range []struct{ at, db, want string }{
		{noted, "shop_at", "250 250"},
		{"end", "shop_end", "50 50"},
	} {
		to := t.TempDir()
		code, out, errs := runCLI(t, "--home", home, "export", "--repo", repo, "--at", tc.at, "--db", "shop", "--table", "orders", "--to", to, "--staging-dir", cliStagingDir(t), "--json")
		require.Equal(t, 0, code, "%s\n%s", out, errs)
		flags := []string{"--pg-host", c.SocketDir, "--pg-port", strconv.Itoa(c.Port), "--pg-user", c.User}
		code, _, errs = runCLI(t, append([]string{"restore", filepath.Join(to, "shop"), "--dbname", tc.db, "--create"}, flags...)...)
		require.Equal(t, exitOK, code, errs)
		require.Equal(t, tc.want, c.Query(t, tc.db, "SELECT count(*) || ' ' || max(id) FROM orders"), "export --at %s", tc.at)
	}
}
