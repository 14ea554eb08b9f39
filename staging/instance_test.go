package staging

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

// copyDataDir makes a copy of a stopped cluster's data directory, owned like
// the original, in a directory the postgres OS user can reach.
func copyDataDir(t testing.TB, src string) (dataDir, runDir string) {
	t.Helper()
	base, err := os.MkdirTemp("/var/tmp", "pgporter-staging-test-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	require.NoError(t, os.Chmod(base, 0o755))
	dataDir = filepath.Join(base, "data")
	out, err := exec.Command("cp", "-a", src, dataDir).CombinedOutput()
	require.NoError(t, err, string(out))
	runDir = filepath.Join(base, "run")
	require.NoError(t, os.Mkdir(runDir, 0o700))
	return dataDir, runDir
}

// crashImage returns a copy of a password-protected cluster that carries
// what a crash-consistent image of a standby with a preload library has.
func crashImage(t *testing.T) (dataDir, runDir, binDir string) {
	t.Helper()
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "s3cret"})
	c.Exec(t, "postgres", "CREATE ROLE reader LOGIN PASSWORD 'r3ad'")
	c.CreateDB(t, "shop")
	c.Exec(t, "shop", "CREATE TABLE items(id int primary key, name text); INSERT INTO items SELECT g, 'item '||g FROM generate_series(1,1000) g;")
	c.Stop(t)
	dataDir, runDir = copyDataDir(t, c.DataDir)
	stale := "99999\n" + dataDir + "\n1700000000\n5432\n/tmp\n*\n  5432001 0\nready\n"
	require.NoError(t, os.WriteFile(filepath.Join(dataDir, "postmaster.pid"), []byte(stale), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dataDir, "recovery.signal"), nil, 0o600))
	auto := "shared_preload_libraries = 'pg_stat_statements,no_such_extension'\nprimary_conninfo = 'host=10.0.0.1 user=replicator'\nrestore_command = 'cp /archive/%f %p'\n"
	require.NoError(t, os.WriteFile(filepath.Join(dataDir, "postgresql.auto.conf"), []byte(auto), 0o600))
	if os.Geteuid() == 0 {
		for _, f := range []string{"postmaster.pid", "recovery.signal", "postgresql.auto.conf"} {
			st, _ := os.Stat(filepath.Join(dataDir, "PG_VERSION"))
			sys := st.Sys().(*syscall.Stat_t)
			require.NoError(t, os.Chown(filepath.Join(dataDir, f), int(sys.Uid), int(sys.Gid)))
		}
	}
	return dataDir, runDir, c.BinDir
}

func TestInstanceStartsOnCrashImage(t *testing.T) {
	testsupport.RequirePG(t)
	dataDir, runDir, bin := crashImage(t)
	ctx := context.Background()

	_, err := StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: bin})
	require.ErrorIs(t, err, ErrMissingPreload)
	require.Contains(t, err.Error(), "no_such_extension")
	require.NotContains(t, err.Error(), "pg_stat_statements", "installed libraries are not reported missing")

	in, err := StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: bin, AllowMissingPreload: true})
	require.NoError(t, err)
	defer in.Stop(ctx)
	require.Equal(t, []string{"no_such_extension"}, in.Dropped)
	require.NoFileExists(t, filepath.Join(dataDir, "recovery.signal"))

	// The user's password as of the backup is what is checked.
	conn, err := pgx.Connect(ctx, in.ConnString("shop", "reader")+" password=r3ad")
	require.NoError(t, err)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = 'shop'").Scan(&n))
	require.Equal(t, 1, n)
	var archive, listen string
	require.NoError(t, conn.QueryRow(ctx, "SELECT current_setting('archive_mode'), current_setting('listen_addresses')").Scan(&archive, &listen))
	require.Equal(t, "off", archive)
	require.Empty(t, listen)
	conn.Close(ctx)

	_, err = pgx.Connect(ctx, in.ConnString("shop", "reader")+" password=wrong")
	require.Error(t, err)
	require.Contains(t, err.Error(), "password authentication failed")

	pid := in.PID()
	require.NoError(t, in.Stop(ctx))
	require.NoError(t, in.Stop(ctx), "Stop twice is fine")
	require.Error(t, syscall.Kill(pid, 0), "postgres must be gone")
	require.True(t, strings.Contains(LogTail(in.LogFile, 50), "database system is shut down"))
}

// TestThrowawayInstance: a throwaway instance runs without fsync, and Stop
// does not write a shutdown checkpoint (its writes are discarded anyway).
func TestThrowawayInstance(t *testing.T) {
	testsupport.RequirePG(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "pw"})
	c.Stop(t)
	dataDir, runDir := copyDataDir(t, c.DataDir)
	in, err := StartInstance(context.Background(), InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir, Throwaway: true})
	require.NoError(t, err)
	conn, err := in.connect(context.Background(), "postgres", "postgres", "pw")
	require.NoError(t, err)
	var fsync string
	require.NoError(t, conn.QueryRow(context.Background(), "SHOW fsync").Scan(&fsync))
	conn.Close(context.Background())
	require.Equal(t, "off", fsync)
	require.NoError(t, in.Stop(context.Background()))
	log, err := os.ReadFile(in.LogFile)
	require.NoError(t, err)
	// The server's own log, after the single-user run that scrubs settings.
	server := string(log)[strings.LastIndex(string(log), "starting PostgreSQL"):]
	require.Contains(t, server, "immediate shutdown")
	require.NotContains(t, server, "checkpoint starting: shutdown")
}

// TestInstanceStarted: Started gets the postmaster's PID while it runs,
// before Start returns (a caller journals it then, so that a caller killed
// while the server starts leaves a server its retry can stop); an error
// from Started stops the server and fails the start.
func TestInstanceStarted(t *testing.T) {
	testsupport.RequirePG(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "pw"})
	c.Stop(t)
	ctx := context.Background()

	dataDir, runDir := copyDataDir(t, c.DataDir)
	var got int
	in, err := StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir, Throwaway: true, Started: func(pid int) error {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		require.NoError(t, err, "the postmaster runs when Started is called")
		require.Contains(t, string(stat), "(postgres)")
		got = pid
		return nil
	}})
	require.NoError(t, err)
	require.Equal(t, in.PID(), got)
	require.NoError(t, in.Stop(ctx))

	dataDir, runDir = copyDataDir(t, c.DataDir)
	refused := errors.New("journal full (test)")
	_, err = StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir, Throwaway: true, Started: func(pid int) error {
		got = pid
		return refused
	}})
	require.ErrorIs(t, err, refused)
	require.Error(t, syscall.Kill(got, 0), "the server Started refused is stopped")
}
