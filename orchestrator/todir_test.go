package orchestrator

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// TestCancelRemovesToItMade guards against cancel leaving behind the --to
// an export created (it left an empty one, and its new parents, as it could
// not tell them from a directory that existed before), and against it
// removing one it did not create: one that existed before, one replaced
// since, one not empty. Each export is real (mount, instance, pg_dump, the
// embedded target mover over loopback QUIC), interrupted as the first
// transfer reports progress, with a partial target directory in --to.
func TestCancelRemovesToItMade(t *testing.T) {
	f := newFixture(t)

	t.Run("new nested --to removed", func(t *testing.T) {
		base := t.TempDir()
		to := filepath.Join(base, "new", "deeper")
		s, r := interruptInTransfer(t, f, to)
		require.NotNil(t, s.Resources.MadeTo)
		require.Len(t, s.Resources.MadeTo.Dirs, 2)

		s, err := r.Cancel(context.Background(), s.ID)
		require.NoError(t, err)
		require.Equal(t, StateCancelled, s.State)
		require.Equal(t, []string{to, filepath.Join(base, "new")}, s.Removed)
		require.NoDirExists(t, filepath.Join(base, "new"))
		require.DirExists(t, base, "it existed before")
	})

	t.Run("pre-existing empty --to kept", func(t *testing.T) {
		to := filepath.Join(t.TempDir(), "empty")
		require.NoError(t, os.Mkdir(to, 0o755))
		s, r := interruptInTransfer(t, f, to)
		require.Nil(t, s.Resources.MadeTo)
		s, err := r.Cancel(context.Background(), s.ID)
		require.NoError(t, err)
		require.Empty(t, s.Removed)
		ents, err := os.ReadDir(to)
		require.NoError(t, err, "a --to that existed before stays")
		require.Empty(t, ents, "what the export put in it is gone")
	})

	t.Run("not empty --to kept", func(t *testing.T) {
		base := t.TempDir()
		to := filepath.Join(base, "new", "deeper")
		s, r := interruptInTransfer(t, f, to)
		precious := filepath.Join(to, "precious")
		require.NoError(t, os.WriteFile(precious, []byte("keep me"), 0o644))
		s, err := r.Cancel(context.Background(), s.ID)
		require.NoError(t, err)
		require.Empty(t, s.Removed)
		require.FileExists(t, precious)
		require.NoDirExists(t, s.TargetDir("shop")+".partial")
	})

	t.Run("replaced --to kept", func(t *testing.T) {
		base := t.TempDir()
		to := filepath.Join(base, "new", "deeper")
		r := newRunner(t, t.TempDir(), nil)
		s, err := r.Create(t.Context(), f.plan(t, to))
		require.NoError(t, err)
		require.DirExists(t, to)
		// Someone else's empty directory in its place (made while the
		// export's still exists, so it cannot reuse its inode).
		require.NoError(t, os.Rename(to, filepath.Join(base, "old")))
		require.NoError(t, os.Mkdir(to, 0o755))
		require.NoError(t, os.Remove(filepath.Join(base, "old")))

		s, err = r.Cancel(context.Background(), s.ID)
		require.NoError(t, err)
		require.Empty(t, s.Removed)
		require.DirExists(t, to, "not the directory the export made")
	})
}

// interruptInTransfer runs an export to to and interrupts it as the transfer
// of shop reports progress: before anything is delivered.
func interruptInTransfer(t *testing.T, f *fixture, to string) (*Session, *Runner) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newRunner(t, t.TempDir(), func(e Event) {
		if e.Step == TransferStep("shop") && e.Kind == protocol.EventProgress {
			cancel()
		}
	})
	s, err := r.Create(t.Context(), f.plan(t, to))
	require.NoError(t, err)
	s, err = r.Run(ctx, s.ID)
	require.ErrorIs(t, err, context.Canceled)
	require.NotEqual(t, StepDone, s.Step(TransferStep("shop")).State)
	require.DirExists(t, s.TargetDir("shop")+".partial", "the interrupted transfer left its partial directory in --to")
	return s, r
}

// TestMakeToCrashes: a run killed while it made --to (makeChain) leaves
// at most an empty chain under the journaled temporary name; cancel
// removes it and nothing else, a retry removes it and makes --to.
func TestMakeToCrashes(t *testing.T) {
	for _, retry := range []bool{false, true} {
		base := t.TempDir()
		to := filepath.Join(base, "new", "deeper")
		r := newRunner(t, t.TempDir(), nil)
		id := newSessionID(time.Now())
		temp := filepath.Join(base, toTempPrefix+id+"-0123456789abcdef")
		require.NoError(t, os.MkdirAll(filepath.Join(temp, "deeper"), 0o755))
		s := &Session{ID: id, State: StateFailed, Created: time.Now().UTC(),
			Plan:      Plan{Repo: "/nonexistent", To: to, StagingDir: t.TempDir(), Databases: []string{"shop"}},
			Resources: Resources{MadeTo: &MadeDirs{Temp: temp, TempFor: filepath.Join(base, "new")}}}
		require.NoError(t, r.j.Put(s))
		// Someone's directory beside it, of the same shape: not in the record.
		other := filepath.Join(base, toTempPrefix+id+"-fedcba9876543210")
		require.NoError(t, os.Mkdir(other, 0o755))

		if retry {
			x := &sessionRun{r: r, s: s}
			require.NoError(t, x.makeTo())
			require.NoDirExists(t, temp)
			require.DirExists(t, to)
			require.Len(t, s.Resources.MadeTo.Dirs, 2)
			require.Empty(t, s.Resources.MadeTo.Temp)
		}
		s, err := r.Cancel(context.Background(), id)
		require.NoError(t, err)
		require.NoDirExists(t, temp)
		require.NoDirExists(t, filepath.Join(base, "new"))
		require.DirExists(t, other)
		if retry {
			require.Equal(t, []string{to, filepath.Join(base, "new")}, s.Removed)
		}
	}
}
