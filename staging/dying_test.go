package staging

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/testsupport"
)

// dyingChildEnv, set in a child's environment to a directory, makes
// TestDyingChild mount there and read its own mount.
const dyingChildEnv = "PGPORTER_STAGING_DYING_CHILD"

// TestDyingChild is the process TestReleaseDying kills: it serves a mount
// and reads a file through it, in another thread, as the export reads its
// restore point's files. Run on its own it does nothing.
func TestDyingChild(t *testing.T) {
	dir := os.Getenv(dyingChildEnv)
	if dir == "" {
		return
	}
	tree, _ := smallTree()
	owner, _ := testOwner(t)
	mnt := filepath.Join(dir, "mnt")
	if _, err := Mount(context.Background(), mnt, tree, testsupport.SilentChunks{}, MountOptions{Owner: owner, CowDir: filepath.Join(dir, "cow")}); err != nil {
		fmt.Println("mount failed:", err)
		os.Exit(1)
	}
	go os.ReadFile(filepath.Join(mnt, "PG_VERSION"))
	select {} // until SIGKILL
}

// TestReleaseDying kills a process while the mount it serves has a read of
// its own in flight, which leaves it stuck exiting: the read's thread waits
// for an answer no thread is left to give, and keeps the mount's /dev/fuse
// descriptor open. ReleaseDying must see the process is dying, abort the
// connection and wait for the exit; CleanStaleMount then detaches the mount.
// Each way of aborting is tried on its own, and all of them together on a
// fresh machine's mounts, where fusectl is not mounted (issue 14: there the
// abort file is missing, and taking that for "already gone" left the
// process stuck and the test's cleanup hanging in the kernel).
func TestReleaseDying(t *testing.T) {
	requireRootFUSE(t)
	for _, tc := range []struct {
		name    string
		methods []abortMethod
		fusectl bool
	}{
		{name: "fresh machine", methods: abortMethods},
		{name: "fusectl mounted", methods: []abortMethod{abortByFusectl}, fusectl: true},
		{name: "private fusectl", methods: []abortMethod{abortByPrivateFusectl}},
		{name: "forced unmount", methods: []abortMethod{abortByForcedUnmount}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.fusectl {
				testsupport.WithFusectl(t)
			}
			saved := abortMethods
			abortMethods = tc.methods
			t.Cleanup(func() { abortMethods = saved })
			testReleaseDying(t)
		})
	}
}

func testReleaseDying(t *testing.T) {
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))

	child := testsupport.StartChild(t, "TestDyingChild", dyingChildEnv+"="+dir)
	pid := child.Cmd.Process.Pid
	t.Cleanup(func() {
		_ = child.Cmd.Process.Kill()
		_, _ = AbortFUSE(mnt) // in case the test failed with the child stuck
		_, _ = child.Wait(30 * time.Second)
		_, _ = CleanStaleMount(mnt)
	})
	require.Equal(t, "reading", child.Line(t, 30*time.Second))
	require.False(t, Dying(pid), "a live process is not dying")
	released, err := ReleaseDying(context.Background(), pid, mnt)
	require.NoError(t, err)
	require.False(t, released, "a live process is left alone")
	require.True(t, testsupport.IsMounted(t, mnt))

	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	// SIGKILL is pending or being acted on from the moment kill returns.
	require.True(t, Dying(pid), "a killed process not yet reaped is dying:%s", testsupport.ProcThreads(pid))
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	err = WaitExit(ctx, pid)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "the child exited without help: the deadlock was not reproduced:%s", testsupport.ProcThreads(pid))
	require.True(t, Dying(pid), "stuck exiting:%s", testsupport.ProcThreads(pid))

	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	released, err = ReleaseDying(ctx, pid, mnt)
	require.NoError(t, err)
	require.True(t, released)
	ended, err := child.Wait(30 * time.Second)
	require.NoError(t, err)
	require.ErrorContains(t, ended, "signal: killed")
	require.False(t, Dying(pid), "reaped")

	// A forced unmount may have detached the mount already.
	_, err = CleanStaleMount(mnt)
	require.NoError(t, err)
	require.False(t, testsupport.IsMounted(t, mnt))
}

// TestReleaseDyingReportsStuck: when no way of aborting is open, a stuck
// holder is reported within the caller's deadline, with the process, the
// kernel wait and the mount named, and what to run.
func TestReleaseDyingReportsStuck(t *testing.T) {
	requireRootFUSE(t)
	saved := abortMethods
	abortMethods = []abortMethod{abortByFusectl} // fusectl is not mounted here
	t.Cleanup(func() { abortMethods = saved })

	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	child := testsupport.StartChild(t, "TestDyingChild", dyingChildEnv+"="+dir)
	pid := child.Cmd.Process.Pid
	t.Cleanup(func() {
		abortMethods = saved
		_, _ = AbortFUSE(mnt)
		_, _ = child.Wait(30 * time.Second)
		_, _ = CleanStaleMount(mnt)
	})
	require.Equal(t, "reading", child.Line(t, 30*time.Second))
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	released, err := ReleaseDying(ctx, pid, mnt)
	require.True(t, released)
	var stuck *StuckError
	require.ErrorAs(t, err, &stuck)
	require.Equal(t, pid, stuck.PID)
	require.Contains(t, stuck.Waits, "request_wait_answer", "%v", err)
	var abort *AbortError
	require.ErrorAs(t, err, &abort)
	msg := err.Error()
	require.Contains(t, msg, mnt)
	require.Contains(t, msg, "umount -f "+mnt)
	require.Contains(t, msg, "mount -t fusectl fusectl /sys/fs/fuse/connections")
	require.ErrorIs(t, err, context.DeadlineExceeded)
}
