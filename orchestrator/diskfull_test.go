package orchestrator

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestDiskFullStagingDir: the staging directory's file system fills up (a
// tmpfs another writer fills as the dump starts). The export fails naming
// the full directory, nothing is committed at the target, and a retry after
// the space is freed completes with a dump equal to the source.
func TestDiskFullStagingDir(t *testing.T) {
	if raceEnabled {
		t.Skip("an error path through pg_dump and FUSE: the plain pass of make test runs it; the race pass covers the export's concurrency in TestExportEmbedded")
	}
	f := newFixture(t)
	testsupport.RequireRoot(t, "mounting a tmpfs")
	staging := stagingDir(t)
	require.NoError(t, unix.Mount("tmpfs", staging, "tmpfs", 0, "size=256m,mode=0755"))
	t.Cleanup(func() { unix.Unmount(staging, unix.MNT_DETACH) })
	filler := filepath.Join(staging, "filler")

	home, to := t.TempDir(), t.TempDir()
	var (
		once    sync.Once
		fillErr error
	)
	r := newRunner(t, home, func(e Event) {
		if e.Step == DumpStep("shop") && e.Kind == protocol.EventStart {
			once.Do(func() { fillErr = testsupport.FillBut(filler, 64<<10) })
		}
	})
	plan := f.plan(t, to)
	plan.StagingDir, plan.Databases = staging, []string{"shop"}
	s, err := r.Create(t.Context(), plan)
	require.NoError(t, err)
	s, err = r.Run(context.Background(), s.ID)
	require.NoError(t, fillErr)
	require.Error(t, err)
	t.Logf("the user reads: %v", err)
	require.ErrorContains(t, err, "no space left")
	require.ErrorContains(t, err, staging)
	require.Equal(t, StateFailed, s.State)
	require.NoDirExists(t, filepath.Join(to, "shop"), "nothing is committed at the target")

	require.NoError(t, os.Remove(filler))
	s, err = newRunner(t, home, nil).Run(context.Background(), s.ID)
	require.NoError(t, err)
	require.Equal(t, StateDone, s.State)
	f.restoreAndCompare(t, filepath.Join(to, "shop"), "shop")
}
