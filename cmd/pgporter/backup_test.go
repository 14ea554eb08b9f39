package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/testsupport"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

func TestBackupCLI(t *testing.T) {
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{})
	c.Stop(t)
	repo := filepath.Join(t.TempDir(), "repo")

	code, out, errs := runCLI(t, "backup", "--repo", repo, "--pgdata", c.DataDir)
	require.Equal(t, 0, code, errs)
	id1 := lastLine(out)
	require.Regexp(t, `^rp-\d{8}T\d{6}Z-[0-9a-f]{6}$`, id1)

	code, out, errs = runCLI(t, "backup", "--repo", repo, "--pgdata", c.DataDir, "--json")
	require.Equal(t, 0, code, errs)
	var res struct {
		RestorePoint string `json:"restore_point"`
		Files        int    `json:"files"`
		StoredBytes  int64  `json:"stored_bytes"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res))
	require.Regexp(t, `^rp-`, res.RestorePoint)
	require.NotEqual(t, id1, res.RestorePoint)
	require.Positive(t, res.Files)

	code, out, errs = runCLI(t, "restore-points", "--repo", repo)
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `^ID +TIME +VERSION +DATABASES +SIZE +STORED +RECOVERABLE TO\n`, out)
	require.Contains(t, out, id1)
	require.Contains(t, out, res.RestorePoint)

	code, out, errs = runCLI(t, "restore-points", "--repo", repo, "--json")
	require.Equal(t, 0, code, errs)
	var list struct {
		RestorePoints []struct {
			ID        string `json:"id"`
			PGVersion string `json:"pg_version"`
		} `json:"restore_points"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &list))
	require.Len(t, list.RestorePoints, 2)
	require.Equal(t, id1, list.RestorePoints[0].ID)
	require.Equal(t, res.RestorePoint, list.RestorePoints[1].ID)
	require.NotEmpty(t, list.RestorePoints[0].PGVersion)
}

func TestBackupCLIFromServer(t *testing.T) {
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Settings: map[string]string{"wal_level": "replica", "max_wal_senders": "4"}})
	repo := filepath.Join(t.TempDir(), "repo")

	code, out, errs := runCLI(t, "backup", "--repo", repo, "--from-server", c.ConnString("postgres"))
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "backed up the server: ")
	id1 := lastLine(out)
	require.Regexp(t, `^rp-\d{8}T\d{6}Z-[0-9a-f]{6}$`, id1)

	code, out, errs = runCLI(t, "backup", "--repo", repo, "--from-server", c.ConnString("postgres"), "--json")
	require.Equal(t, 0, code, errs)
	var res struct {
		RestorePoint string `json:"restore_point"`
		PGVersion    string `json:"pg_version"`
		SystemID     string `json:"system_id"`
		Files        int    `json:"files"`
		Databases    []struct {
			Name string `json:"name"`
			Size int64  `json:"size"`
		} `json:"databases"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res))
	require.Regexp(t, `^rp-`, res.RestorePoint)
	require.NotEqual(t, id1, res.RestorePoint)
	require.Positive(t, res.Files)
	require.NotEmpty(t, res.SystemID)
	require.Equal(t, c.Query(t, "postgres", "SHOW server_version_num")[:2], res.PGVersion)
	var names []string
	for _, db := range res.Databases {
		names = append(names, db.Name)
		require.Positive(t, db.Size, db.Name)
	}
	require.ElementsMatch(t, []string{"template0", "template1", "postgres"}, names)

	list, err := chunkstore.ListRepo(context.Background(), repo)
	require.NoError(t, err)
	require.Len(t, list, 2)

	// A server that is not there: a clear message, a network failure (exit
	// 4), no restore point.
	bad := filepath.Join(t.TempDir(), "bad")
	code, out, errs = runCLI(t, "backup", "--repo", bad, "--from-server", "host="+t.TempDir()+" port=1 user=postgres")
	require.Equal(t, exitNetwork, code, errs)
	require.Contains(t, errs, "pgporter: connecting to the server: ")
	require.Empty(t, out)
	list, err = chunkstore.ListRepo(context.Background(), bad)
	require.NoError(t, err)
	require.Empty(t, list)
}

func TestBackupCLIErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		code int
		err  string
	}{
		{"both sources", []string{"backup", "--repo", dir, "--pgdata", dir, "--from-server", "host=x"}, exitUsage, "not both"},
		{"no repo", []string{"backup", "--pgdata", dir}, exitUsage, "--repo"},
		{"no source", []string{"backup", "--repo", dir}, exitUsage, "--pgdata"},
		{"not a data dir", []string{"backup", "--repo", filepath.Join(dir, "r"), "--pgdata", dir}, exitFailure, "not a PostgreSQL data directory"},
		{"list no repo", []string{"restore-points"}, exitUsage, "--repo"},
		{"list missing", []string{"restore-points", "--repo", filepath.Join(dir, "missing")}, exitNotFound, "not a repository"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := runCLI(t, tc.args...)
			require.Equal(t, tc.code, code, errs)
			require.Contains(t, errs, tc.err)
		})
	}
	// The failed backup made no repository (issue 19); an empty one lists
	// as empty.
	require.NoDirExists(t, filepath.Join(dir, "r"))
	r, err := chunkstore.OpenRepo(context.Background(), filepath.Join(dir, "r"), nil)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	code, out, errs := runCLI(t, "restore-points", "--repo", filepath.Join(dir, "r"), "--json")
	require.Equal(t, 0, code, errs)
	require.Equal(t, `{"restore_points":[]}`, lastLine(out))
}

// TestExportTablespaces: a server keeps a database and a table of another
// in a tablespace outside its data directory. backup --from-server takes
// the tablespace, restore-points --json names it, and an export of both
// databases (through the mount and its copy-on-write layer) restores with
// every row.
func TestExportTablespaces(t *testing.T) {
	testsupport.RequireFUSE(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "pw",
		Settings: map[string]string{"wal_level": "replica", "max_wal_senders": "4"}})
	tsDir := filepath.Join(c.Base, "tablespace")
	require.NoError(t, os.Mkdir(tsDir, 0o700))
	require.NoError(t, c.Chown(tsDir))
	c.Exec(t, "postgres", "CREATE TABLESPACE far LOCATION '"+tsDir+"'")
	c.Exec(t, "postgres", "CREATE DATABASE faraway TABLESPACE far")
	c.Exec(t, "faraway", "CREATE TABLE items(id int primary key, v text); INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
	c.CreateDB(t, "shop")
	c.Exec(t, "shop", "CREATE TABLE orders(id int) TABLESPACE far; INSERT INTO orders SELECT generate_series(1, 3000); CREATE TABLE near(id int); INSERT INTO near VALUES (1)")
	repo := filepath.Join(t.TempDir(), "repo")
	code, _, errs := runCLI(t, "backup", "--repo", repo, "--from-server", c.ConnString("postgres"))
	require.Equal(t, 0, code, errs)
	code, out, errs := runCLI(t, "restore-points", "--repo", repo, "--json")
	require.Equal(t, 0, code, errs)
	var res struct {
		Points []chunkstore.RestorePoint `json:"restore_points"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
	require.Len(t, res.Points, 1)
	require.Len(t, res.Points[0].Tablespaces, 1)
	require.Equal(t, "far", res.Points[0].Tablespaces[0].Name)
	require.Equal(t, tsDir, res.Points[0].Tablespaces[0].Location)
	dbs := map[string]chunkstore.DBInfo{}
	for _, db := range res.Points[0].Databases {
		dbs[db.Name] = db
	}
	require.Contains(t, dbs, "faraway", "a database in a tablespace is listed")
	require.Greater(t, dbs["faraway"].Size, int64(1<<20), "its size counts the tablespace's files")
	require.Equal(t, c.Query(t, "faraway", "SELECT datcollate FROM pg_database WHERE datname = current_database()"), dbs["faraway"].Collate)
	require.Equal(t, "c", dbs["faraway"].Provider)

	t.Setenv("PGPASSWORD", "pw")
	to := t.TempDir()
	code, out, errs = runCLI(t, "--home", t.TempDir(), "export", "--repo", repo, "--db", "faraway", "--db", "shop", "--to", to, "--staging-dir", cliStagingDir(t))
	require.Equal(t, 0, code, "%s\n%s", out, errs)
	flags := []string{"--pg-host", c.SocketDir, "--pg-port", strconv.Itoa(c.Port), "--pg-user", c.User}
	for db, q := range map[string]string{
		"faraway": "SELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY id)) FROM items",
		"shop":    "SELECT (SELECT count(*) FROM orders) || ' ' || (SELECT count(*) FROM near)",
	} {
		code, _, errs := runCLI(t, append([]string{"restore", filepath.Join(to, db), "--dbname", db + "_restored", "--create"}, flags...)...)
		require.Equal(t, exitOK, code, errs)
		require.Equal(t, c.Query(t, db, q), c.Query(t, db+"_restored", q), db)
	}

	// A restore point of databases whose locale this host lacks (a backup
	// of another host's server): the export stops before it mounts, naming
	// the locale and the package.
	pointFile := filepath.Join(repo, "points", res.Points[0].ID+".json")
	b, err := os.ReadFile(pointFile)
	require.NoError(t, err)
	b = bytes.ReplaceAll(b, []byte(`"collate": "`+dbs["shop"].Collate+`"`), []byte(`"collate": "zz_ZZ.UTF-8"`))
	require.Contains(t, string(b), "zz_ZZ.UTF-8")
	// And a library whose types a column has, which this host lacks.
	var rp map[string]any
	require.NoError(t, json.Unmarshal(b, &rp))
	for _, db := range rp["databases"].([]any) {
		if d := db.(map[string]any); d["name"] == "shop" {
			require.NotNil(t, d["c_libraries"], "the backup listed shop's C libraries")
			d["c_libraries"] = []any{map[string]any{"probin": "$libdir/postgis-3", "extensions": "postgis", "in_data": true}}
		}
	}
	b, err = json.Marshal(rp)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(pointFile, b, 0o644))
	home := t.TempDir()
	code, out, errs = runCLI(t, "--home", home, "export", "--repo", repo, "--db", "shop", "--to", t.TempDir(), "--staging-dir", cliStagingDir(t), "--json")
	require.NotEqual(t, 0, code, out)
	require.Contains(t, errs+out, `locale \"zz_ZZ.UTF-8\"`)
	require.Contains(t, errs+out, "locales-all")
	require.Contains(t, errs+out, "library $libdir/postgis-3 of extension postgis is not installed")
	require.Contains(t, errs+out, "postgresql-15-postgis-3")
	code, out, errs = runCLI(t, "--home", home, "sessions", "--json")
	require.Equal(t, 0, code, errs)
	var sessions struct {
		Sessions []struct {
			ID string `json:"id"`
		} `json:"sessions"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &sessions), out)
	require.Len(t, sessions.Sessions, 1)
	code, out, errs = runCLI(t, "--home", home, "sessions", "show", sessions.Sessions[0].ID)
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `(?m)^\s*check\s+pending`, out, "the checks did not run")
	require.NotRegexp(t, `(?m)^\s*(mount|instance)\s+done`, out, "nothing was mounted or started")
}
