package objstore_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/chunkstore/objstore/objstoretest"
)

func newDir(t *testing.T) *objstore.Dir {
	d, err := objstore.OpenDir(filepath.Join(t.TempDir(), "repo"))
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d
}

func TestDir(t *testing.T) {
	objstoretest.Run(t, objstoretest.Config{New: func(t *testing.T) objstore.Backend { return newDir(t) }})
}

// The retry decorator is a Backend too.
func TestRetryingDir(t *testing.T) {
	objstoretest.Run(t, objstoretest.Config{New: func(t *testing.T) objstore.Backend {
		return objstore.WithRetry(newDir(t), objstore.RetryPolicy{})
	}})
}

// A link planted in the directory (by someone else: Dir makes none) is not
// followed out of it, neither to read nor to write.
func TestDirLinkEscape(t *testing.T) {
	outside := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600))
	dir := filepath.Join(t.TempDir(), "repo")
	d, err := objstore.OpenDir(dir)
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, "evil")))
	require.NoError(t, os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, "secret")))
	ctx := t.Context()

	_, err = d.Get(ctx, "secret", nil)
	require.ErrorIs(t, err, objstore.ErrNotFound)
	_, err = d.Get(ctx, "evil/secret", nil)
	require.Error(t, err)
	err = d.PutIfAbsent(ctx, "evil/planted", strings.NewReader("x"), 1)
	require.Error(t, err)
	require.NoFileExists(t, filepath.Join(outside, "planted"))
	require.Error(t, d.Delete(ctx, "secret"), "a link is no object to delete")
	require.FileExists(t, filepath.Join(outside, "secret"))
	for o, err := range d.List(ctx, "") {
		require.NoError(t, err)
		t.Fatalf("listed %q", o.Name)
	}
}

// A put that fails leaves nothing in the temporary directory.
func TestDirNoTempLeft(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	d, err := objstore.OpenDir(dir)
	require.NoError(t, err)
	defer d.Close()
	require.Error(t, d.PutIfAbsent(t.Context(), "a", strings.NewReader("short"), 10))
	require.NoError(t, d.PutIfAbsent(t.Context(), "b", strings.NewReader("whole"), 5))
	left, err := os.ReadDir(filepath.Join(dir, ".tmp"))
	require.NoError(t, err)
	require.Empty(t, left)
}

// A size read from the file system is bounded before it is allocated.
func TestDirMaxRead(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	d, err := objstore.OpenDir(dir)
	require.NoError(t, err)
	defer d.Close()
	f, err := os.Create(filepath.Join(dir, "huge"))
	require.NoError(t, err)
	require.NoError(t, f.Truncate(objstore.MaxRead+1)) // sparse
	require.NoError(t, f.Close())
	_, err = d.Get(t.Context(), "huge", nil)
	require.ErrorContains(t, err, "more than")
	got, err := d.GetRange(t.Context(), "huge", objstore.MaxRead-10, 11, nil)
	require.NoError(t, err)
	require.Len(t, got, 11)
}
