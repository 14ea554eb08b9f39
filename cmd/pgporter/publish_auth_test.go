package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/orchestrator"
)

// trustRepo returns a repository holding a backup whose pg_hba.conf trusts
// every local connection, as the official Docker image's does.
func trustRepo(t *testing.T) string {
	t.Helper()
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "pw"})
	c.CreateDB(t, "shop")
	c.Stop(t)
	hba := filepath.Join(c.DataDir, "pg_hba.conf")
	b, err := os.ReadFile(hba)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(hba, append([]byte("local all all trust\nhost all all 127.0.0.1/32 trust\n"), b...), 0o600))
	repo := filepath.Join(t.TempDir(), "repo")
	code, _, errs := runCLI(t, "backup", "--repo", repo, "--pgdata", c.DataDir)
	require.Equal(t, 0, code, errs)
	return repo
}

func connectNoPassword(port int) error {
	c, err := pgx.Connect(context.Background(), fmt.Sprintf("host=127.0.0.1 port=%d dbname=shop user=postgres sslmode=disable", port))
	if err == nil {
		c.Close(context.Background())
	}
	return err
}

// TestPublishRequiresPasswords guards against a backup's pg_hba.conf
// granting superuser to every local user of a published instance (issue
// 15): by default a trust line of the backup lets no passwordless
// connection in; keeping the backup's rules takes --auth backup-hba.
func TestPublishRequiresPasswords(t *testing.T) {
	repo := trustRepo(t)
	home := t.TempDir()

	port := freeTCPPort(t)
	p := publishCLI(t, home, repo, port)
	require.Equal(t, orchestrator.AuthPassword, p.Auth)
	require.ErrorContains(t, connectNoPassword(port), "password", "the backup's trust line must not apply")
	pubConn(t, port, "shop").Close(context.Background())          // the backup's role, with its password
	code, _, errs := runCLI(t, "--home", home, "unpublish", p.ID) // a repository is published once at a time
	require.Equal(t, 0, code, errs)

	// The explicit choice: the backup's rules, trust included.
	port2 := freeTCPPort(t)
	p2 := publishCLI(t, home, repo, port2, "--auth", "backup-hba")
	require.Equal(t, orchestrator.AuthBackupHBA, p2.Auth)
	require.NoError(t, connectNoPassword(port2), "--auth backup-hba keeps the backup's trust line")

	// --strict-hba (deprecated, TestPublishStrictHBA) contradicts backup-hba; --auth takes two values.
	code, _, errs = runCLI(t, "--home", home, "publish", "--repo", repo, "--restore-point", "latest", "--port", "1", "--auth", "backup-hba", "--strict-hba")
	require.Equal(t, exitUsage, code, errs)
	require.Contains(t, errs, "exclude each other")
	code, _, errs = runCLI(t, "--home", home, "publish", "--repo", repo, "--restore-point", "latest", "--port", "5", "--auth", "none")
	require.Equal(t, exitUsage, code, errs)
	require.Contains(t, errs, `auth "none"`)
}
