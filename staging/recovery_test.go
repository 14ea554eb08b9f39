package staging

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/testsupport"
)

// archivedCluster is a cluster archiving its WAL with cp into a directory,
// a cold copy of it taken after ten rows, and the time noted after ten
// more rows, before all rows are deleted. Everything past the copy is
// archived when it returns.
func archivedCluster(t *testing.T) (c *testsupport.Cluster, archive, pristine, noted string) {
	t.Helper()
	base, err := os.MkdirTemp("/var/tmp", "pgporter-archive-test-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	require.NoError(t, os.Chmod(base, 0o755))
	archive = filepath.Join(base, "archive")
	require.NoError(t, os.Mkdir(archive, 0o755))
	c = testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "pw",
		Settings: map[string]string{"archive_mode": "on", "archive_command": "cp %p " + archive + "/%f"}})
	require.NoError(t, c.Chown(archive))
	c.Exec(t, "postgres", "CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 10)")
	c.Stop(t)
	pristine, _ = copyDataDir(t, c.DataDir)
	c.Start(t)
	c.Exec(t, "postgres", "INSERT INTO t SELECT generate_series(11, 20)")
	noted = c.Query(t, "postgres", "SELECT clock_timestamp()::text")
	c.Exec(t, "postgres", "DELETE FROM t")
	last := c.Query(t, "postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")
	c.Exec(t, "postgres", "SELECT pg_switch_wal()")
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(filepath.Join(archive, last)); err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "archiving stalled: %s", c.LogTail(2048))
		time.Sleep(20 * time.Millisecond)
	}
	return c, archive, pristine, noted
}

// An instance started with a recovery target replays the archive to it and
// opens promoted: the rows written before the target are there, the delete
// after it is not, and Recovered says where replay stopped. Without a
// target it replays to the end of the archive.
func TestRecoveryToTime(t *testing.T) {
	testsupport.RequirePG(t)
	c, archive, pristine, noted := archivedCluster(t)
	ctx := context.Background()
	restore := "cp " + archive + "/%f %p"
	target, err := time.Parse("2006-01-02 15:04:05.999999-07", noted)
	require.NoError(t, err)
	rows := func(in *Instance) int {
		conn, err := in.connect(ctx, "postgres", "postgres", "pw")
		require.NoError(t, err)
		defer conn.Close(ctx)
		var n int
		var recovering bool
		require.NoError(t, conn.QueryRow(ctx, "SELECT count(*), pg_is_in_recovery() FROM t").Scan(&n, &recovering))
		require.False(t, recovering, "promoted")
		return n
	}

	dataDir, runDir := copyDataDir(t, pristine)
	in, err := StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir, Throwaway: true,
		Recovery: &Recovery{RestoreCommand: restore, Time: noted}})
	require.NoError(t, err, LogTail(filepath.Join(runDir, "postgres.log"), 30))
	require.NotNil(t, in.Recovered)
	require.NotEmpty(t, in.Recovered.LSN)
	require.False(t, in.Recovered.Time.IsZero())
	require.False(t, in.Recovered.Time.After(target), "replay stopped at %s, after the target %s", in.Recovered.Time, target)
	require.Equal(t, 20, rows(in), "the rows of before the target, none of the delete after it")
	require.NoError(t, in.Stop(ctx))

	// No target: the end of the archive, the delete included.
	dataDir, runDir = copyDataDir(t, pristine)
	in, err = StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir, Throwaway: true,
		Recovery: &Recovery{RestoreCommand: restore}})
	require.NoError(t, err, LogTail(filepath.Join(runDir, "postgres.log"), 30))
	require.True(t, in.Recovered.Time.After(target), "replayed to %s", in.Recovered.Time)
	require.Zero(t, rows(in))
	require.NoError(t, in.Stop(ctx))

	// A target past the end of the archive is a clear error.
	dataDir, runDir = copyDataDir(t, pristine)
	_, err = StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir, Throwaway: true,
		Recovery: &Recovery{RestoreCommand: restore, LSN: "FF/0"}})
	require.ErrorIs(t, err, ErrTargetNotReached)
	require.True(t, strings.Contains(err.Error(), "recovery ended before"), err.Error())
}

func TestRecoveryValidate(t *testing.T) {
	for _, tc := range []struct {
		r  Recovery
		ok bool
	}{
		{Recovery{RestoreCommand: "x"}, true},
		{Recovery{RestoreCommand: "x", Time: "2026-12-01 14:32:00+00"}, true},
		{Recovery{RestoreCommand: "x", LSN: "0/3000148"}, true},
		{Recovery{RestoreCommand: "x", Name: "before-upgrade"}, true},
		{Recovery{}, false},
		{Recovery{RestoreCommand: "x", LSN: "3000148"}, false},
		{Recovery{RestoreCommand: "x", LSN: "0/1", Name: "n"}, false},
		{Recovery{RestoreCommand: "x", Name: "a'b"}, false},
	} {
		err := tc.r.Validate()
		require.Equal(t, tc.ok, err == nil, "%+v: %v", tc.r, err)
	}
}
