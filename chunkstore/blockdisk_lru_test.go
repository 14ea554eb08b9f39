package chunkstore

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Eviction removes the blocks least recently used, by mtime, which a hit
// refreshes, down to seven eighths of the bound; a crashed writer's old
// temporary file goes too, a young one (a writer's, now) stays; the
// blocks of a pack a prune removed go at once.
func TestDiskBlocksEviction(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "blocks")
	const size = 1000 // a pack of one short block
	file := int64(blockHeaderLen + size)
	d := newDiskBlocks(dir, 4*file, owner{}, slog.New(slog.DiscardHandler))
	key := func(i uint64) blockKey { return blockKey{pack: i} }
	data := make([]byte, size)
	for i := range uint64(4) {
		data[0] = byte(i)
		d.put(key(i), size, data)
	}
	age := func(i uint64, by time.Duration) {
		old := time.Now().Add(-by)
		require.NoError(t, os.Chtimes(d.path(key(i)), old, old))
	}
	age(0, 4*time.Hour)
	age(1, 3*time.Hour)
	age(2, 2*time.Hour)
	age(3, time.Hour)
	got, ps, ok := d.get(key(0), size) // a hit: now the most recent
	require.True(t, ok)
	require.EqualValues(t, size, ps)
	require.EqualValues(t, 0, got[0])
	stale := filepath.Join(dir, ".tmp-crashed")
	young := filepath.Join(dir, ".tmp-writing")
	require.NoError(t, os.WriteFile(stale, data, 0o600))
	require.NoError(t, os.WriteFile(young, data, 0o600))
	old := time.Now().Add(-2 * staleTemp)
	require.NoError(t, os.Chtimes(stale, old, old))

	d.put(key(4), size, data) // 5 files over a bound of 4: down to 3
	for i, want := range []bool{true, false, false, true, true} {
		_, _, ok := d.get(key(uint64(i)), size)
		require.Equal(t, want, ok, "block of pack %d", i)
	}
	require.NoFileExists(t, stale)
	require.FileExists(t, young)

	// A pack a prune removed: its blocks go.
	d.forget(3)
	_, _, ok = d.get(key(3), size)
	require.False(t, ok)
	_, _, ok = d.get(key(4), size)
	require.True(t, ok)
}
