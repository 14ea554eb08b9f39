package chunkstore

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/pebbledb"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// v1Store turns a store written by this build into one of the previous
// layout: its pack renamed to a numbered one, and a pebble index in
// DIR/index holding the same locations.
func v1Store(t *testing.T, dir string, chunks [][]byte) {
	t.Helper()
	l, err := OpenLocal(dir, LocalOptions{})
	require.NoError(t, err)
	locs := map[chunk.ID]chunkLoc{}
	for _, c := range chunks {
		id := chunk.Sum(c)
		require.NoError(t, l.Put(t.Context(), id, c))
	}
	require.NoError(t, l.Flush(t.Context()))
	for _, c := range chunks {
		loc, ok, err := l.lookupRuns(chunk.Sum(c))
		require.NoError(t, err)
		require.True(t, ok)
		locs[chunk.Sum(c)] = loc
	}
	require.NoError(t, l.Close())

	packs, err := filepath.Glob(filepath.Join(dir, "packs", "*.pack"))
	require.NoError(t, err)
	require.Len(t, packs, 1)
	require.NoError(t, os.Rename(packs[0], filepath.Join(dir, "packs", packName(7))))
	require.NoError(t, os.RemoveAll(filepath.Join(dir, "idx")))
	require.NoError(t, os.Remove(filepath.Join(dir, "format")))

	db, err := pebbledb.Open(filepath.Join(dir, "index"), pebbledb.Options{Format: v1Format})
	require.NoError(t, err)
	for id, loc := range locs {
		loc.Pack = 7
		require.NoError(t, db.Set(append([]byte{v1KeyChunk}, id[:]...), appendV1Loc(nil, loc), nil))
	}
	// A durable-length key, as the old layout kept them: not carried over.
	require.NoError(t, db.Set([]byte{'p', 0, 0, 0, 7}, make([]byte, 8), nil))
	require.NoError(t, db.Close())
}

// A store of the previous layout opens, in several processes' worth of
// opens at once: the first converts its index, the others wait for it, and
// every chunk reads back from its numbered pack.
func TestMigrateV1(t *testing.T) {
	dir := t.TempDir()
	var chunks [][]byte
	for i := range 50 {
		chunks = append(chunks, bytes.Repeat([]byte(fmt.Sprintf("chunk %d ", i)), 100+i))
	}
	v1Store(t, dir, chunks)

	var logs testsupport.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	stores := make([]*Local, 3)
	errs := make([]error, len(stores))
	var wg sync.WaitGroup
	for i := range stores {
		wg.Go(func() { stores[i], errs[i] = OpenLocal(dir, LocalOptions{Logger: log}) })
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "open %d", i)
	}
	require.Equal(t, 1, bytes.Count([]byte(logs.String()), []byte("converted the store's index")), logs.String())
	require.NoDirExists(t, filepath.Join(dir, "index"))
	format, err := os.ReadFile(filepath.Join(dir, "format"))
	require.NoError(t, err)
	require.Equal(t, storeFormat+"\n", string(format))

	for _, l := range stores {
		for i, c := range chunks {
			got, err := l.Get(context.Background(), chunk.Sum(c), nil)
			require.NoError(t, err, "chunk %d", i)
			require.Equal(t, c, got)
		}
	}
	st, err := stores[0].Verify(t.Context(), nil)
	require.NoError(t, err)
	require.Equal(t, VerifyStats{Chunks: len(chunks), PlainBytes: st.PlainBytes}, st)
	more := []byte("written after the conversion")
	require.NoError(t, stores[1].Put(t.Context(), chunk.Sum(more), more))
	for _, l := range stores {
		require.NoError(t, l.Close())
	}
	l, err := OpenLocal(dir, LocalOptions{})
	require.NoError(t, err)
	defer l.Close()
	got, err := l.Get(t.Context(), chunk.Sum(more), nil)
	require.NoError(t, err)
	require.Equal(t, more, got)
}

// A store of a layout this build does not know is refused, not rewritten.
func TestStoreFormatRefused(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "format"), []byte("pgporter-chunkstore-9\n"), 0o644))
	_, err := OpenLocal(dir, LocalOptions{})
	require.ErrorContains(t, err, `format "pgporter-chunkstore-9"`)
}

// A damaged run is left alone and not used: the store opens, its chunks
// read as missing, and the file is still there for a person to look at.
func TestDamagedRunLeftAlone(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLocal(dir, LocalOptions{})
	require.NoError(t, err)
	data := []byte("in a run that gets damaged")
	require.NoError(t, l.Put(t.Context(), chunk.Sum(data), data))
	require.NoError(t, l.Close())
	runs, err := filepath.Glob(filepath.Join(dir, "idx", "*"+runExt))
	require.NoError(t, err)
	require.Len(t, runs, 1)
	b, err := os.ReadFile(runs[0])
	require.NoError(t, err)
	b[len(runMagic)+3] ^= 1
	require.NoError(t, os.WriteFile(runs[0], b, 0o644))

	var logs testsupport.Buffer
	l, err = OpenLocal(dir, LocalOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	defer l.Close()
	require.Contains(t, logs.String(), "index run damaged")
	require.Contains(t, logs.String(), "checksum mismatch")
	_, err = l.Get(t.Context(), chunk.Sum(data), nil)
	require.ErrorIs(t, err, chunk.ErrNotFound)
	require.FileExists(t, runs[0])
}
