package mover

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/stretchr/testify/require"
)

// TestChunkCacheSkipsUnchangedFiles guards the promise that rerunning a send
// does not re-read files whose size, mtime and inode did not change.
func TestChunkCacheSkipsUnchangedFiles(t *testing.T) {
	m := newTLSTestMover(t)
	s, err := NewSender(m.home, nil)
	require.NoError(t, err)
	defer s.Close()
	src := t.TempDir()
	makeTree(t, src, 11, 1)
	ctx := context.Background()
	cache := &chunkCache{db: s.db, tid: "t-cache"}

	chunk := func() (*source, []*srcFile) {
		tree, err := scanTree(src)
		files := tree.files
		require.NoError(t, err)
		root, err := os.OpenRoot(src)
		require.NoError(t, err)
		t.Cleanup(func() { root.Close() })
		so := newSource(root, files)
		require.NoError(t, so.run(ctx, cache, chunk.DefaultParams))
		return so, files
	}
	first, files1 := chunk()
	require.Positive(t, first.hashed.Load())
	again, files2 := chunk()
	require.Zero(t, again.hashed.Load(), "unchanged files must come from the cache")
	for i := range files1 {
		require.True(t, slices.Equal(files1[i].Chunks, files2[i].Chunks), files1[i].Path)
		require.Equal(t, files1[i].Hash, files2[i].Hash)
	}

	// A touched file is read again; the others are not.
	p := filepath.Join(src, "3001.dat")
	later := time.Now().Add(time.Hour)
	require.NoError(t, os.Chtimes(p, later, later))
	third, _ := chunk()
	fi, err := os.Stat(p)
	require.NoError(t, err)
	require.Equal(t, fi.Size(), third.hashed.Load())
}

// TestChunkCacheSeesSameSizeSameMTimeEdit: an edit that keeps the size and
// puts the mtime back still moves ctime, so the file is chunked again
// rather than sent from a stale chunk list.
func TestChunkCacheSeesSameSizeSameMTimeEdit(t *testing.T) {
	m := newTLSTestMover(t)
	s, err := NewSender(m.home, nil)
	require.NoError(t, err)
	defer s.Close()
	src := t.TempDir()
	p := filepath.Join(src, "a.dat")
	require.NoError(t, os.WriteFile(p, pgbenchLike(200<<10, 1), 0o600))
	ctx := context.Background()
	cache := &chunkCache{db: s.db, tid: "t-ctime"}
	chunk := func() *source {
		tree, err := scanTree(src)
		files := tree.files
		require.NoError(t, err)
		root, err := os.OpenRoot(src)
		require.NoError(t, err)
		t.Cleanup(func() { root.Close() })
		so := newSource(root, files)
		require.NoError(t, so.run(ctx, cache, chunk.DefaultParams))
		return so
	}
	first := chunk()
	fi, err := os.Stat(p)
	require.NoError(t, err)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("EDIT"), 100)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, os.Chtimes(p, fi.ModTime(), fi.ModTime()))
	second := chunk()
	require.Equal(t, fi.Size(), second.hashed.Load(), "the edited file must be read again")
	require.NotEqual(t, first.files[0].Hash, second.files[0].Hash)
}
