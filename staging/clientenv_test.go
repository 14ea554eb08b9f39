package staging

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

// TestDumpPasswordNotInEnvironment guards against the password reaching
// pg_dump and pg_dumpall through PGPASSWORD, which /proc/PID/environ shows
// (issue 15): the real programs run behind a shim that records their
// environment and password file; they get a 0600 PGPASSFILE, never
// PGPASSWORD (not even this process's own), and the file is gone after.
func TestDumpPasswordNotInEnvironment(t *testing.T) {
	testsupport.RequirePG(t)
	const pw = `p:a\ss`
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: pw})
	c.CreateDB(t, "shop")
	c.Exec(t, "shop", "CREATE TABLE t(v int); INSERT INTO t VALUES (1)")
	c.Stop(t)
	dataDir, runDir := copyDataDir(t, c.DataDir)
	ctx := context.Background()
	in, err := StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir, Throwaway: true})
	require.NoError(t, err)
	defer in.Stop(ctx)

	t.Setenv("PGPASSWORD", "leaked-from-parent")
	shim, rec := t.TempDir(), t.TempDir()
	for _, prog := range []string{"pg_dump", "pg_dumpall"} {
		script := "#!/bin/sh\nenv > " + rec + "/" + prog + ".env\nstat -c %a \"$PGPASSFILE\" > " + rec + "/" + prog + ".mode\nexec " + filepath.Join(c.BinDir, prog) + " \"$@\"\n"
		require.NoError(t, os.WriteFile(filepath.Join(shim, prog), []byte(script), 0o755))
	}
	in.BinDir = shim

	_, err = in.Dump(ctx, DumpOptions{DB: "shop", User: "postgres", Password: pw, Dir: filepath.Join(runDir, "dump")})
	require.NoError(t, err, "pg_dump authenticates with the password file")
	_, err = in.DumpGlobals(ctx, GlobalsOptions{User: "postgres", Password: pw, Dir: runDir})
	require.NoError(t, err, "pg_dumpall authenticates with the password file")

	for _, prog := range []string{"pg_dump", "pg_dumpall"} {
		env, err := os.ReadFile(filepath.Join(rec, prog+".env"))
		require.NoError(t, err)
		require.NotContains(t, string(env), "PGPASSWORD", prog)
		require.NotContains(t, string(env), "leaked-from-parent", prog)
		var passFile string
		for line := range strings.Lines(string(env)) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "PGPASSFILE="); ok {
				passFile = v
			}
		}
		require.NotEmpty(t, passFile, prog)
		mode, err := os.ReadFile(filepath.Join(rec, prog+".mode"))
		require.NoError(t, err)
		require.Equal(t, "600", strings.TrimSpace(string(mode)), prog)
		require.NoFileExists(t, passFile, "%s: the password file is removed", prog)
		require.NoDirExists(t, filepath.Dir(passFile), "%s: and its directory", prog)
	}
}
