package staging

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/testsupport"
)

// TestStagedCloses brings up a mount with an overlay over it and takes it
// down: Close unmounts the overlay, then the restore point, calls only the
// hooks of the layers that came up, and does nothing a second time. The
// writes made through the overlay stay in its upper layer.
func TestStagedCloses(t *testing.T) {
	testsupport.RequireFUSE(t)
	if os.Geteuid() != 0 {
		t.Skip("mounting an overlay needs root")
	}
	for _, tc := range []struct {
		name string
		wait time.Duration
	}{{"once", 0}, {"retrying", time.Second}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			lower, data := filepath.Join(dir, "lower"), filepath.Join(dir, "data")
			require.NoError(t, os.Mkdir(lower, 0o755))
			owner, _ := testOwner(t)
			var calls []string
			s := NewStaged(StagedOptions{
				UnmountWait: tc.wait, JoinErrors: tc.wait > 0,
				Stopped: func(err error) error { calls = append(calls, "stopped"); return err },
				Unmounted: func(err error) error {
					calls = append(calls, "unmounted")
					require.False(t, testsupport.IsMounted(t, lower), "the restore point is unmounted before the hook")
					return err
				},
			})
			require.NoError(t, s.Close(context.Background()), "nothing up")
			require.Empty(t, calls)
			if tc.wait == 0 {
				<-NewStaged(StagedOptions{}).Unmounted() // closed: nothing mounted
			}

			tree, chunks := smallTree()
			_, err := s.Mount(context.Background(), lower, tree, chunks, MountOptions{CowDir: filepath.Join(dir, "fusecow"), Owner: owner})
			require.NoError(t, err)
			require.NoError(t, s.Overlay(data, OverlayOptions{Upper: filepath.Join(dir, "upper"), Work: filepath.Join(dir, "work"), Owner: owner}))
			require.NoError(t, os.WriteFile(filepath.Join(data, "written"), []byte("x"), 0o600))
			ok, err := overlayAt(data)
			require.NoError(t, err)
			require.True(t, ok)
			unmounted := s.Unmounted()

			require.NoError(t, s.Close(context.Background()))
			require.Equal(t, []string{"unmounted"}, calls, "no instance, no stop")
			<-unmounted
			require.False(t, testsupport.IsMounted(t, data))
			require.False(t, testsupport.IsMounted(t, lower))
			require.FileExists(t, filepath.Join(dir, "upper", "written"))
			require.NoError(t, s.Close(context.Background()))
			require.Len(t, calls, 1, "a second Close does nothing")
		})
	}
}

// TestStagedFirstError: without JoinErrors, Close reports its first step's
// error; with it, every step's.
func TestStagedFirstError(t *testing.T) {
	testsupport.RequireFUSE(t)
	tree, chunks := smallTree()
	owner, _ := testOwner(t)
	for _, join := range []bool{false, true} {
		dir := t.TempDir()
		mnt := filepath.Join(dir, "mnt")
		require.NoError(t, os.Mkdir(mnt, 0o755))
		stopErr, unmountErr := syscall.EINTR, syscall.EBUSY
		s := NewStaged(StagedOptions{
			JoinErrors: join,
			Stopped:    func(error) error { return stopErr },
			Unmounted:  func(error) error { return unmountErr },
		})
		_, err := s.Mount(context.Background(), mnt, tree, chunks, MountOptions{CowDir: filepath.Join(dir, "cow"), Owner: owner})
		require.NoError(t, err)
		s.in = &Instance{} // Stop of an instance that never ran does nothing
		err = s.Close(context.Background())
		require.ErrorIs(t, err, stopErr)
		if join {
			require.ErrorIs(t, err, unmountErr)
		} else {
			require.NotErrorIs(t, err, unmountErr)
		}
		require.False(t, testsupport.IsMounted(t, mnt))
	}
}
