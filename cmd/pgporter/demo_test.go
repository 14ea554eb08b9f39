package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/testsupport"
)

// TestDemo runs what 'make demo' runs, at the smallest scale: the whole
// path from a fresh cluster to a restored copy, and the cleanup after it.
func TestDemo(t *testing.T) {
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"demo", "--scale", "1", "--json"}, &stdout, &stderr)
	require.Equal(t, exitOK, code, "stderr:\n%s\nstdout:\n%s", stderr.String(), stdout.String())

	var res demoResult
	require.NoError(t, json.Unmarshal([]byte(lastLine(stdout.String())), &res), stdout.String())
	require.Regexp(t, `^x-`, res.Session)
	require.Positive(t, res.Seconds)
	require.Equal(t, 1, res.Scale)

	byName := map[string]demoDB{}
	for _, db := range res.Databases {
		byName[db.Name] = db
	}
	require.Len(t, byName, 3, "shop, crm and empty")
	for _, name := range demoExported {
		db := byName[name]
		require.True(t, db.Exported, name)
		require.Positive(t, db.SizeBytes, name)
		require.Positive(t, db.DumpBytes, name)
		require.Positive(t, db.WireBytes, name)
		require.Positive(t, db.VerifiedFiles, name)
	}
	require.False(t, byName["empty"].Exported)

	require.True(t, res.RowsMatch)
	require.Len(t, res.Rows, len(pgbenchTables))
	for _, rc := range res.Rows {
		require.Equal(t, rc.Source, rc.Restored, rc.Table)
		if rc.Table == "pgbench_accounts" {
			require.EqualValues(t, 100000, rc.Source)
		}
	}
	var names []string
	for _, st := range res.Steps {
		names = append(names, strings.TrimSpace(st.Name))
	}
	require.Subset(t, names, []string{"backup", "export", "dump:shop", "transfer:crm", "restore shop"})

	require.False(t, res.Kept)
	require.NotEmpty(t, res.Dir)
	_, err := os.Stat(res.Dir)
	require.ErrorIs(t, err, fs.ErrNotExist, "the demo's temporary directory is removed")
	_, err = os.Stat(filepath.Join(os.TempDir(), "pgporter-"+res.Session))
	require.ErrorIs(t, err, fs.ErrNotExist, "the export's mountpoint is removed")
}

func TestDemoBadScale(t *testing.T) {
	code, _, errs := runCLI(t, "demo", "--scale", "0")
	require.Equal(t, exitUsage, code, errs)
}
