package staging

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// startOnCopy builds a cluster with awkward database names and a limited
// user, stops it, and starts an Instance on a copy of its data directory.
func startOnCopy(t *testing.T) *Instance {
	t.Helper()
	testsupport.RequirePG(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "s3cret"})
	c.Exec(t, "postgres", "CREATE ROLE limited LOGIN PASSWORD 'l1m'")
	for _, db := range []string{"Weird DB", "ünïcödé", `a"b`, "shop"} {
		c.CreateDB(t, db)
	}
	c.Exec(t, "shop", `CREATE TABLE items(id int primary key, name text);
		INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g;
		CREATE TABLE secrets(id int); CREATE SEQUENCE seq;
		CREATE TABLE guarded(id int); ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
		GRANT SELECT ON items, guarded TO limited; GRANT SELECT ON seq TO limited;`)
	c.Exec(t, "Weird DB", `CREATE TABLE "Mixed Case"(v text); INSERT INTO "Mixed Case" VALUES ('ok');`)
	c.Stop(t)
	dataDir, runDir := copyDataDir(t, c.DataDir)
	in, err := StartInstance(context.Background(), InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir})
	require.NoError(t, err)
	t.Cleanup(func() { in.Stop(context.Background()) })
	return in
}

func TestChecksReportEveryProblem(t *testing.T) {
	in := startOnCopy(t)
	ctx := context.Background()

	t.Run("all good for the superuser", func(t *testing.T) {
		rep, err := in.Check(ctx, CheckOptions{Databases: []string{"Weird DB", "ünïcödé", `a"b`, "shop"}, User: "postgres", Password: "s3cret", DumpDir: t.TempDir()})
		require.NoError(t, err)
		require.NoError(t, rep.Err())
		require.Greater(t, rep.Estimate["shop"], int64(1<<20))
	})
	t.Run("wrong password", func(t *testing.T) {
		rep, err := in.Check(ctx, CheckOptions{Databases: []string{"shop"}, User: "postgres", Password: "nope"})
		require.NoError(t, err)
		require.ErrorIs(t, rep.Err(), ErrChecks)
		require.Contains(t, rep.Err().Error(), "credentials")
	})
	t.Run("missing database, privileges, RLS and space together", func(t *testing.T) {
		small := t.TempDir()
		require.NoError(t, unix.Mount("tmpfs", small, "tmpfs", 0, "size=256k"))
		defer unix.Unmount(small, unix.MNT_DETACH)
		rep, err := in.Check(ctx, CheckOptions{
			Databases: []string{"shop", "weird db", "nosuch"}, User: "limited", Password: "l1m", DumpDir: small,
			TargetFree: func(context.Context) (int64, error) { return 1000, nil },
		})
		require.NoError(t, err)
		msg := rep.Err().Error()
		require.Contains(t, msg, `"nosuch": not in this restore point`)
		require.Contains(t, msg, `did you mean "Weird DB"`)
		require.Contains(t, msg, "public.secrets")
		require.NotContains(t, msg, "public.items")
		require.Contains(t, msg, "in "+small)
		require.Contains(t, msg, "at the target")
		var rls bool
		for _, p := range rep.Problems {
			rls = rls || (p.Kind == "rls" && p.Warning && strings.Contains(p.Message, "public.guarded"))
		}
		require.True(t, rls, "row-level security must be warned about: %v", rep.Problems)
	})
}

func TestDumpAwkwardNamesAndRetry(t *testing.T) {
	in := startOnCopy(t)
	ctx := context.Background()
	base := t.TempDir()
	for _, db := range []string{"Weird DB", "ünïcödé", `a"b`} {
		dir := filepath.Join(base, db)
		var calls int
		res, err := in.Dump(ctx, DumpOptions{DB: db, User: "postgres", Password: "s3cret", Dir: dir, Progress: func(int, int) { calls++ }})
		require.NoError(t, err, db)
		require.FileExists(t, filepath.Join(dir, "toc.dat"))
		require.NoDirExists(t, dir+".partial")
		require.False(t, res.Reused)
		out, err := exec.Command(filepath.Join(in.BinDir, "pg_restore"), "--list", dir).CombinedOutput()
		require.NoError(t, err, string(out))
		if db == "Weird DB" {
			require.Contains(t, string(out), "Mixed Case")
			require.Positive(t, calls)
		}
		again, err := in.Dump(ctx, DumpOptions{DB: db, User: "postgres", Password: "s3cret", Dir: dir})
		require.NoError(t, err)
		require.True(t, again.Reused, "a complete dump is not redone")
	}

	// An incomplete dump is removed and redone; a failure says why.
	dir := filepath.Join(base, "shop")
	require.NoError(t, os.MkdirAll(dir+".partial", 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir+".partial", "junk"), []byte("x"), 0o600))
	_, err := in.Dump(ctx, DumpOptions{DB: "shop", User: "limited", Password: "l1m", Dir: dir})
	require.Error(t, err)
	require.Contains(t, err.Error(), "permission denied")
	require.NoDirExists(t, dir)
	res, err := in.Dump(ctx, DumpOptions{DB: "shop", User: "postgres", Password: "s3cret", Dir: dir})
	require.NoError(t, err)
	require.NoFileExists(t, filepath.Join(dir, "junk"))
	require.Greater(t, res.Bytes, int64(1<<20))
}

// TestCheckEstimateMainForks: the dump size estimate is the main fork of
// each table and of its TOAST table (the data pg_dump writes), not
// pg_table_size, whose extra forks cost a file lookup each through the
// mount for every one of thousands of small tables (issue 16).
func TestCheckEstimateMainForks(t *testing.T) {
	testsupport.RequirePG(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "s3cret"})
	c.CreateDB(t, "shop")
	c.Exec(t, "shop", `CREATE TABLE items(id int primary key, name text);
		INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g;
		CREATE TABLE docs(id int, body text); ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;
		INSERT INTO docs SELECT g, repeat(md5(g::text), 300) FROM generate_series(1, 200) g;
		CREATE MATERIALIZED VIEW big_items AS SELECT * FROM items WHERE id > 10000;`)
	c.Exec(t, "shop", "VACUUM") // makes the free space and visibility maps
	var mainForks, withToast, tableSize int64
	var itemsFile string
	conn := c.Conn(t, "shop")
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT sum(pg_relation_size(c.oid))::bigint,
		sum(pg_relation_size(c.oid) + pg_relation_size(c.reltoastrelid))::bigint, sum(pg_table_size(c.oid))::bigint,
		pg_relation_filepath('items')
		FROM pg_class c WHERE c.relname IN ('items', 'docs', 'big_items')`).Scan(&mainForks, &withToast, &tableSize, &itemsFile))
	conn.Close(context.Background())
	c.Stop(t)
	dataDir, runDir := copyDataDir(t, c.DataDir)
	in, err := StartInstance(context.Background(), InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir})
	require.NoError(t, err)
	t.Cleanup(func() { in.Stop(context.Background()) })

	rep, err := in.Check(context.Background(), CheckOptions{Databases: []string{"shop"}, User: "postgres", Password: "s3cret", DumpDir: t.TempDir()})
	require.NoError(t, err)
	require.NoError(t, rep.Err())
	require.Greater(t, withToast, mainForks+1<<20, "docs is stored in TOAST")
	require.Equal(t, withToast, rep.Estimate["shop"], "main forks of the tables and of their TOAST tables")
	require.Less(t, rep.Estimate["shop"], tableSize, "no free space or visibility map, no TOAST index")

	// The same from file sizes the caller knows (a mount's tree), with no
	// lookup of any other fork; items is unknown to it, so PostgreSQL sizes
	// it.
	var asked []string
	sizeOf := func(rel string) (int64, bool) {
		asked = append(asked, rel)
		if rel == itemsFile {
			return 0, false
		}
		fi, err := os.Stat(filepath.Join(dataDir, rel))
		if err != nil {
			return 0, false
		}
		return fi.Size(), true
	}
	rep, err = in.Check(context.Background(), CheckOptions{Databases: []string{"shop"}, User: "postgres", Password: "s3cret", SizeOf: sizeOf})
	require.NoError(t, err)
	require.Equal(t, withToast, rep.Estimate["shop"])
	require.Contains(t, asked, itemsFile)
	require.Len(t, asked, 11, "items (unknown: no next segment), then docs, big_items and the three TOAST tables, each with the segment after it")
	for _, a := range asked {
		require.NotRegexp(t, `_(fsm|vm|init)$`, a)
		if a != itemsFile && !strings.Contains(a, ".") {
			require.Contains(t, asked, a+".1", "the next segment is looked for")
		}
	}
}
