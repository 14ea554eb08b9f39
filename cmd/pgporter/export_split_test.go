package main

import (
	"encoding/json"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestExportSplitTables: with --split-tables-from below pgbench_accounts'
// size, its data is dumped in page ranges by pgporter beside pg_dump; the
// export streams, verifies and commits it like any dump, and
// 'pgporter restore' brings back the same rows.
func TestExportSplitTables(t *testing.T) {
	c, repo := exportFixture(t)
	home, to := t.TempDir(), t.TempDir()
	args := []string{"--home", home, "export", "--repo", repo, "--db", "shop", "--to", to, "--staging-dir", cliStagingDir(t), "--json"}

	code, _, errs := runCLI(t, append(args, "--split-tables-from", "lots")...)
	require.Equal(t, exitUsage, code)
	require.Contains(t, errs, `--split-tables-from "lots"`)

	code, out, errs := runCLI(t, append(args, "--split-tables-from", "1M")...)
	require.Equal(t, 0, code, errs)
	var res exportJSON
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
	require.Equal(t, "done", res.State)
	code, out, errs = runCLI(t, "--home", home, "sessions", "show", res.Session)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "the data of 1 in parallel page ranges", "pgbench_accounts, the one table over 1 MiB")
	dump := filepath.Join(to, "shop")
	require.FileExists(t, filepath.Join(dump, "table-"+c.Query(t, "shop", "SELECT 'pgbench_accounts'::regclass::oid")+".dat"))

	sum := "SELECT count(*) || ' ' || sum(abalance) || ' ' || md5(string_agg(aid::text || filler, ',' ORDER BY aid)) FROM pgbench_accounts"
	flags := []string{"--pg-host", c.SocketDir, "--pg-port", strconv.Itoa(c.Port), "--pg-user", c.User}
	code, _, errs = runCLI(t, append([]string{"restore", dump, "--dbname", "shop_split", "--create", "--jobs", "2"}, flags...)...)
	require.Equal(t, exitOK, code, errs)
	require.Equal(t, c.Query(t, "shop", sum), c.Query(t, "shop_split", sum))

}

func TestSplitTablesFlag(t *testing.T) {
	for in, want := range map[string]int64{"64M": 64 << 20, "1.5G": 3 << 29, "off": 0, "0": 0, "OFF": 0} {
		eo := exportOpts{splitTables: in}
		require.NoError(t, eo.parseSizes(), in)
		require.Equal(t, want, eo.plan.SplitTables, in)
	}
	for _, in := range []string{"", "-1M", "lots"} {
		eo := exportOpts{splitTables: in}
		require.Error(t, eo.parseSizes(), in)
	}
}
