package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
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

	list, err := chunkstore.ListRepo(repo)
	require.NoError(t, err)
	require.Len(t, list, 2)

	// A server that is not there: a clear message, a network failure (exit
	// 4), no restore point.
	bad := filepath.Join(t.TempDir(), "bad")
	code, out, errs = runCLI(t, "backup", "--repo", bad, "--from-server", "host="+t.TempDir()+" port=1 user=postgres")
	require.Equal(t, exitNetwork, code, errs)
	require.Contains(t, errs, "pgporter: connecting to the server: ")
	require.Empty(t, out)
	list, err = chunkstore.ListRepo(bad)
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
	r, err := chunkstore.OpenRepo(filepath.Join(dir, "r"), nil)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	code, out, errs := runCLI(t, "restore-points", "--repo", filepath.Join(dir, "r"), "--json")
	require.Equal(t, 0, code, errs)
	require.Equal(t, `{"restore_points":[]}`, lastLine(out))
}
