package staging

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

func TestDumpGlobals(t *testing.T) {
	testsupport.RequirePG(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "s3cret"})
	c.Exec(t, "postgres", `CREATE ROLE readers NOLOGIN;
		CREATE ROLE "Ünï Öwner" LOGIN PASSWORD 'pw' CONNECTION LIMIT 3;
		CREATE ROLE plain LOGIN PASSWORD 'pl41n';
		GRANT readers TO "Ünï Öwner";
		ALTER ROLE "Ünï Öwner" SET work_mem = '7MB';`)
	c.Stop(t)
	dataDir, runDir := copyDataDir(t, c.DataDir)
	ctx := context.Background()
	in, err := StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir})
	require.NoError(t, err)
	t.Cleanup(func() { in.Stop(context.Background()) })

	t.Run("roles of the source are in globals.sql", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "session")
		res, err := in.DumpGlobals(ctx, GlobalsOptions{User: "postgres", Password: "s3cret", Dir: dir})
		require.NoError(t, err)
		require.Equal(t, filepath.Join(dir, GlobalsFile), res.Path)
		require.False(t, res.Reused)
		b, err := os.ReadFile(res.Path)
		require.NoError(t, err)
		sql := string(b)
		require.EqualValues(t, len(b), res.Bytes)
		for _, want := range []string{
			"CREATE ROLE readers;",
			`CREATE ROLE "Ünï Öwner";`,
			`ALTER ROLE "Ünï Öwner" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 3 PASSWORD 'SCRAM-SHA-256$`,
			"CREATE ROLE plain;",
			`GRANT readers TO "Ünï Öwner"`,
			`ALTER ROLE "Ünï Öwner" SET work_mem TO '7MB';`,
		} {
			require.Contains(t, sql, want)
		}
		fi, err := os.Stat(res.Path)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		require.NoFileExists(t, res.Path+".partial")

		again, err := in.DumpGlobals(ctx, GlobalsOptions{User: "postgres", Password: "s3cret", Dir: dir})
		require.NoError(t, err)
		require.True(t, again.Reused, "a complete globals dump is not redone")
	})
	t.Run("without role passwords, as a user that is not a superuser", func(t *testing.T) {
		dir := t.TempDir()
		res, err := in.DumpGlobals(ctx, GlobalsOptions{User: "plain", Password: "pl41n", Dir: dir, NoRolePasswords: true})
		require.NoError(t, err)
		b, err := os.ReadFile(res.Path)
		require.NoError(t, err)
		require.Contains(t, string(b), `CREATE ROLE "Ünï Öwner";`)
		require.NotContains(t, string(b), "SCRAM-SHA-256$")
	})
	t.Run("a failure says why and leaves nothing behind", func(t *testing.T) {
		dir := t.TempDir()
		// A leftover of an interrupted run is replaced, not mistaken for a result.
		require.NoError(t, os.WriteFile(filepath.Join(dir, GlobalsFile+".partial"), []byte("junk"), 0o600))
		_, err := in.DumpGlobals(ctx, GlobalsOptions{User: "postgres", Password: "wrong", Dir: dir})
		require.ErrorContains(t, err, "password authentication failed")
		require.NoFileExists(t, filepath.Join(dir, GlobalsFile))
		require.NoFileExists(t, filepath.Join(dir, GlobalsFile+".partial"))

		_, err = in.DumpGlobals(ctx, GlobalsOptions{User: "plain", Password: "pl41n", Dir: dir})
		require.ErrorContains(t, err, "permission denied", "only superusers can read role passwords")
		require.NoFileExists(t, filepath.Join(dir, GlobalsFile))
	})
}

// TestDumpReportsClosedFiles: with OnFile set, every file of the finished
// dump is reported exactly once, and Started names the directory pg_dump
// writes into.
func TestDumpReportsClosedFiles(t *testing.T) {
	in := startOnCopy(t)
	dir := filepath.Join(t.TempDir(), "shop")
	var mu sync.Mutex
	seen := map[string]int{}
	started := ""
	res, err := in.Dump(context.Background(), DumpOptions{
		DB: "shop", User: "postgres", Password: "s3cret", Dir: dir, Jobs: 2,
		Started: func(p string) { started = p },
		OnFile: func(name string) {
			mu.Lock()
			seen[name]++
			mu.Unlock()
		},
	})
	require.NoError(t, err)
	require.Equal(t, dir+".partial", started)
	ents, err := os.ReadDir(res.Dir)
	require.NoError(t, err)
	require.NotEmpty(t, ents)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, seen, len(ents))
	for _, e := range ents {
		require.Equal(t, 1, seen[e.Name()], e.Name())
	}
	require.Contains(t, seen, "toc.dat")
}
