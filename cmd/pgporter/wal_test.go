package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/orchestrator"
)

// TestWALArchive runs wal-push as a real server's archive_command, as the
// postgres OS user, while root holds the repository open (as a publication
// would) and writes into it too: every segment is archived at the first
// try, fetches back byte for byte, and the repository stays the postgres
// user's.
func TestWALArchive(t *testing.T) {
	c, repo, pgUID := archivingCluster(t, testsupport.ClusterOptions{})

	// Root holds the repository open all along, as a publication would,
	// and reads segments through that handle once they are archived.
	held, err := chunkstore.OpenRepo(context.Background(), repo, nil)
	require.NoError(t, err)
	defer held.Close()

	// Root writes into the repository while the archiver runs: a history
	// file pushed by hand.
	hist := filepath.Join(t.TempDir(), "00000009.history")
	require.NoError(t, os.WriteFile(hist, []byte("8\t0/9000000\tby hand\n"), 0o600))
	code, _, errs := runCLI(t, "wal-push", "--repo", repo, hist)
	require.Equal(t, 0, code, errs)

	c.Exec(t, "postgres", "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
	var segs []string
	for range 3 {
		segs = append(segs, strings.TrimSpace(c.Query(t, "postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")))
		c.Exec(t, "postgres", "INSERT INTO t SELECT g, 'more' FROM generate_series(1, 1000) g")
		waitArchived(t, c)
	}

	for _, seg := range segs {
		want, err := os.ReadFile(filepath.Join(c.DataDir, "pg_wal", seg))
		require.NoError(t, err)
		dst := filepath.Join(t.TempDir(), "RECOVERYXLOG")
		code, _, errs := runCLI(t, "wal-fetch", "--repo", repo, seg, dst)
		require.Equal(t, 0, code, errs)
		got, err := os.ReadFile(dst)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), "segment %s differs", seg)
		require.NoError(t, held.FetchWAL(t.Context(), seg, dst))
		got, err = os.ReadFile(dst)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), "segment %s differs through the handle held open", seg)
	}
	code, _, errs = runCLI(t, "wal-fetch", "--repo", repo, "0000000100000000000000FF", filepath.Join(t.TempDir(), "x"))
	require.Equal(t, exitNotFound, code, errs)
	require.Contains(t, errs, "not in the archive")
	code, _, errs = runCLI(t, "wal-push", "--repo", repo, filepath.Join(c.DataDir, "postmaster.pid"))
	require.Equal(t, exitUsage, code, errs)

	code, out, errs := runCLI(t, "check", "--repo", repo, "--read-data")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `: ok, \d+ chunks, 0 restore points, 4 WAL files checked`, out)
	code, _, errs = runCLI(t, "check", "--repo", filepath.Join(t.TempDir(), "nope"))
	require.Equal(t, exitNotFound, code, errs)

	require.NoError(t, filepath.Walk(repo, func(p string, fi os.FileInfo, err error) error {
		require.NoError(t, err)
		require.Equal(t, pgUID, fi.Sys().(*syscall.Stat_t).Uid, "%s is not the repository owner's", p)
		return nil
	}))
}

// archivingCluster starts a cluster whose archive_command is this binary's
// wal-push into a repository the postgres OS user owns, and returns that
// user's uid. selfCommand runs the same copy for the test's exports.
func archivingCluster(t *testing.T, o testsupport.ClusterOptions) (c *testsupport.Cluster, repo string, pgUID uint32) {
	t.Helper()
	return archivingClusterTo(t, o, "", "")
}

// archivingClusterTo is archivingCluster archiving into repo (a URL) when
// it is not "", with env (VAR=value words) before the archive command.
func archivingClusterTo(t *testing.T, o testsupport.ClusterOptions, toRepo, env string) (c *testsupport.Cluster, repo string, pgUID uint32) {
	t.Helper()
	testsupport.RequireRoot(t, "running the archiver as postgres")
	// The server runs the archive command as postgres: it needs a copy of
	// this binary it can execute, and a repository it owns.
	c = testsupport.NewCluster(t, o)
	exe := filepath.Join(c.Base, "pgporter.test")
	copyExecutable(t, exe)
	repo = filepath.Join(c.Base, "repo")
	require.NoError(t, os.Mkdir(repo, 0o755))
	require.NoError(t, c.Chown(repo))
	fi, err := os.Stat(c.Base)
	require.NoError(t, err)
	pgUID = fi.Sys().(*syscall.Stat_t).Uid
	require.NotZero(t, pgUID)
	self := testMainEnv + "=1 " + exe
	old := selfCommand
	selfCommand = self
	t.Cleanup(func() { selfCommand = old })

	if toRepo != "" {
		repo = toRepo
	}
	c.Stop(t)
	c.Settings["archive_mode"] = "on"
	c.Settings["archive_command"] = env + self + " wal-push --repo " + repo + " %p"
	c.Start(t)
	return c, repo, pgUID
}

// waitArchived waits until the server has archived everything up to the
// segment it writes now, which it switches away from.
func waitArchived(t *testing.T, c *testsupport.Cluster) {
	t.Helper()
	seg := c.Query(t, "postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")
	c.Exec(t, "postgres", "SELECT pg_switch_wal()")
	deadline := time.Now().Add(time.Minute)
	for {
		st := strings.Fields(c.Query(t, "postgres", "SELECT coalesce(last_archived_wal, '-') || ' ' || failed_count FROM pg_stat_archiver"))
		require.Len(t, st, 2)
		require.Equal(t, "0", st[1], "a push failed: %s", c.LogTail(4096))
		if st[0] != "-" && st[0] >= seg {
			return
		}
		require.True(t, time.Now().Before(deadline), "archiving stalled at %s: %s", st[0], c.LogTail(4096))
		time.Sleep(20 * time.Millisecond)
	}
}

// lostRows is the story up to the export: a cluster archiving into
// repo, backed up with 100 rows in shop.orders, then 150 more, the time
// noted, and all but the first 50 deleted, archived.
func lostRows(t *testing.T) (c *testsupport.Cluster, repo, noted string) {
	t.Helper()
	testsupport.RequireFUSE(t)
	c, repo, _ = archivingCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "pw"})
	c.CreateDB(t, "shop")
	c.Exec(t, "shop", "CREATE TABLE orders(id int primary key, item text); INSERT INTO orders SELECT g, 'before the backup' FROM generate_series(1, 100) g")
	code, _, errs := runCLI(t, "backup", "--repo", repo, "--from-server", c.ConnString("postgres"))
	require.Equal(t, 0, code, errs)
	c.Exec(t, "shop", "INSERT INTO orders SELECT g, 'after the backup' FROM generate_series(101, 250) g")
	noted = c.Query(t, "shop", "SELECT clock_timestamp()::text")
	c.Exec(t, "shop", "DELETE FROM orders WHERE id > 50")
	waitArchived(t, c)
	return c, repo, noted
}

// TestExportAt is the story: archive on, backup, rows inserted,
// the time noted, the rows deleted. An export --at the noted time holds
// them; one --at end does not. sessions show says what the replay reached.
func TestExportAt(t *testing.T) {
	c, repo, noted := lostRows(t)
	var code int
	var errs string
	t.Setenv("PGPASSWORD", "pw")

	// restore-points says how far the archive takes the backup.
	type point struct {
		WAL struct {
			Timeline uint32 `json:"timeline"`
			Start    string `json:"start_lsn"`
			End      string `json:"end_lsn"`
		} `json:"wal"`
		Recoverable struct {
			To          time.Time `json:"to"`
			LastSegment string    `json:"last_segment"`
			GapAfter    string    `json:"gap_after"`
		} `json:"recoverable"`
	}
	points := func() []point {
		code, out, errs := runCLI(t, "restore-points", "--repo", repo, "--json")
		require.Equal(t, 0, code, errs)
		var res struct {
			Points []point `json:"restore_points"`
		}
		require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
		require.Len(t, res.Points, 1)
		return res.Points
	}
	p := points()[0]
	require.Equal(t, uint32(1), p.WAL.Timeline)
	require.Regexp(t, `^[0-9A-F]+/[0-9A-F]+$`, p.WAL.Start)
	require.Regexp(t, `^[0-9A-F]+/[0-9A-F]+$`, p.WAL.End)
	require.False(t, p.Recoverable.To.IsZero(), "the archive continues the backup")
	require.GreaterOrEqual(t, p.Recoverable.LastSegment, c.Query(t, "postgres", "SELECT pg_walfile_name('"+p.WAL.End+"')"))
	require.Empty(t, p.Recoverable.GapAfter)
	// A segment far ahead, past missing ones: a gap.
	far := filepath.Join(t.TempDir(), "0000000100000000000000F0")
	require.NoError(t, os.WriteFile(far, []byte("not WAL"), 0o600))
	code, _, errs = runCLI(t, "wal-push", "--repo", repo, far)
	require.Equal(t, 0, code, errs)
	require.Equal(t, p.Recoverable.LastSegment, points()[0].Recoverable.GapAfter)
	code, out, errs := runCLI(t, "restore-points", "--repo", repo)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "(gap after "+p.Recoverable.LastSegment+")")

	home := t.TempDir()
	count := func(to, db string) string {
		flags := []string{"--pg-host", c.SocketDir, "--pg-port", strconv.Itoa(c.Port), "--pg-user", c.User}
		code, _, errs := runCLI(t, append([]string{"restore", filepath.Join(to, "shop"), "--dbname", db, "--create"}, flags...)...)
		require.Equal(t, exitOK, code, errs)
		return c.Query(t, db, "SELECT count(*) || ' ' || max(id) FROM orders")
	}
	c.Exec(t, "shop", "CREATE TABLE other(x int)") // after the backup; not dumped with --table orders
	for _, tc := range []struct {
		at, db, want string
	}{
		{noted, "shop_at", "250 250"},
		{"end", "shop_end", "50 50"},
	} {
		to := t.TempDir()
		code, out, errs := runCLI(t, "--home", home, "export", "--repo", repo, "--at", tc.at, "--db", "shop", "--table", "orders", "--to", to, "--staging-dir", cliStagingDir(t), "--json")
		require.Equal(t, 0, code, "%s\n%s", out, errs)
		var res exportJSON
		require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
		require.Equal(t, tc.want, count(to, tc.db), "export --at %s", tc.at)
		code, out, errs = runCLI(t, "--home", home, "sessions", "show", res.Session)
		require.Equal(t, 0, code, errs)
		require.Contains(t, out, "reached        LSN ")
		// The dump says what it is of.
		b, err := os.ReadFile(filepath.Join(to, "shop", orchestrator.SourceFile))
		require.NoError(t, err)
		var src orchestrator.DumpSource
		require.NoError(t, json.Unmarshal(b, &src))
		require.Equal(t, res.Session, src.Session)
		require.Equal(t, "shop", src.Database)
		require.NotNil(t, src.At)
		require.NotNil(t, src.Reached)
		require.Contains(t, out, "reached        LSN "+src.Reached.LSN)
		require.Equal(t, []string{"orders"}, src.Filter.Tables)
	}

	// A publication as of the noted time; it records what it reached, so
	// that a resume does not replay again.
	port := freeTCPPort(t)
	pub := publishCLI(t, home, repo, port, "--at", noted)
	conn := pubConn(t, port, "shop")
	var n int
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT count(*) FROM orders").Scan(&n))
	require.Equal(t, 250, n)
	conn.Close(t.Context())
	j, err := orchestrator.OpenJournal(home)
	require.NoError(t, err)
	got, err := j.GetPublication(pub.ID)
	require.NoError(t, err)
	require.NotNil(t, got.Reached)
	require.NotEmpty(t, got.Reached.LSN)
	code, _, errs = runCLI(t, "--home", home, "unpublish", pub.ID)
	require.Equal(t, 0, code, errs)

	// Retention: nothing to forget with one point kept; prune drops the
	// WAL of before the backup, keeps what --at needs, and check agrees.
	code, out, errs = runCLI(t, "forget", "--repo", repo, "--keep-last", "1")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "1 restore points kept, 0 forgotten")
	walFiles := func() int {
		code, out, errs := runCLI(t, "check", "--repo", repo, "--json")
		require.Equal(t, 0, code, errs)
		var res struct {
			Report chunkstore.CheckReport `json:"report"`
		}
		require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
		return res.Report.WALFiles
	}
	n0 := walFiles()
	code, out, errs = runCLI(t, "prune", "--repo", repo, "--json")
	require.Equal(t, 0, code, errs)
	var pruned struct {
		Stats chunkstore.PruneStats `json:"stats"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &pruned), out)
	require.Positive(t, pruned.Stats.WALFilesPruned, "the WAL of before the backup")
	require.Equal(t, n0-pruned.Stats.WALFilesPruned, walFiles())
	code, _, errs = runCLI(t, "check", "--repo", repo, "--read-data")
	require.Equal(t, 0, code, errs)
	to := t.TempDir()
	code, _, errs = runCLI(t, "--home", home, "export", "--repo", repo, "--at", noted, "--db", "shop", "--to", to, "--staging-dir", cliStagingDir(t))
	require.Equal(t, 0, code, errs)
	require.Equal(t, "250 250", count(to, "shop_after_prune"), "the pruned archive still reaches the noted time")

	// A target the archive does not reach fails before any dump.
	code, _, errs = runCLI(t, "--home", home, "export", "--repo", repo, "--at-lsn", "FF/0", "--db", "shop", "--to", t.TempDir(), "--staging-dir", cliStagingDir(t))
	require.NotEqual(t, 0, code)
	require.Contains(t, errs, "WAL archive ends before the recovery target")
	require.Equal(t, exitNotFound, orchestrator.ExitWALMissing, "the probe of the restore command expects wal-fetch's not-found code")
	code, _, errs = runCLI(t, "--home", home, "export", "--repo", repo, "--at", "yesterday", "--db", "shop", "--to", t.TempDir())
	require.Equal(t, exitUsage, code, errs)
}

// TestExportAtFailover: a primary archives, is backed up, and fails over
// to its standby, which archives too (archive_mode=always: both push the
// same segments, which the archive takes once). The new primary writes on
// timeline 2. An export of the timeline-1 backup --at end follows the
// history file onto timeline 2 and holds its rows; with --at-timeline
// current it stays on timeline 1 and holds the rows written before the
// failover only.
func TestExportAtFailover(t *testing.T) {
	testsupport.RequireFUSE(t)
	c, repo, _ := archivingCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "pw"})
	c.CreateDB(t, "shop")
	c.Exec(t, "shop", "CREATE TABLE orders(id int primary key, item text); INSERT INTO orders SELECT g, 'before the backup' FROM generate_series(1, 100) g")
	code, _, errs := runCLI(t, "backup", "--repo", repo, "--from-server", c.ConnString("postgres"))
	require.Equal(t, 0, code, errs)
	standby := c.NewStandby(t, map[string]string{"archive_mode": "always"})
	c.Exec(t, "shop", "INSERT INTO orders SELECT g, 'timeline 1' FROM generate_series(101, 200) g")
	waitArchived(t, c)
	// The standby has replayed it all, and archived it too.
	lsn := c.Query(t, "postgres", "SELECT pg_current_wal_lsn()")
	deadline := time.Now().Add(time.Minute)
	for standby.Query(t, "postgres", "SELECT pg_last_wal_replay_lsn() >= '"+lsn+"'") != "t" {
		require.True(t, time.Now().Before(deadline), "the standby does not catch up")
		time.Sleep(20 * time.Millisecond)
	}
	c.Stop(t)
	standby.Exec(t, "postgres", "SELECT pg_promote()")
	standby.Exec(t, "shop", "INSERT INTO orders SELECT g, 'timeline 2' FROM generate_series(201, 300) g")
	waitArchived(t, standby)
	require.Equal(t, "00000002", standby.Query(t, "postgres", "SELECT left(pg_walfile_name(pg_current_wal_lsn()), 8)"), "a new timeline")
	n, err := strconv.Atoi(standby.Query(t, "postgres", "SELECT archived_count FROM pg_stat_archiver"))
	require.NoError(t, err)
	require.Positive(t, n, "the standby archives")

	code, out, errs := runCLI(t, "restore-points", "--repo", repo, "--json")
	require.Equal(t, 0, code, errs)
	var res struct {
		Points []struct {
			Recoverable chunkstore.Coverage `json:"recoverable"`
		} `json:"restore_points"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
	require.Len(t, res.Points, 1)
	cov := res.Points[0].Recoverable
	require.Equal(t, uint32(2), cov.Timeline, "%+v", cov)
	require.True(t, strings.HasPrefix(cov.LastSegment, "00000002"), cov.LastSegment)
	require.Empty(t, cov.GapAfter)
	code, out, errs = runCLI(t, "restore-points", "--repo", repo)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, " on timeline 2")

	t.Setenv("PGPASSWORD", "pw")
	home := t.TempDir()
	for _, tc := range []struct {
		timeline, db, want string
	}{
		{"", "shop_latest", "300 300"},
		{"current", "shop_current", "200 200"},
	} {
		to := t.TempDir()
		args := []string{"--home", home, "export", "--repo", repo, "--at", "end", "--db", "shop", "--to", to, "--staging-dir", cliStagingDir(t)}
		if tc.timeline != "" {
			args = append(args, "--at-timeline", tc.timeline)
		}
		code, out, errs := runCLI(t, args...)
		require.Equal(t, 0, code, "%s\n%s", out, errs)
		flags := []string{"--pg-host", standby.SocketDir, "--pg-port", strconv.Itoa(standby.Port), "--pg-user", standby.User}
		code, _, errs = runCLI(t, append([]string{"restore", filepath.Join(to, "shop"), "--dbname", tc.db, "--create"}, flags...)...)
		require.Equal(t, exitOK, code, errs)
		require.Equal(t, tc.want, standby.Query(t, tc.db, "SELECT count(*) || ' ' || max(id) FROM orders"), "--at-timeline %q", tc.timeline)
	}
	code, _, errs = runCLI(t, "--home", home, "export", "--repo", repo, "--at", "end", "--at-timeline", "two", "--db", "shop", "--to", t.TempDir())
	require.Equal(t, exitUsage, code, errs)
	require.Contains(t, errs, "is not a timeline")
	code, _, errs = runCLI(t, "--home", home, "export", "--repo", repo, "--at-timeline", "2", "--db", "shop", "--to", t.TempDir())
	require.Equal(t, exitUsage, code, errs)
	require.Contains(t, errs, "--at-timeline needs --at")
}

// copyExecutable copies this test binary to p, executable by everyone.
func copyExecutable(t *testing.T, p string) {
	t.Helper()
	self, err := os.Executable()
	require.NoError(t, err)
	in, err := os.Open(self)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
}

// TestWALRepoPeerCLI runs wal-push and wal-fetch against a repository mover
// in another process, over real QUIC on loopback: a segment pushed by an
// identity trusted with archive is durable in the repository when the
// command exits 0 (a local wal-fetch on the repository host reads it), a
// retried push succeeds as "already", another content under the name is
// refused with exit code 6, the segment fetches back byte for byte through
// an identity trusted with read, and a name the archive lacks exits 8 at
// once. Each identity is refused what its permission does not grant (exit
// code 5, naming the permission), and the flags are checked.
func TestWALRepoPeerCLI(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "repo")
	r, err := chunkstore.OpenRepo(context.Background(), repo, nil)
	require.NoError(t, err)
	require.NoError(t, r.Close())

	srvHome, srvID := initMoverHome(t)
	archHome, archID := initMoverHome(t)
	readHome, readID := initMoverHome(t)
	code, _, errs := runCLI(t, "mover", "trust", archID, "--allow", "archive", "--name", "db1-archiver", "--home", srvHome)
	require.Equal(t, 0, code, errs)
	code, _, errs = runCLI(t, "mover", "trust", readID, "--allow", "read", "--home", srvHome)
	require.Equal(t, 0, code, errs)
	srv := startProc(t, "--home", srvHome, "mover", "serve", "--listen", "127.0.0.1:0", "--repo", repo)
	peer := srv.waitListening(t) + "#" + srvID

	const name = "000000010000000000000001"
	src := t.TempDir()
	seg := filepath.Join(src, name)
	want := append(bytes.Repeat([]byte("wal record "), 300<<10), make([]byte, 16<<20-11*(300<<10))...)
	require.NoError(t, os.WriteFile(seg, want, 0o600))

	code, _, errs = runCLI(t, "--home", archHome, "wal-push", "--repo-peer", peer, seg)
	require.Equal(t, 0, code, errs)
	local := filepath.Join(t.TempDir(), "LOCAL")
	code, _, errs = runCLI(t, "wal-fetch", "--repo", repo, name, local)
	require.Equal(t, 0, code, errs)
	got, err := os.ReadFile(local)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "the segment read on the repository host differs")

	code, _, errs = runCLI(t, "--home", archHome, "wal-push", "--repo-peer", peer, seg)
	require.Equal(t, 0, code, errs)
	require.Contains(t, errs, "archived already, with the same content")

	other := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(other, append([]byte("another cluster"), want[15:]...), 0o600))
	code, _, errs = runCLI(t, "--home", archHome, "wal-push", "--repo-peer", peer, other)
	require.Equal(t, exitConflict, code, errs)
	require.Contains(t, errs, "a different WAL file of that name is archived already")

	dst := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	code, _, errs = runCLI(t, "--home", readHome, "wal-fetch", "--repo-peer", peer, name, dst)
	require.Equal(t, 0, code, errs)
	got, err = os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "the segment fetched through the mover differs")

	start := time.Now()
	code, _, errs = runCLI(t, "--home", readHome, "wal-fetch", "--repo-peer", peer, "0000000100000000000000FF", filepath.Join(t.TempDir(), "x"))
	require.Equal(t, exitNotFound, code, errs)
	require.Contains(t, errs, "not in the archive")
	require.Less(t, time.Since(start), 10*time.Second, "a missing name is not retried")

	t.Run("permissions", func(t *testing.T) {
		code, _, errs := runCLI(t, "--home", readHome, "wal-push", "--repo-peer", peer, seg)
		require.Equal(t, exitPermission, code, errs)
		require.Contains(t, errs, "lacks permission archive")
		// A refused fetch is no end of the archive: recovery must stop.
		code, _, errs = runCLI(t, "--home", archHome, "wal-fetch", "--repo-peer", peer, name, dst)
		require.Equal(t, exitAbortRecovery, code, errs)
		require.Contains(t, errs, "lacks permission read")
	})
	t.Run("usage", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			err  string
		}{
			{[]string{"wal-push", "--repo", repo, "--repo-peer", peer, seg}, "not both"},
			{[]string{"wal-push", seg}, "--repo DIR or --repo-peer"},
			{[]string{"wal-push", "--repo-peer", "127.0.0.1:1", seg}, "ADDR#PEER_ID"},
			{[]string{"wal-fetch", "--repo-peer", "127.0.0.1:1#nope", name, dst}, "mover address"},
			{[]string{"wal-fetch", "--repo-peer", peer, "--retry-for", "0s", name, dst}, "--retry-for must be positive"},
			{[]string{"wal-fetch", "--repo-peer", peer, "RECOVERYXLOG", dst}, "is not a WAL file name"},
		} {
			code, _, errs := runCLI(t, append([]string{"--home", readHome}, tc.args...)...)
			require.Equal(t, exitUsage, code, errs)
			require.Contains(t, errs, tc.err)
		}
	})

	require.NoError(t, srv.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, 0, srv.wait(t), srv.stderr.String())
}

// TestWALFetchExitCodes: wal-fetch exits 8 only for a file the archive
// lacks, which PostgreSQL takes for the end of the archive; a repository
// that is not there or cannot be read exits 255, which makes PostgreSQL
// stop the recovery instead of promoting without the WAL.
func TestWALFetchExitCodes(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "repo")
	seg := filepath.Join(t.TempDir(), "000000010000000000000003")
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = byte(i * 7 / 5)
	}
	require.NoError(t, os.WriteFile(seg, b, 0o600))
	code, _, errs := runCLI(t, "wal-push", "--repo", repo, seg)
	require.Equal(t, exitOK, code, errs)
	dst := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	code, _, errs = runCLI(t, "wal-fetch", "--repo", repo, "000000010000000000000003", dst)
	require.Equal(t, exitOK, code, errs)

	code, _, errs = runCLI(t, "wal-fetch", "--repo", repo, "000000010000000000000004", dst)
	require.Equal(t, exitNotFound, code, errs)
	code, _, errs = runCLI(t, "wal-fetch", "--repo", repo, "not-wal", dst)
	require.Equal(t, exitUsage, code, errs)
	code, _, errs = runCLI(t, "wal-fetch", "--repo", filepath.Join(t.TempDir(), "typo"), "000000010000000000000003", dst)
	require.Equal(t, exitAbortRecovery, code, "a repository that is not there is no end of the archive: %s", errs)

	// The segment's chunks gone from the packs.
	packs, err := filepath.Glob(filepath.Join(repo, "chunks", "packs", "*.pack"))
	require.NoError(t, err)
	require.NotEmpty(t, packs)
	for _, p := range packs {
		require.NoError(t, os.Truncate(p, 0))
	}
	code, _, errs = runCLI(t, "wal-fetch", "--repo", repo, "000000010000000000000003", dst)
	require.Equal(t, exitAbortRecovery, code, errs)
	require.Greater(t, exitAbortRecovery, 125, "PostgreSQL aborts recovery above 125")
}

// TestExportAtRepoPeer: a point-in-time export whose repository is a
// repository mover's. The throwaway instance recovers with WAL that this
// process fetches from the mover for it (the instance's OS user cannot use
// the mover identity): the rows deleted after the noted time are there.
func TestExportAtRepoPeer(t *testing.T) {
	c, repo, noted := lostRows(t)

	srvHome, srvID := initMoverHome(t)
	home, homeID := initMoverHome(t)
	code, _, errs := runCLI(t, "mover", "trust", homeID, "--allow", "read", "--home", srvHome)
	require.Equal(t, 0, code, errs)
	srv := startProc(t, "--home", srvHome, "mover", "serve", "--listen", "127.0.0.1:0", "--repo", repo)
	peer := srv.waitListening(t) + "#" + srvID

	t.Setenv("PGPASSWORD", "pw")
	flags := []string{"--pg-host", c.SocketDir, "--pg-port", strconv.Itoa(c.Port), "--pg-user", c.User}
	for _, tc := range []struct{ at, db, want string }{
		{noted, "shop_at", "250"},
		{"end", "shop_end", "50"},
	} {
		to := t.TempDir()
		code, out, errs := runCLI(t, "--home", home, "export", "--repo-peer", peer, "--at", tc.at, "--db", "shop", "--to", to, "--staging-dir", cliStagingDir(t))
		require.Equal(t, 0, code, "%s\n%s", out, errs)
		code, _, errs = runCLI(t, append([]string{"restore", filepath.Join(to, "shop"), "--dbname", tc.db, "--create"}, flags...)...)
		require.Equal(t, exitOK, code, errs)
		require.Equal(t, tc.want, c.Query(t, tc.db, "SELECT count(*) FROM orders"), "export --repo-peer --at %s", tc.at)
	}

	// Through a staging mover: the job carries the target, and the staging
	// mover fetches the WAL for the instance it starts.
	stagingHome, stagingID := initMoverHome(t)
	targetHome, targetID := initMoverHome(t)
	for _, tr := range [][]string{{stagingID, "read", srvHome}, {stagingID, "send", targetHome}, {homeID, "orchestrate", stagingHome}} {
		code, _, errs := runCLI(t, "mover", "trust", tr[0], "--allow", tr[1], "--home", tr[2])
		require.Equal(t, 0, code, errs)
	}
	root := t.TempDir()
	staging := startProc(t, "--home", stagingHome, "mover", "serve", "--listen", "127.0.0.1:0", "--staging-dir", cliStagingDir(t))
	target := startProc(t, "--home", targetHome, "mover", "serve", "--listen", "127.0.0.1:0", "--root", root)
	stagingPeer := staging.waitListening(t) + "#" + stagingID
	code, out, errs := runCLI(t, "--home", home, "export", "--repo-peer", peer, "--staging", stagingPeer,
		"--target", target.waitListening(t)+"#"+targetID, "--at", noted, "--db", "shop", "--to", filepath.Join(root, "staged"))
	require.Equal(t, 0, code, "%s\n%s\nstaging mover: %s", out, errs, staging.stderr.String())
	code, _, errs = runCLI(t, append([]string{"restore", filepath.Join(root, "staged", "shop"), "--dbname", "shop_staged", "--create"}, flags...)...)
	require.Equal(t, exitOK, code, errs)
	require.Equal(t, "250", c.Query(t, "shop_staged", "SELECT count(*) FROM orders"), "export --staging --at")

	// publish --on the staging mover's host, as of the noted time.
	onPort := freeTCPPort(t)
	code, out, errs = runCLI(t, "--home", home, "publish", "--on", stagingPeer, "--repo-peer", peer,
		"--restore-point", "latest", "--port", strconv.Itoa(onPort), "--at", noted, "--json")
	require.Equal(t, 0, code, "%s\n%s", out, errs)
	var onPub struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &onPub), out)
	onConn := pubConn(t, onPort, "shop")
	var onRows int
	require.NoError(t, onConn.QueryRow(t.Context(), "SELECT count(*) FROM orders").Scan(&onRows))
	require.Equal(t, 250, onRows, "publish --on --at")
	onConn.Close(t.Context())
	code, _, errs = runCLI(t, "--home", home, "unpublish", onPub.ID)
	require.Equal(t, 0, code, errs)

	// A publication as of the noted time, from the repository mover: its
	// background process fetches the WAL for its instance.
	port := freeTCPPort(t)
	pub := publishFrom(t, home, []string{"--repo-peer", peer}, port, "--at", noted)
	require.NotNil(t, pub.Reached)
	conn := pubConn(t, port, "shop")
	var n int
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT count(*) FROM orders").Scan(&n))
	require.Equal(t, 250, n)
	conn.Close(t.Context())
	code, _, errs = runCLI(t, "--home", home, "unpublish", pub.ID)
	require.Equal(t, 0, code, errs)

	ents, err := filepath.Glob(filepath.Join(os.TempDir(), "pgporter-wal-*"))
	require.NoError(t, err)
	require.Empty(t, ents, "the WAL proxies' sockets are gone")
}
