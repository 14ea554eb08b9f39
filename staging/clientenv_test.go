package staging

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
	// A service the user named for pgporter's credentials: pg_dump would
	// apply its other settings (here, a file that does not exist).
	t.Setenv("PGSERVICE", "shop")
	t.Setenv("PGSERVICEFILE", filepath.Join(t.TempDir(), "none"))
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
		require.NotContains(t, string(env), "PGSERVICE", prog)
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

// TestPassDirsOfKilledProcessesSwept guards against a password left on disk
// by a pg_dump run whose pgporter was SIGKILLed before it removed the file
// (the kill tests left dozens): the next clientEnv removes the directories
// of processes that are gone, and leaves those of live ones.
func TestPassDirsOfKilledProcessesSwept(t *testing.T) {
	gone := exec.Command("true")
	require.NoError(t, gone.Run())
	deadDir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", passDirPrefix, gone.Process.Pid))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(deadDir, "pgpass"), []byte("*:*:*:*:secret\n"), 0o600))
	liveDir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", passDirPrefix, os.Getppid()))
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(liveDir); os.RemoveAll(deadDir) })

	sweepPassOnce = sync.Once{}
	_, done, err := clientEnv("pw")
	require.NoError(t, err)
	done()
	require.NoDirExists(t, deadDir, "a killed process's password file is removed")
	require.DirExists(t, liveDir, "a running process's is left")
}
