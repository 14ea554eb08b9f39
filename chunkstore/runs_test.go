package chunkstore

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

func testRun(t *testing.T, dir string, n int, seed uint32) (*run, []chunk.ID) {
	t.Helper()
	entries := make([]runEntry, n)
	for i := range entries {
		var b [8]byte
		binary.LittleEndian.PutUint32(b[:], seed)
		binary.LittleEndian.PutUint32(b[4:], uint32(i))
		entries[i] = runEntry{id: chunk.Sum(b[:]), loc: chunkLoc{Pack: uint64(seed), Offset: int64(i) * 100, StoredLen: 50, PlainLen: 60, Codec: chunk.CodecZstd}}
	}
	slices.SortFunc(entries, func(a, b runEntry) int { return bytes.Compare(a.id[:], b.id[:]) })
	r, err := writeRun(dir, entries, owner{}, nil)
	require.NoError(t, err)
	t.Cleanup(r.release)
	ids := make([]chunk.ID, n)
	for i, e := range entries {
		ids[i] = e.id
	}
	return r, ids
}

// The windowed search finds every entry, and the place of absent IDs, in
// runs small (no window) and large; the merge keeps each ID once.
func TestRunSearch(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []int{0, 1, 64, 65, 5000, 100_000} {
		r, ids := testRun(t, dir, n, uint32(n))
		for i, id := range ids {
			require.Equal(t, i, r.search(id), "n=%d entry %d", n, i)
			loc, ok, err := r.find(id)
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, uint64(n), loc.Pack)
		}
		for k := range 1000 {
			id := chunk.Sum([]byte{byte(k), byte(k >> 8), 0xff})
			i := r.search(id)
			want, _ := slices.BinarySearchFunc(ids, id, func(a, b chunk.ID) int { return bytes.Compare(a[:], b[:]) })
			require.Equal(t, want, i, "absent ID's place, n=%d", n)
			_, ok, _ := r.find(id)
			require.False(t, ok)
		}
	}
	a, ida := testRun(t, dir, 300, 1)
	b, idb := testRun(t, dir, 200, 2)
	var got []chunk.ID
	require.NoError(t, mergeRuns([]*run{a, b, a}, func(id chunk.ID, _ []byte) error {
		got = append(got, id)
		return nil
	}))
	want := append(slices.Clone(ida), idb...)
	slices.SortFunc(want, func(x, y chunk.ID) int { return bytes.Compare(x[:], y[:]) })
	require.Equal(t, want, got)
}

func TestCompactionPick(t *testing.T) {
	dir := t.TempDir()
	var small, big []*run
	for i := range 3 {
		r, _ := testRun(t, dir, 10, uint32(100+i))
		small = append(small, r)
	}
	for i := range 4 {
		r, _ := testRun(t, dir, 5000, uint32(200+i))
		big = append(big, r)
	}
	require.Nil(t, compactionPick(small, 0), "three runs of a level wait for a fourth")
	all := append(slices.Clone(small), big...)
	require.ElementsMatch(t, big, compactionPick(all, 0))
	require.Nil(t, compactionPick(all, 19_999), "a merge above the cap is left")
	r, _ := testRun(t, dir, 10, 300)
	all = append(all, r)
	require.ElementsMatch(t, append(slices.Clone(small), r), compactionPick(all, 0), "the lowest level goes first")
	require.ElementsMatch(t, append(slices.Clone(small), r), compactionPick(all, 40))
}
