package main

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/mover"
)

// restoreTestSchema gives the dump a few tables of different shapes, a
// sequence, an index and a view, so a restore has to bring back more than rows.
const restoreTestSchema = `
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2));
INSERT INTO items SELECT g, 'item ' || g, (g % 997) / 7.0 FROM generate_series(1, 20000) g;
CREATE TABLE events (id bigserial PRIMARY KEY, item int REFERENCES items, at timestamptz, payload jsonb);
INSERT INTO events (item, at, payload)
  SELECT 1 + g % 20000, '2026-01-01'::timestamptz + g * interval '1 minute', jsonb_build_object('n', g, 's', repeat('x', g % 50))
  FROM generate_series(1, 30000) g;
CREATE INDEX events_at ON events (at);
CREATE TABLE empty_one (a int);
CREATE VIEW expensive AS SELECT * FROM items WHERE price > 100;
`

// restoreChecksums fingerprints every table of db and the events sequence.
func restoreChecksums(t *testing.T, c *testsupport.Cluster, db string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, tbl := range []string{"items", "events", "empty_one"} {
		out[tbl] = c.Query(t, db, "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM "+tbl+" t")
	}
	out["events_id_seq"] = c.Query(t, db, "SELECT last_value FROM events_id_seq")
	out["view"] = c.Query(t, db, "SELECT count(*) FROM expensive")
	out["index"] = c.Query(t, db, "SELECT count(*) FROM pg_indexes WHERE indexname = 'events_at'")
	return out
}

func dbExists(t *testing.T, c *testsupport.Cluster, db string) bool {
	t.Helper()
	return c.Query(t, "postgres", "SELECT count(*) FROM pg_database WHERE datname = '"+strings.ReplaceAll(db, "'", "''")+"'") == "1"
}

// sendDump delivers dir through a real receiving mover over loopback QUIC,
// as an export does, and returns the committed copy with its manifest.
func sendDump(t *testing.T, dir string) string {
	t.Helper()
	sendHome, recvHome, recvID := newMoverPair(t)
	root := t.TempDir()
	srv, err := mover.NewServer(mover.ServerOptions{Home: recvHome, Listen: "127.0.0.1:0", Roots: []string{root}})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-served
	})
	s, err := mover.NewSender(sendHome, nil)
	require.NoError(t, err)
	defer s.Close()
	dest := filepath.Join(root, filepath.Base(dir))
	_, err = s.Send(context.Background(), srv.Addr().String(), recvID, mover.SendOptions{Src: dir, Dest: dest})
	require.NoError(t, err)
	return dest
}

// copyTree copies a committed dump so a test can damage the copy.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	require.NoError(t, os.CopyFS(dst, os.DirFS(src)))
	return dst
}

// largestDataFile returns the path of the biggest table data file of a
// directory dump.
func largestDataFile(t *testing.T, dir string) string {
	t.Helper()
	var best string
	var size int64
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".dat") || filepath.Base(p) == "toc.dat" {
			return err
		}
		fi, err := d.Info()
		if err == nil && fi.Size() > size {
			best, size = p, fi.Size()
		}
		return err
	}))
	require.NotEmpty(t, best, "no table data file in %s", dir)
	return best
}

func TestRestore(t *testing.T) {
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{})
	c.CreateDB(t, "shop")
	c.Exec(t, "shop", restoreTestSchema)
	want := restoreChecksums(t, c, "shop")

	plain := filepath.Join(t.TempDir(), "shop")
	c.Dump(t, "shop", plain, 2)
	dump := sendDump(t, plain)
	require.FileExists(t, filepath.Join(dump, mover.ManifestName))
	flags := []string{"--pg-host", c.SocketDir, "--pg-port", strconv.Itoa(c.Port), "--pg-user", c.User}

	t.Run("IntoExistingWithFlags", func(t *testing.T) {
		c.CreateDB(t, "copy_flags")
		code, out, errs := runCLI(t, append([]string{"restore", dump, "--dbname", "copy_flags", "--jobs", "2"}, flags...)...)
		require.Equal(t, exitOK, code, errs)
		require.Regexp(t, `^restored .* into database "copy_flags": \d+ files, .* verified`, out)
		require.Equal(t, want, restoreChecksums(t, c, "copy_flags"))
	})

	t.Run("CreateWithLibpqEnv", func(t *testing.T) {
		// PGHOST, PGPORT and PGUSER reach pg_restore and createdb unchanged.
		for _, kv := range c.Env("postgres") {
			k, v, _ := strings.Cut(kv, "=")
			t.Setenv(k, v)
		}
		code, _, errs := runCLI(t, "restore", dump, "--dbname", "copy env", "--create")
		require.Equal(t, exitOK, code, errs)
		require.Equal(t, want, restoreChecksums(t, c, "copy env"))

		// --create refuses an existing database and leaves it alone.
		code, _, errs = runCLI(t, "restore", dump, "--dbname", "copy env", "--create")
		require.Equal(t, exitFailure, code, errs)
		require.Contains(t, errs, `creating database "copy env": createdb exited with status 1`)
		require.Equal(t, want, restoreChecksums(t, c, "copy env"))
	})

	t.Run("CreateWithConnString", func(t *testing.T) {
		// The connection string names database postgres; --dbname wins.
		code, _, errs := runCLI(t, "restore", dump, "--dbname", "copy_conn", "--create", "--connstring", c.ConnString("postgres"), "--jobs", "1")
		require.Equal(t, exitOK, code, errs)
		require.Equal(t, want, restoreChecksums(t, c, "copy_conn"))
	})

	t.Run("PgRestoreFailure", func(t *testing.T) {
		code, _, errs := runCLI(t, append([]string{"restore", dump, "--dbname", "no_such_db"}, flags...)...)
		require.Equal(t, exitFailure, code, errs)
		require.Contains(t, errs, `database "no_such_db" does not exist`, "pg_restore's stderr is streamed")
		require.Contains(t, errs, "pg_restore exited with status 1")
	})

	// Regression guard for the reason restore verifies: a .dat file cut
	// short at a row boundary restores the rows before the cut and
	// pg_restore still exits 0.
	t.Run("RefusesTruncatedDataFile", func(t *testing.T) {
		bad := copyTree(t, dump)
		victim := largestDataFile(t, bad)
		fi, err := os.Stat(victim)
		require.NoError(t, err)
		require.NoError(t, os.Chmod(victim, 0o644))
		data, err := os.ReadFile(victim)
		require.NoError(t, err)
		cut := bytes.LastIndexByte(data[:fi.Size()/2], '\n') + 1
		require.Positive(t, cut)
		require.NoError(t, os.Truncate(victim, int64(cut)))
		rel, err := filepath.Rel(bad, victim)
		require.NoError(t, err)

		// What pg_restore alone does with it.
		c.CreateDB(t, "raw_partial")
		out, err := c.ClientCmd(context.Background(), "raw_partial", filepath.Join(c.BinDir, "pg_restore"), "-d", "raw_partial", bad).CombinedOutput()
		require.NoError(t, err, "pg_restore now fails on a truncated .dat file; the help text is out of date:\n%s", out)
		require.NotEqual(t, want, restoreChecksums(t, c, "raw_partial"))

		code, out2, errs := runCLI(t, append([]string{"restore", bad, "--dbname", "refused", "--create"}, flags...)...)
		require.Equal(t, exitVerification, code, errs)
		require.Empty(t, out2)
		require.Contains(t, errs, "pgporter: refusing to restore "+bad+": "+filepath.ToSlash(rel)+": size ")
		require.Contains(t, errs, "manifest says")
		require.Contains(t, errs, "nothing was restored")
		require.False(t, dbExists(t, c, "refused"), "--create created the database of a refused dump")

		c.CreateDB(t, "untouched")
		code, _, errs = runCLI(t, append([]string{"restore", bad, "--dbname", "untouched"}, flags...)...)
		require.Equal(t, exitVerification, code, errs)
		require.Contains(t, errs, filepath.ToSlash(rel))
		require.Equal(t, "0", c.Query(t, "untouched", "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"))
	})

	t.Run("RefusesDumpWithoutManifest", func(t *testing.T) {
		code, _, errs := runCLI(t, append([]string{"restore", plain, "--dbname", "nomanifest", "--create"}, flags...)...)
		require.Equal(t, exitFailure, code, errs)
		require.Contains(t, errs, "refusing to restore "+plain+": it has no "+mover.ManifestName)
		require.False(t, dbExists(t, c, "nomanifest"))
	})

	t.Run("RefusesExtraFile", func(t *testing.T) {
		bad := copyTree(t, dump)
		require.NoError(t, os.WriteFile(filepath.Join(bad, "9999.dat"), []byte("1\tsneaky\n"), 0o644))
		code, _, errs := runCLI(t, append([]string{"restore", bad, "--dbname", "extra", "--create"}, flags...)...)
		require.Equal(t, exitVerification, code, errs)
		require.Contains(t, errs, "9999.dat: not in the manifest")
		require.False(t, dbExists(t, c, "extra"))
	})
}

func TestRestoreUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"NoDir", []string{"restore", "--dbname", "x"}, "restore takes one DUMP_DIR"},
		{"TwoDirs", []string{"restore", "a", "b", "--dbname", "x"}, "restore takes one DUMP_DIR"},
		{"NoDBName", []string{"restore", "dir"}, "--dbname is required"},
		{"ZeroJobs", []string{"restore", "dir", "--dbname", "x", "--jobs", "-1"}, "--jobs must be at least 1"},
		{"ConnStringAndHost", []string{"restore", "dir", "--dbname", "x", "--connstring", "host=h", "--pg-host", "h"}, "exclude each other"},
		{"BadURI", []string{"restore", "dir", "--dbname", "x", "--connstring", "mysql://h/db"}, "must start with postgresql://"},
		{"UnknownFlag", []string{"restore", "dir", "--dbname", "x", "--nope"}, "unknown flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCLI(t, tc.args...)
			require.Equal(t, exitUsage, code, errs)
			require.Empty(t, out)
			require.Contains(t, errs, tc.want)
		})
	}
}

func TestRestoreHelp(t *testing.T) {
	code, out, errs := runCLI(t, "restore", "--help")
	require.Equal(t, exitOK, code, errs)
	for _, s := range []string{"--dbname", "--jobs", "--create", "--connstring", "--pg-host", "PGPASSWORD", "pg_restore exits 0", mover.ManifestName} {
		require.Contains(t, out, s)
	}
}

func TestConnStringWithDB(t *testing.T) {
	for _, tc := range []struct{ in, db, want string }{
		{"host=/tmp port=5433 dbname=postgres", "a b", "host=/tmp port=5433 dbname=postgres dbname='a b'"},
		{"host=h ", "it's", `host=h dbname='it\'s'`},
		{"postgresql://u@h:5432/postgres?sslmode=require", "x/y", "postgresql://u@h:5432/x%2Fy?sslmode=require"},
		{"postgres://h", "db", "postgres://h/db"},
		{"postgresql://h1:5432,h2:5433?target_session_attrs=read-write", "db", "postgresql://h1:5432,h2:5433/db?target_session_attrs=read-write"},
		{"postgresql:///old", "new", "postgresql:///new"},
	} {
		got, err := connStringWithDB(tc.in, tc.db)
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
	_, err := connStringWithDB("postgresql://h/?dbname=x", "y")
	require.Error(t, err)
}
