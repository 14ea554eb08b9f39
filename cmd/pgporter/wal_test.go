package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// TestWALArchive runs wal-push as a real server's archive_command, as the
// postgres OS user, while root holds the repository open (as a publication
// would) and writes into it too: every segment is archived at the first
// try, fetches back byte for byte, and the repository stays the postgres
// user's.
func TestWALArchive(t *testing.T) {
	testsupport.RequireRoot(t, "running the archiver as postgres")
	// The server runs the archive command as postgres: it needs a copy of
	// this binary it can execute, and a repository it owns.
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{})
	base := c.Base
	exe := filepath.Join(base, "pgporter.test")
	copyExecutable(t, exe)
	repo := filepath.Join(base, "repo")
	require.NoError(t, os.Mkdir(repo, 0o755))
	require.NoError(t, c.Chown(repo))
	var pgUID uint32
	{
		fi, err := os.Stat(base)
		require.NoError(t, err)
		pgUID = fi.Sys().(*syscall.Stat_t).Uid
	}
	require.NotZero(t, pgUID)

	c.Stop(t)
	c.Settings["archive_mode"] = "on"
	c.Settings["archive_command"] = fmt.Sprintf("%s=1 %s wal-push --repo %s %%p", testMainEnv, exe, repo)
	c.Start(t)

	// Root holds the repository open all along, as a publication would,
	// and reads segments through that handle once they are archived.
	held, err := chunkstore.OpenRepo(repo, nil)
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
		c.Exec(t, "postgres", "SELECT pg_switch_wal()")
	}
	// Wait for the archiver to report the last switched segment done.
	deadline := time.Now().Add(time.Minute)
	for {
		st := strings.Fields(c.Query(t, "postgres", "SELECT coalesce(last_archived_wal, '-') || ' ' || failed_count FROM pg_stat_archiver"))
		require.Len(t, st, 2)
		require.Equal(t, "0", st[1], "a push failed: %s", c.LogTail(4096))
		if st[0] >= segs[len(segs)-1] && st[0] != "-" {
			break
		}
		require.True(t, time.Now().Before(deadline), "archiving stalled at %s: %s", st[0], c.LogTail(4096))
		time.Sleep(50 * time.Millisecond)
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

	require.NoError(t, filepath.Walk(repo, func(p string, fi os.FileInfo, err error) error {
		require.NoError(t, err)
		require.Equal(t, pgUID, fi.Sys().(*syscall.Stat_t).Uid, "%s is not the repository owner's", p)
		return nil
	}))
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
