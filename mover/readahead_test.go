package mover

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
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

// TestSendReadAheadSmall: with a read-ahead far smaller than the tree, the
// chunker waits for room instead of forgetting chunks: every chunk is still
// sent from memory, and the tree arrives intact.
func TestSendReadAheadSmall(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 32, 8) // about 32 MiB
	dest := filepath.Join(r.root, "small")
	res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, ReadAhead: 16 << 20})
	require.NoError(t, err)
	requireSameTree(t, src, dest)
	require.Positive(t, res.ChunksSent)
	require.Equal(t, res.ChunksSent, res.ChunksFromMemory)

	// The same tree again elsewhere: the receiver has every chunk and asks
	// for none. Its Needs' Decided marks alone must free the read-ahead, or
	// the chunker would wait forever.
	again := filepath.Join(r.root, "again")
	res, err = s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: again, ReadAhead: 16 << 20})
	require.NoError(t, err)
	requireSameTree(t, src, again)
	require.Zero(t, res.ChunksSent)
}

// TestReadAheadBounded drives a readAhead as the chunker and the workers do:
// it never holds more than its slabs, never takes back a slab a worker is
// sending from, and bytes given out stay intact until released.
func TestReadAheadBounded(t *testing.T) {
	p := chunk.DefaultParams
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

// TestReadAheadNeedFrees: chunks a Need does not ask for, below its Decided
// mark and in earlier files, are forgotten and their slabs come back, which
// ends the chunker's wait; chunks asked for stay until taken.
func TestReadAheadNeedFrees(t *testing.T) {
	ra := newReadAhead(4*(4<<20), chunk.DefaultParams)
	require.NotNil(t, ra)
	// Four slabs: file 0 chunks 0-1, file 1 chunks 0-1, file 1 chunks 2-3,
	// file 2 chunk 0 (the chunker's current one).
	hold := func(f, c uint32) { ra.hold(f, c, []byte{byte(f), byte(c)}) }
	ra.alloc()
	hold(0, 0)
	hold(0, 1)
	ra.alloc()
	hold(1, 0)
	hold(1, 1)
	ra.alloc()
	hold(1, 2)
	hold(1, 3)
	ra.alloc()
	hold(2, 0)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ra.wait(ctx) // full: returns only because ctx is done

	done := make(chan struct{})
	go func() {
		defer close(done)
		ra.wait(context.Background())
	}()
	// The receiver asks for chunk 1 of file 1 and has decided chunks 0-2:
	// file 0 and chunk 0 of file 1 are forgotten; chunk 2
	// of file 1 too, but its slab still holds chunk 3, not decided yet: one
	// slab comes back.
	ra.need(1, []uint32{1}, 3)
	<-done
	for _, c := range []chunkPos{{0, 0}, {0, 1}, {1, 0}, {1, 2}} {
		_, _, ok := ra.take(c.file, c.chunk)
		require.False(t, ok, "%v should be forgotten", c)
	}
	for _, c := range []chunkPos{{1, 1}, {1, 3}, {2, 0}} {
		b, release, ok := ra.take(c.file, c.chunk)
		require.True(t, ok, "%v should be held", c)
		require.Equal(t, []byte{byte(c.file), byte(c.chunk)}, b)
		release()
	}
	require.LessOrEqual(t, len(ra.live)+len(ra.free), ra.maxSlabs)

	// A new connection: what was asked for is decided again.
	ra.alloc()
	hold(3, 0)
	ra.need(3, []uint32{0}, 1)
	ra.newConnection()
	ra.need(4, nil, 0)
	_, _, ok := ra.take(3, 0)
	require.False(t, ok, "asked for on an old connection only: forgotten")
}

// TestReadAheadLongPath: on a long path the chunker does not wait for the
// receiver's decisions. It takes back the oldest slab none of whose chunks
// is asked for or being sent, and waits only when every slab holds such a
// chunk; a worker done with the last asked chunk of a slab ends the wait.
func TestReadAheadLongPath(t *testing.T) {
	ra := newReadAhead(4*(4<<20), chunk.DefaultParams)
	require.NotNil(t, ra)
	full := func() bool {
		ra.mu.Lock()
		defer ra.mu.Unlock()
		return ra.full()
	}
	hold := func(c uint32) { ra.hold(0, c, []byte{byte(c)}) }
	// One file: slab 0 holds chunks 0-1, slabs 1 and 2 chunks 2 and 3, slab
	// 3, the chunker's, chunk 4. Nothing decided.
	ra.alloc()
	hold(0)
	hold(1)
	for c := uint32(2); c < 5; c++ {
		ra.alloc()
		hold(c)
	}
	require.True(t, full(), "a short path waits for the receiver")
	ra.longPath()
	require.False(t, full(), "a long path takes undecided slabs back")

	// Every slab but the chunker's holds a chunk asked for: wait.
	ra.need(0, []uint32{0, 2, 3}, 0)
	require.True(t, full(), "chunks asked for are kept for their workers")

	done := make(chan struct{})
	go func() {
		defer close(done)
		ra.wait(context.Background())
	}()
	// A worker sends chunk 0: slab 0 still holds chunk 1, which nobody
	// asked for, so it may be taken back, and the wait ends.
	_, release, ok := ra.take(0, 0)
	require.True(t, ok)
	release()
	<-done
	require.False(t, full())

	// The next slab is slab 0, not slab 1 or 2, whose chunks are asked for.
	ra.alloc()
	_, _, ok = ra.take(0, 1)
	require.False(t, ok, "the undecided chunk of the slab taken back is forgotten")
	for _, c := range []uint32{2, 3} {
		b, release, ok := ra.take(0, c)
		require.True(t, ok, "asked chunk %d should be held", c)
		require.Equal(t, []byte{byte(c)}, b)
		release()
	}
	_, evicted := ra.stats()
	require.Equal(t, int64(1), evicted)
	require.LessOrEqual(t, len(ra.live)+len(ra.free), ra.maxSlabs)
}

// TestSendReadAheadLongPath: over a path of 300 ms round trips, the
// chunker cuts on while the first Needs are under way instead of waiting
// for them with a full read-ahead: chunks it took back are read from the
// file again, and the tree arrives intact. The harness's WAN (40 ms) sent
// its 260 MB dump 0.1 s sooner so (docs/BENCHMARKS.md). The round trip is
// long so that the chunker, even on a loaded machine under -race, cuts the
// read-ahead's 16 MiB before the first Need comes back.
func TestSendReadAheadLongPath(t *testing.T) {
	longPathsFrom(t, 20*time.Millisecond)
	r, s, proxy := proxiedPair(t)
	proxy.SetDelay(150 * time.Millisecond)
	src := t.TempDir()
	makeTree(t, src, 34, 8) // about 32 MiB
	dest := filepath.Join(r.root, "long")
	res, err := s.Send(context.Background(), proxy.Addr(), r.id.ID, SendOptions{Src: src, Dest: dest, ReadAhead: 16 << 20, Connections: 1})
	require.NoError(t, err)
	requireSameTree(t, src, dest)
	t.Logf("chunks sent from memory: %d of %d", res.ChunksFromMemory, res.ChunksSent)
	require.Less(t, res.ChunksFromMemory, res.ChunksSent, "the chunker waited for the receiver")
	require.Positive(t, res.ChunksFromMemory)
}
