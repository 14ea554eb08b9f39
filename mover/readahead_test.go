package mover

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/stretchr/testify/require"
)

// TestSendReadsOnce: with room for the whole tree, every chunk sent comes
// from the bytes read to chunk it; without a read-ahead, none does; and the
// trees are the same either way.
func TestSendReadsOnce(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 31, 3) // about 12 MiB
	ctx := context.Background()

	res, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "once")})
	require.NoError(t, err)
	requireSameTree(t, src, filepath.Join(r.root, "once"))
	require.Positive(t, res.ChunksSent)
	require.Equal(t, res.ChunksSent, res.ChunksFromMemory)

	other := t.TempDir() // not the same chunks: the receiver would dedupe them
	makeTree(t, other, 33, 3)
	res, err = s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: other, Dest: filepath.Join(r.root, "twice"), ReadAhead: -1})
	require.NoError(t, err)
	requireSameTree(t, other, filepath.Join(r.root, "twice"))
	require.Positive(t, res.ChunksSent)
	require.Zero(t, res.ChunksFromMemory)
}

// TestSendReadAheadSmall: a read-ahead far smaller than the tree forgets
// chunks for room; those are read again, and the tree arrives intact.
func TestSendReadAheadSmall(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 32, 8) // about 32 MiB
	dest := filepath.Join(r.root, "small")
	res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, ReadAhead: 16 << 20})
	require.NoError(t, err)
	requireSameTree(t, src, dest)
	require.LessOrEqual(t, res.ChunksFromMemory, res.ChunksSent)
}

// TestReadAheadBounded drives a readAhead as the chunker and the workers do:
// it never holds more than its slabs, never takes back a slab a worker is
// sending from, and bytes given out stay intact until released.
func TestReadAheadBounded(t *testing.T) {
	p := chunkstore.DefaultParams
	ra := newReadAhead(4*(4<<20), p)
	require.NotNil(t, ra)
	require.Nil(t, newReadAhead(3*(4<<20), p), "less than four slabs is not worth it")

	fill := func(b []byte, v byte) []byte {
		for i := range b {
			b[i] = v
		}
		return b
	}
	// Slab 0 holds chunk (0,0); a worker takes it and keeps sending.
	b0 := ra.alloc()
	ra.hold(0, 0, fill(b0[:100], 1))
	busy, release, ok := ra.take(0, 0)
	require.True(t, ok)
	_, _, ok = ra.take(0, 0)
	require.False(t, ok, "a chunk is taken once")
	// Slabs 1-3 hold a chunk each, never taken.
	for i := uint32(1); i < 4; i++ {
		ra.hold(i, 0, fill(ra.alloc()[:100], byte(i+1)))
	}
	require.Len(t, ra.live, 4)
	// The fifth slab must come from an old one, not slab 0 (busy), nor the
	// chunker's current one (3): slab 1, the oldest idle one.
	b4 := ra.alloc()
	fill(b4, 9)
	require.Equal(t, bytes.Repeat([]byte{1}, 100), busy, "a slab being sent from was reused")
	_, _, ok = ra.take(1, 0)
	require.False(t, ok, "the evicted slab's chunk is forgotten")
	got, rel2, ok := ra.take(2, 0)
	require.True(t, ok)
	require.Equal(t, bytes.Repeat([]byte{3}, 100), got)
	rel2()
	require.LessOrEqual(t, len(ra.live)+len(ra.free), ra.maxSlabs)
	release()
	hits, evicted := ra.stats()
	require.Equal(t, int64(2), hits)
	require.Equal(t, int64(1), evicted)
	require.LessOrEqual(t, len(ra.live)+len(ra.free), ra.maxSlabs)
}
