package orchestrator

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/staging"
)

// lockChildEnv, set in a child's environment to HOME#SESSION#MOUNTPOINT,
// makes TestLockChild run session SESSION the way an export does.
const lockChildEnv = "PGPORTER_ORCH_LOCK_CHILD"

// TestLockChild holds a session's lock, serves a mount and reads its own
// mount, as an export starting its instance does. Run on its own it does
// nothing.
func TestLockChild(t *testing.T) {
	env := os.Getenv(lockChildEnv)
	if env == "" {
		return
	}
	var home, id, mnt string
	if _, err := fmt.Sscanf(env, "%s %s %s", &home, &id, &mnt); err != nil {
		t.Fatal(err)
	}
	j, err := OpenJournal(home)
	require.NoError(t, err)
	lock, err := j.Lock(id)
	require.NoError(t, err)
	defer lock.Unlock() // never: keeps the lock's file from being collected and closed
	data := []byte("15\n")
	tree := []chunkstore.Node{{Path: "PG_VERSION", Type: chunkstore.NodeFile, Mode: 0o600, Size: int64(len(data)),
		Chunks: []chunkstore.ChunkRef{{ID: chunk.Sum(data), Len: uint32(len(data))}}}}
	_, err = staging.Mount(context.Background(), mnt, tree, testsupport.SilentChunks{}, staging.MountOptions{CowDir: filepath.Join(home, "cow")})
	require.NoError(t, err)
	go os.ReadFile(filepath.Join(mnt, "PG_VERSION"))
	select {} // until SIGKILL
}

// TestLockFreesHolderStuckExiting: an export killed while it reads its own
// mount cannot finish exiting and keeps its session's lock. Taking the lock
// (as retry, cancel and a restarted mover's reclaim do) must free it by
// aborting the session's mount, instead of failing with ErrRunning for good.
func TestLockFreesHolderStuckExiting(t *testing.T) {
	testsupport.RequireFUSE(t)
	home := t.TempDir()
	mnt := filepath.Join(t.TempDir(), "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	j, err := OpenJournal(home)
	require.NoError(t, err)
	const id = "x-stuck"

	child := testsupport.StartChild(t, "TestLockChild", fmt.Sprintf("%s=%s %s %s", lockChildEnv, home, id, mnt))
	pid := child.Cmd.Process.Pid
	t.Cleanup(func() {
		_ = child.Cmd.Process.Kill()
		_, _ = staging.AbortFUSE(mnt) // in case the test failed with the child stuck
		_, _ = child.Wait(30 * time.Second)
		_, _ = staging.CleanStaleMount(mnt)
	})
	require.Equal(t, "reading", child.Line(t, 30*time.Second))
	require.NoError(t, j.Put(&Session{ID: id, PID: pid, State: StateDumping, Resources: Resources{Mountpoint: mnt}}))

	_, err = j.Lock(id)
	require.ErrorIs(t, err, ErrRunning, "a live holder keeps its lock")

	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	l, err := j.Lock(id)
	require.NoError(t, err, "the lock of a killed holder stuck exiting")
	l.Unlock()
	ended, err := child.Wait(30 * time.Second)
	require.NoError(t, err)
	require.ErrorContains(t, ended, "signal: killed")
	cleaned, err := staging.CleanStaleMount(mnt)
	require.NoError(t, err)
	require.True(t, cleaned, "the aborted mount is left for the reclaim to detach")
}
