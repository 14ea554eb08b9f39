package pgtool_test

import (
	"path/filepath"
	"strconv"
	"testing"

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
