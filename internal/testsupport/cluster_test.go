package testsupport

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

func TestClusterStarts(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := NewCluster(t, ClusterOptions{})
	t.Logf("NewCluster took %v", time.Since(start))

	require.Equal(t, "1", c.Query(t, "postgres", "SELECT 1"))
	require.Equal(t, "off", c.Query(t, "postgres", "SHOW fsync"))
	require.Equal(t, "", c.Query(t, "postgres", "SHOW listen_addresses"))
	require.Equal(t, c.SocketDir, c.Query(t, "postgres", "SHOW unix_socket_directories"))
	require.Equal(t, strconv.Itoa(c.Port), c.Query(t, "postgres", "SHOW port"))
	require.Equal(t, "UTF8", c.Query(t, "postgres", "SHOW server_encoding"))
	require.Equal(t, "", c.Query(t, "postgres", "SELECT NULL"))
	require.FileExists(t, filepath.Join(c.SocketDir, ".s.PGSQL."+strconv.Itoa(c.Port)))

	if os.Geteuid() == 0 {
		status, err := os.ReadFile("/proc/" + strconv.Itoa(c.PID()) + "/status")
		require.NoError(t, err)
		require.NotRegexp(t, `(?m)^Uid:\s+0\s`, string(status), "the server must not run as root")
	}

	// Several statements in one Exec; Query returns the last one's first row.
	c.Exec(t, "postgres", "CREATE TABLE t (v text); INSERT INTO t VALUES ('a'), ('b')")
	require.Equal(t, "2", c.Query(t, "postgres", "SELECT count(*) FROM t"))
	require.Equal(t, "b", c.Query(t, "postgres", "SELECT 1; SELECT max(v) FROM t"))

	out, err := c.ServerCmd(t.Context(), "pg_controldata", "-D", c.DataDir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "in production")
}

func TestClusterCleanupRemovesEverything(t *testing.T) {
	t.Parallel()
	var base string
	var pid int
	t.Run("cluster", func(t *testing.T) {
		c := NewCluster(t, ClusterOptions{})
		base, pid = c.base, c.PID()
		require.DirExists(t, c.DataDir)
	})
	require.NoDirExists(t, base)
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	require.ErrorIs(t, err, os.ErrNotExist, "postmaster %d still running", pid)
}

func TestClusterAwkwardDatabaseNames(t *testing.T) {
	t.Parallel()
	c := NewCluster(t, ClusterOptions{})
	for _, name := range []string{"Weird DB", "ünïcödé", `a"b`, "it's", `back\slash`, " lead and trail ", "semi;colon", "=eq"} {
		t.Run(name, func(t *testing.T) {
			c.CreateDB(t, name)
			require.Equal(t, name, c.Query(t, name, "SELECT current_database()"))
			c.Exec(t, name, "CREATE TABLE x (i int); INSERT INTO x VALUES (42)")
			dir := filepath.Join(t.TempDir(), "dump")
			c.Dump(t, name, dir, 1)
			require.FileExists(t, filepath.Join(dir, "toc.dat"))
		})
	}
}

func TestClusterPgBenchAndDump(t *testing.T) {
	t.Parallel()
	c := NewCluster(t, ClusterOptions{})
	c.CreateDB(t, "bench")
	c.PgBench(t, "bench", 1)
	require.Equal(t, "100000", c.Query(t, "bench", "SELECT count(*) FROM pgbench_accounts"))

	dir := filepath.Join(t.TempDir(), "dump")
	c.Dump(t, "bench", dir, 2)
	require.FileExists(t, filepath.Join(dir, "toc.dat"))
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var dats int
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".dat") && e.Name() != "toc.dat" {
			dats++
		}
	}
	require.GreaterOrEqual(t, dats, 4, "one data file per pgbench table")

	// The dump belongs to the test: it can change and remove it.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "toc.dat"), []byte("x"), 0o600))
	require.NoError(t, os.RemoveAll(dir))
}

func TestClusterStopStart(t *testing.T) {
	t.Parallel()
	c := NewCluster(t, ClusterOptions{})
	c.Exec(t, "postgres", "CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)")
	pid := c.PID()
	c.Stop(t)
	require.Zero(t, c.PID())
	c.Stop(t) // a no-op when stopped
	_, err := pgx.Connect(t.Context(), c.ConnString("postgres"))
	require.Error(t, err)

	c.Start(t)
	require.NotEqual(t, pid, c.PID())
	require.Equal(t, "7", c.Query(t, "postgres", "SELECT v FROM kept"))
}

func TestClusterScramAndSettings(t *testing.T) {
	t.Parallel()
	c := NewCluster(t, ClusterOptions{
		Auth:          "scram-sha-256",
		SuperPassword: `pa ss'w\ord`,
		Settings:      map[string]string{"work_mem": "7MB", "application_name": "it's a test"},
		Locale:        "C",
	})
	require.Equal(t, "7MB", c.Query(t, "postgres", "SHOW work_mem"))
	require.Equal(t, "it's a test", c.Query(t, "postgres", "SHOW application_name"))
	require.Equal(t, "C", c.Query(t, "postgres", "SHOW lc_collate"))
	require.Equal(t, "SCRAM-SHA-256", c.Query(t, "postgres",
		"SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = 'postgres'"))

	_, err := pgx.Connect(t.Context(), c.ConnStringAs("postgres", "postgres", "wrong"))
	require.ErrorContains(t, err, "password authentication failed")
	_, err = pgx.Connect(t.Context(), c.ConnStringAs("postgres", "postgres", ""))
	require.Error(t, err)

	// Client programs get the password through the environment.
	c.PgBench(t, "postgres", 1)
	c.Dump(t, "postgres", filepath.Join(t.TempDir(), "dump"), 1)
}

func TestClusterTemplateAndFreshInitdb(t *testing.T) {
	t.Parallel()
	const q = "SELECT system_identifier FROM pg_control_system()"
	a := NewCluster(t, ClusterOptions{})
	start := time.Now()
	b := NewCluster(t, ClusterOptions{})
	t.Logf("NewCluster from the cached initdb took %v", time.Since(start))
	fresh := NewCluster(t, ClusterOptions{FreshInitdb: true})
	require.NotEqual(t, a.DataDir, b.DataDir)
	require.Equal(t, a.Query(t, "postgres", q), b.Query(t, "postgres", q), "copies of one initdb")
	require.NotEqual(t, a.Query(t, "postgres", q), fresh.Query(t, "postgres", q))

	// The copies are independent clusters.
	a.Exec(t, "postgres", "CREATE TABLE only_in_a ()")
	require.Equal(t, "0", b.Query(t, "postgres", "SELECT count(*) FROM pg_class WHERE relname = 'only_in_a'"))
}
