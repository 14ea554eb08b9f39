package orchestrator

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// testPublishedExportRetryCancel: an export from a publication is a
// session. One that fails after a database was delivered is continued by a
// retry (Run again) without dumping again what it had dumped; one that is
// cancelled loses its leftovers but keeps what it delivered, and the
// publication stays up through both.
//
// It runs within TestPublishExport, on its publication: a fixture and a
// publication of its own would double its cost.
func testPublishedExportRetryCancel(t *testing.T, f *fixture, pb *Publisher, p *Publication) {
	home := pb.home
	var mu sync.Mutex
	var skipped []string
	r, err := NewRunner(Options{Home: home, Password: superPassword, Events: func(e Event) {
		mu.Lock()
		defer mu.Unlock()
		if e.Kind == protocol.EventSkip {
			skipped = append(skipped, e.Step)
		}
	}})
	require.NoError(t, err)
	ctx := context.Background()
	dbs := []string{"shop", "Weird DB"}

	// Something takes Weird DB's place after the session was planned: its
	// commit fails, after shop was delivered.
	to := t.TempDir()
	s, err := r.Create(t.Context(), Plan{Published: p.ID, Databases: dbs, To: to, StagingDir: t.TempDir()})
	require.NoError(t, err)
	require.Equal(t, p.RestorePoint, s.Plan.RestorePoint)
	require.NoError(t, os.Mkdir(filepath.Join(to, "Weird DB"), 0o755))
	_, err = r.Run(ctx, s.ID)
	require.ErrorContains(t, err, "exists")
	got, err := r.j.Get(s.ID)
	require.NoError(t, err)
	require.Equal(t, StateFailed, got.State)
	for _, st := range []string{"dump:shop", "transfer:shop", "dump:Weird DB"} {
		require.Equal(t, StepDone, got.Step(st).State, st)
	}
	require.Equal(t, StepFailed, got.Step("transfer:Weird DB").State)
	require.DirExists(t, hiddenDumpDir(got, "Weird DB"))

	require.NoError(t, os.Remove(filepath.Join(to, "Weird DB")))
	got, err = r.Run(ctx, s.ID) // what 'pgporter retry' does
	require.NoError(t, err)
	require.Equal(t, StateDone, got.State)
	require.Subset(t, skipped, []string{"check", "dump:shop", "transfer:shop", "dump:Weird DB"})
	left, err := filepath.Glob(filepath.Join(to, ".pgporter-*"))
	require.NoError(t, err)
	require.Empty(t, left)
	f.restoreAndCompare(t, filepath.Join(to, "Weird DB"), "Weird DB")

	// Cancel of a session failed the same way.
	to2 := t.TempDir()
	s2, err := r.Create(t.Context(), Plan{Published: p.ID, Databases: dbs, To: to2, StagingDir: t.TempDir()})
	require.NoError(t, err)
	require.NoError(t, os.Mkdir(filepath.Join(to2, "Weird DB"), 0o755))
	_, err = r.Run(ctx, s2.ID)
	require.Error(t, err)
	require.DirExists(t, hiddenDumpDir(s2, "Weird DB"))
	got, err = r.Cancel(ctx, s2.ID)
	require.NoError(t, err)
	require.Equal(t, StateCancelled, got.State)
	require.NoDirExists(t, hiddenDumpDir(s2, "Weird DB"))
	require.FileExists(t, filepath.Join(to2, "shop", "toc.dat"), "a delivered dump stays")
	_, err = r.Run(ctx, s2.ID)
	require.ErrorContains(t, err, "cancelled")

	up, err := pb.j.GetPublication(p.ID)
	require.NoError(t, err)
	require.Equal(t, PubUp, up.State)
	require.True(t, pb.j.lockHeld(p))

	// Refused when planned: a publication that does not exist; a target
	// directory that exists.
	_, err = r.Create(t.Context(), Plan{Published: "p-nope", Databases: dbs, To: t.TempDir()})
	require.ErrorIs(t, err, ErrBadPlan)
	_, err = r.Create(t.Context(), Plan{Published: p.ID, Databases: []string{"shop"}, To: to})
	require.ErrorIs(t, err, ErrBadPlan)
}
