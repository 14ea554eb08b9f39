package orchestrator

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/staging"
)

// lockChildEnv, set in a child's environment to HOME#SESSION#MOUNTPOINT,
// makes TestLockChild run session SESSION the way an export does.
const lockChildEnv = "PGPORTER_ORCH_LOCK_CHILD"

// silentRepo never answers a chunk read, and announces it on stdout.
type silentRepo struct{}

func (silentRepo) Get(context.Context, chunkstore.ID, []byte) ([]byte, error) {
	fmt.Println("reading")
	select {} // until the process is killed
}

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
		Chunks: []chunkstore.ChunkRef{{ID: chunkstore.Sum(data), Len: uint32(len(data))}}}}
	_, err = staging.Mount(context.Background(), mnt, tree, silentRepo{}, staging.MountOptions{CowDir: filepath.Join(home, "cow")})
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

	cmd := exec.Command(os.Args[0], "-test.run=^TestLockChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %s", lockChildEnv, home, id, mnt))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	pid := cmd.Process.Pid
	lines := make(chan string, 16)
	exited := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = staging.AbortFUSE(mnt) // in case the test failed with the child stuck
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			t.Errorf("the child (pid %d) did not exit", cmd.Process.Pid)
		}
		_, _ = staging.CleanStaleMount(mnt)
	})
	select {
	case l, ok := <-lines:
		require.True(t, ok, "the child exited before reading its mount")
		require.Equal(t, "reading", l)
	case <-time.After(30 * time.Second):
		t.Fatal("the child did not read its mount within 30s")
	}
	require.NoError(t, j.Put(&Session{ID: id, PID: pid, State: StateDumping, Resources: Resources{Mountpoint: mnt}}))

	_, err = j.Lock(id)
	require.ErrorIs(t, err, ErrRunning, "a live holder keeps its lock")

	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	l, err := j.Lock(id)
	require.NoError(t, err, "the lock of a killed holder stuck exiting")
	l.Unlock()
	for range lines {
	}
	require.ErrorContains(t, <-exited, "signal: killed")
	exited <- nil // for the cleanup
	cleaned, err := staging.CleanStaleMount(mnt)
	require.NoError(t, err)
	require.True(t, cleaned, "the aborted mount is left for the reclaim to detach")
}
