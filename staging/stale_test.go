package staging

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// staleChildEnv and staleChildCowEnv, set in a child's environment to a
// mountpoint and a CoW directory, make TestStaleMountChild mount there and
// wait to be killed.
const (
	staleChildEnv    = "PGPORTER_STAGING_STALE_CHILD"
	staleChildCowEnv = "PGPORTER_STAGING_STALE_CHILD_COW"
)

// memReader serves chunks from memory.
type memReader map[chunk.ID][]byte

func (r memReader) Get(_ context.Context, id chunk.ID, dst []byte) ([]byte, error) {
	b, ok := r[id]
	if !ok {
		return nil, fmt.Errorf("chunk %s not found", id)
	}
	return append(dst, b...), nil
}

// smallTree is one file, PG_VERSION, served from memory.
func smallTree() ([]chunkstore.Node, memReader) {
	data := []byte("15\n")
	id := chunk.Sum(data)
	tree := []chunkstore.Node{{Path: "PG_VERSION", Type: chunkstore.NodeFile, Mode: 0o600, Size: int64(len(data)),
		Chunks: []chunkstore.ChunkRef{{ID: id, Len: uint32(len(data))}}}}
	return tree, memReader{id: data}
}

// TestStaleMountChild is the mount process that TestStaleMountCleanedByNextMount
// kills; run on its own it does nothing.
func TestStaleMountChild(t *testing.T) {
	mnt, cow := os.Getenv(staleChildEnv), os.Getenv(staleChildCowEnv)
	if mnt == "" {
		return
	}
	tree, chunks := smallTree()
	owner, _ := testOwner(t)
	if _, err := Mount(context.Background(), mnt, tree, chunks, MountOptions{Owner: owner, CowDir: cow}); err != nil {
		fmt.Println("mount failed:", err)
		os.Exit(1)
	}
	fmt.Println("mounted")
	select {} // until SIGKILL; the FUSE server's goroutines keep the runtime from declaring a deadlock
}

func requireRootFUSE(t *testing.T) {
	t.Helper()
	testsupport.RequireFUSE(t)
}

// TestStaleMountCleanedByNextMount guards against a killed mount process
// blocking the next mount of the same point: its dead FUSE mount answers
// ENOTCONN until detached.
func TestStaleMountCleanedByNextMount(t *testing.T) {
	requireRootFUSE(t)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))

	child := testsupport.StartChild(t, "TestStaleMountChild", staleChildEnv+"="+mnt, staleChildCowEnv+"="+filepath.Join(dir, "cow1"))
	t.Cleanup(func() {
		_ = child.Cmd.Process.Kill()
		_, _ = child.Wait(30 * time.Second)
		_, _ = CleanStaleMount(mnt)
	})
	for l := child.Line(t, 30*time.Second); l != "mounted"; l = child.Line(t, 30*time.Second) {
		require.NotContains(t, l, "mount failed")
	}
	require.True(t, testsupport.IsMounted(t, mnt))

	require.NoError(t, child.Cmd.Process.Kill())
	ended, err := child.Wait(30 * time.Second)
	require.NoError(t, err)
	require.Error(t, ended)
	_, err = os.ReadDir(mnt)
	require.ErrorIs(t, err, syscall.ENOTCONN, "a killed FUSE server leaves a dead mount")

	tree, chunks := smallTree()
	owner, _ := testOwner(t)
	m, err := Mount(context.Background(), mnt, tree, chunks, MountOptions{Owner: owner, CowDir: filepath.Join(dir, "cow2")})
	require.NoError(t, err)
	got, err := os.ReadFile(filepath.Join(mnt, "PG_VERSION"))
	require.NoError(t, err)
	require.Equal(t, "15\n", string(got))
	require.NoError(t, m.Unmount())
	require.False(t, testsupport.IsMounted(t, mnt), "both the stale and the new mount are gone")
}

func TestCleanStaleMountLeavesOthersAlone(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{dir, filepath.Join(dir, "missing"), "/"} {
		cleaned, err := CleanStaleMount(p)
		require.NoError(t, err, p)
		require.False(t, cleaned, p)
	}

	requireRootFUSE(t)
	tree, chunks := smallTree()
	m, mnt := mountTree(t, tree, chunks, MountOptions{})
	cleaned, err := CleanStaleMount(mnt)
	require.ErrorIs(t, err, ErrMountInUse)
	require.False(t, cleaned)
	require.True(t, testsupport.IsMounted(t, mnt), "a running mount is not detached")

	_, err = Mount(context.Background(), mnt, tree, chunks, MountOptions{CowDir: filepath.Join(t.TempDir(), "cow")})
	require.ErrorIs(t, err, ErrMountInUse, "mounting over a running mount")

	f, err := os.Open(filepath.Join(mnt, "PG_VERSION"))
	require.NoError(t, err)
	defer f.Close()
	require.True(t, slices.ContainsFunc(Users(mnt), func(u MountUser) bool { return u.PID == os.Getpid() }),
		"Users names the process holding a file open: %v", Users(mnt))
	require.Error(t, m.Unmount())
	require.NoError(t, f.Close())
	require.Empty(t, Users(mnt))
}

func TestMountinfoHelpers(t *testing.T) {
	require.Equal(t, "/tmp/a b\\c", unescapeMountinfo(`/tmp/a\040b\134c`))
	require.Equal(t, "/plain", unescapeMountinfo("/plain"))
	for fstype, want := range map[string]bool{"fuse": true, "fuse.pgporter": true, "fuseblk": true, "fusectl": false, "ext4": false} {
		require.Equal(t, want, isFUSE(fstype), fstype)
	}
	_, ok, err := topMount("/no/such/mountpoint")
	require.NoError(t, err)
	require.False(t, ok)

	// One parser for every reader of the mount table: a FUSE mount with an
	// overlay stacked on it, optional fields, an escaped mountpoint.
	table := `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:52 / /tmp/pub\040a rw,nosuid - fuse.pgporter pgporter rw,user_id=0
91 90 0:53 / /tmp/pub\040a rw,noexec shared:7 master:2 - overlay overlay rw,lowerdir=/x
92 22 0:54 / /tmp/other rw - tmpfs tmpfs rw
93 22 0:55 / /tmp/pub\040a rw
`
	require.Equal(t, []mountEntry{
		{dev: "0:52", dir: "/tmp/pub a", fstype: "fuse.pgporter"},
		{dev: "0:53", dir: "/tmp/pub a", fstype: "overlay"},
	}, parseMountinfo(table, "/tmp/pub a"), "a line without its separator is skipped")
	require.Empty(t, parseMountinfo(table, "/tmp/nothing"))
	ok, err = overlayAt("/no/such/mountpoint")
	require.NoError(t, err)
	require.False(t, ok)
	require.NoError(t, UnmountOverlay("/no/such/mountpoint", 0), "nothing to unmount")
}
