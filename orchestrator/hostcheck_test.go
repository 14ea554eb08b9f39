package orchestrator

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// TestExportNeedsTheBackupsServer: an export of a restore point whose major
// version has no server binaries here fails before the mount, naming the
// Debian package (issue 19); nothing is mounted or started for it.
func TestExportNeedsTheBackupsServer(t *testing.T) {
	pgdata := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(pgdata, "PG_VERSION"), []byte("99\n"), 0o600))
	require.NoError(t, os.MkdirAll(filepath.Join(pgdata, "global"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(pgdata, "global", "pg_control"), make([]byte, 8192), 0o600))
	repo := filepath.Join(t.TempDir(), "repo")
	rr, err := chunkstore.OpenRepo(context.Background(), repo, nil)
	require.NoError(t, err)
	rp, err := rr.Backup(context.Background(), pgdata, chunkstore.BackupOptions{})
	require.NoError(t, err)
	require.NoError(t, rr.Close())
	require.Equal(t, "99", rp.PGVersion)

	var steps []string
	r := newRunner(t, t.TempDir(), func(e Event) {
		if e.Kind == protocol.EventStart {
			steps = append(steps, e.Step)
		}
	})
	s, err := r.Create(t.Context(), Plan{Repo: repo, RestorePoint: "latest", Databases: []string{"shop"}, To: t.TempDir(), StagingDir: stagingDir(t)})
	require.NoError(t, err)
	_, err = r.Run(context.Background(), s.ID)
	require.ErrorContains(t, err, "PostgreSQL 99 server binaries are not installed here: install the Debian package postgresql-99")
	require.NotContains(t, steps, StepMount)
}

func TestPGMajor(t *testing.T) {
	for in, want := range map[string]string{"15": "15", "15.8": "15", "17.2.1": "17", "9.6": "9.6", "9.6.24": "9.6", "": ""} {
		require.Equal(t, want, pgMajor(in), in)
	}
}
