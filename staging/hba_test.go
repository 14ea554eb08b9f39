package staging

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

func writeHBA(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
	return dir
}

func TestLocalHBAAllows(t *testing.T) {
	for _, tc := range []struct {
		name, hba    string
		db, role, os string
		err          string // "" allowed
	}{
		{name: "trust", hba: "local all all trust\n", db: "shop", role: "app", os: "root"},
		{name: "first match wins", hba: "local shop app md5\nlocal all all trust\n", db: "shop", role: "app", os: "root", err: "md5 authentication, which needs a password"},
		{name: "other lines skipped", hba: "host all all 127.0.0.1/32 trust\nlocal crm all reject\nlocal all bob trust\nlocal shop,\"crm\" app,x trust\n", db: "shop", role: "app", os: "root"},
		{name: "scram", hba: "local all all scram-sha-256\n", db: "shop", role: "app", err: "scram-sha-256 authentication"},
		{name: "no line", hba: "host all all 0.0.0.0/0 trust\n", db: "shop", role: "app", err: "no local line"},
		{name: "reject", hba: "local all all reject\n", db: "shop", role: "app", err: "rejects"},
		{name: "peer as the same OS user", hba: "local all postgres peer\n", db: "shop", role: "postgres", os: "postgres"},
		{name: "peer as root", hba: "# Debian\nlocal   all   postgres   peer\n", db: "shop", role: "postgres", os: "root", err: `here "root", as the role name`},
		{name: "peer with a map", hba: "local all all peer map=m\n", db: "shop", role: "postgres", os: "postgres", err: "user name map"},
		{name: "ident is peer locally", hba: "local all all ident\n", db: "shop", role: "postgres", os: "postgres"},
		{name: "sameuser", hba: "local sameuser all trust\n", db: "app", role: "app"},
		{name: "sameuser, other db", hba: "local sameuser all trust\n", db: "shop", role: "app", err: "no local line"},
		{name: "group membership is not guessed", hba: "local all +admins md5\nlocal all all trust\n", db: "shop", role: "app", err: "does not guess"},
		{name: "a role is a member of itself", hba: "local all +app trust\n", db: "shop", role: "app"},
		{name: "regex not evaluated", hba: "local all /^a trust\n", db: "shop", role: "app", err: "does not guess"},
		{name: "quoted keyword is a name", hba: "local \"all\" all trust\n", db: "shop", role: "app", err: "no local line"},
		{name: "comments and continuation", hba: "local all \\\n  all trust # the rest\n", db: "shop", role: "app"},
		{name: "replication is not a database", hba: "local replication all trust\n", db: "replication", role: "app", err: "no local line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ReadLocalHBA(writeHBA(t, map[string]string{"pg_hba.conf": tc.hba}))
			require.NoError(t, err)
			err = h.Allows(tc.db, tc.role, tc.os)
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrHBA)
			require.ErrorContains(t, err, tc.err)
			require.Equal(t, tc.name == "peer as root", errors.Is(err, ErrPeerUser), "ErrPeerUser only for a peer line and another OS user")
		})
	}
}

// A backup's pg_hba.conf is hostile: includes are followed only inside the
// data directory, @file lists not at all, and the size is bounded.
func TestLocalHBAHostile(t *testing.T) {
	outside := writeHBA(t, map[string]string{"evil.conf": "local all all trust\n"})
	for _, tc := range []struct {
		name  string
		files map[string]string
		err   string
		lines int
	}{
		{name: "include inside", files: map[string]string{"pg_hba.conf": "include conf.d/a.conf\n", "conf.d/a.conf": "local all all trust\n"}, lines: 1},
		{name: "include_dir inside", files: map[string]string{"pg_hba.conf": "include_dir conf.d\nlocal all all md5\n", "conf.d/b.conf": "local all b trust\n", "conf.d/a.conf": "local all a trust\n", "conf.d/skip.txt": "local all c trust\n"}, lines: 3},
		{name: "include_if_exists missing", files: map[string]string{"pg_hba.conf": "include_if_exists nosuch.conf\nlocal all all trust\n"}, lines: 1},
		{name: "absolute include", files: map[string]string{"pg_hba.conf": "include " + filepath.Join(outside, "evil.conf") + "\n"}, err: "absolute path"},
		{name: "relative escape", files: map[string]string{"pg_hba.conf": "include ../../../../../../../.." + filepath.Join(outside, "evil.conf") + "\n"}, err: "inside the data directory"},
		{name: "include loop", files: map[string]string{"pg_hba.conf": "include pg_hba.conf\n"}, err: "nested deeper"},
		{name: "@file", files: map[string]string{"pg_hba.conf": "local all @users trust\n"}, err: "@file"},
		{name: "too big", files: map[string]string{"pg_hba.conf": strings.Repeat("# padding\n", maxHBABytes/10+1)}, err: "larger than"},
		{name: "unterminated quote", files: map[string]string{"pg_hba.conf": "local \"all all trust\n"}, err: "unterminated"},
		{name: "none", files: map[string]string{"postgresql.conf": ""}, err: "no pg_hba.conf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ReadLocalHBA(writeHBA(t, tc.files))
			if tc.err != "" {
				require.ErrorIs(t, err, ErrHBA)
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Len(t, h.Lines, tc.lines)
			require.NotContains(t, h.Contents(), "include")
		})
	}
	t.Run("a link out of the data directory", func(t *testing.T) {
		dir := writeHBA(t, map[string]string{"pg_hba.conf": "include evil.conf\n"})
		require.NoError(t, os.Symlink(filepath.Join(outside, "evil.conf"), filepath.Join(dir, "evil.conf")))
		_, err := ReadLocalHBA(dir)
		require.ErrorIs(t, err, ErrHBA)
	})
}

// An instance started with the backup's local lines lets a role the backup
// trusts locally in without a password, and Check and Dump work with no
// password at all (regression: the instance always asked for one).
func TestLocalHBAInstance(t *testing.T) {
	testsupport.RequirePG(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{}) // initdb -A trust: "local all all trust"
	c.Exec(t, "postgres", `CREATE ROLE app LOGIN`)
	c.CreateDB(t, "shop")
	c.Exec(t, "shop", `CREATE TABLE t(v int); INSERT INTO t VALUES (1); GRANT SELECT ON t TO app`)
	c.Stop(t)
	dataDir, runDir := copyDataDir(t, c.DataDir)
	require.NoError(t, os.WriteFile(filepath.Join(dataDir, "pg_hba.conf"), []byte("local all postgres md5\nlocal all all trust\nhost all all 0.0.0.0/0 trust\n"), 0o600))
	h, err := ReadLocalHBA(dataDir)
	require.NoError(t, err)
	require.NoError(t, h.Allows("shop", "app", "root"))
	require.ErrorContains(t, h.Allows("shop", "postgres", "root"), "md5")
	ctx := context.Background()
	in, err := StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir, LocalHBA: h, Throwaway: true})
	require.NoError(t, err)
	t.Cleanup(func() { in.Stop(context.Background()) })

	rep, err := in.Check(ctx, CheckOptions{Databases: []string{"shop"}, User: "app"})
	require.NoError(t, err)
	require.NoError(t, rep.Err())
	rep, err = in.Check(ctx, CheckOptions{Databases: []string{"shop"}, User: "postgres"})
	require.NoError(t, err)
	require.ErrorIs(t, rep.Err(), ErrChecks, "the backup's md5 line asks postgres for a password")
	res, err := in.Dump(ctx, DumpOptions{DB: "shop", User: "app", Dir: filepath.Join(t.TempDir(), "shop"), Jobs: 1})
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(res.Dir, "toc.dat"))
}
