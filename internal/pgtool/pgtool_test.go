package pgtool_test

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/pgtool"
	"github.com/pgporter/pgporter/internal/testsupport"
)

func TestServerBinDir(t *testing.T) {
	bin := testsupport.RequirePG(t)
	major := filepath.Base(filepath.Dir(bin))
	got, err := pgtool.ServerBinDir(major, "")
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(got, "postgres"))
	got, err = pgtool.ServerBinDir(major, bin)
	require.NoError(t, err)
	require.Equal(t, bin, got)
	_, err = pgtool.ServerBinDir(major, t.TempDir())
	require.ErrorContains(t, err, "no postgres binary in")
	_, err = pgtool.ServerBinDir("9", "")
	require.ErrorContains(t, err, "install the Debian package postgresql-9")

	newest, err := pgtool.NewestServerBinDir()
	require.NoError(t, err)
	ms := pgtool.Majors()
	require.NotEmpty(t, ms)
	require.Equal(t, filepath.Join(pgtool.Root, ms[0], "bin"), newest)
	for i := 1; i < len(ms); i++ {
		a, _ := strconv.ParseFloat(ms[i-1], 64)
		b, _ := strconv.ParseFloat(ms[i], 64)
		require.Greater(t, a, b, "Majors is newest first: %v", ms)
	}
}

func TestTool(t *testing.T) {
	bin := testsupport.RequirePG(t)
	p, err := pgtool.Tool("pg_restore", bin)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(bin, "pg_restore"), p)
	p, err = pgtool.Tool("pg_restore", "")
	require.NoError(t, err)
	require.FileExists(t, p)
	_, err = pgtool.Tool("pg_restore", t.TempDir())
	require.ErrorIs(t, err, pgtool.ErrNoTool)
	_, err = pgtool.Tool("pg_no_such_tool", "")
	require.ErrorIs(t, err, pgtool.ErrNoTool)

	major := filepath.Base(filepath.Dir(bin))
	require.NotEmpty(t, pgtool.VersionTool("pg_controldata", major))
	require.Empty(t, pgtool.VersionTool("pg_no_such_tool", major))
}

// Quote's values come back whole through libpq's parser (pgx's, which
// follows it), quotes, backslashes and spaces included.
func TestQuote(t *testing.T) {
	for _, v := range []string{"shop", "a b", `it's`, `back\slash`, `\'`, "", "x=y"} {
		cfg, err := pgconn.ParseConfig("host=/tmp dbname=" + pgtool.Quote(v) + " user=" + pgtool.Quote(v+"u"))
		require.NoError(t, err, "%q", v)
		require.Equal(t, v, cfg.Database)
		require.Equal(t, v+"u", cfg.User)
	}
}

// A cluster with a password: initdb, start, a query, stop, start again on
// the same data; the wrong password is refused; the log is kept.
func TestCluster(t *testing.T) {
	bin := testsupport.RequirePG(t)
	base := filepath.Join("/var/tmp", "pgtool-test-"+strconv.Itoa(os.Getpid()))
	t.Cleanup(func() { os.RemoveAll(base) })
	c, err := pgtool.NewCluster(pgtool.ClusterOptions{BinDir: bin, Base: base, Password: "s3cret'\\", Settings: map[string]string{"fsync": "off"}, DieWithParent: true})
	require.NoError(t, err)
	ctx := t.Context()
	require.NoError(t, c.Initdb(ctx, c.DataDir))
	require.NoError(t, c.Start(ctx))
	t.Cleanup(func() { c.Stop() })
	require.Positive(t, c.PID())
	require.Error(t, c.Start(ctx), "started twice")

	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	require.NoError(t, err)
	var fsync string
	require.NoError(t, conn.QueryRow(ctx, "SHOW fsync").Scan(&fsync))
	require.Equal(t, "off", fsync, "Settings reach the server")
	require.NoError(t, conn.Close(ctx))
	_, err = pgx.Connect(ctx, c.ConnStringAs("postgres", pgtool.SuperUser, "wrong"))
	require.ErrorContains(t, err, "password authentication failed")

	out, err := c.ClientCmd(ctx, "postgres", "psql", "-Atc", "SELECT 1+1").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Equal(t, "2\n", string(out))

	require.NoError(t, c.Stop())
	require.Zero(t, c.PID())
	require.NoError(t, c.Stop(), "a stopped cluster stops again")
	require.NoError(t, c.Start(ctx))
	require.NoError(t, c.Stop())
	require.Contains(t, c.LogTail(64<<10), "database system is shut down")
}
