// Package storetest is the conformance suite for chunkstore.Store: every
// implementation (the local pack store, remote and caching stores, test
// fakes) runs Run from its own tests, so that callers can rely on the
// contract written on the interface rather than on one implementation.
//
// It is test support only; nothing outside _test.go files should import it.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// Run runs the suite. open must return a new, empty store each time it is
// called; Run closes it (twice, to check that this is allowed).
func Run(t *testing.T, open func(t *testing.T) chunkstore.Store) {
	t.Helper()
	newStore := func(t *testing.T) chunkstore.Store {
		s := open(t)
		t.Cleanup(func() { require.NoError(t, s.Close()) })
		return s
	}
	tests := []struct {
		name string
		fn   func(*testing.T, chunkstore.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"GetAppendsToDst", testGetAppends},
		{"PutDoesNotRetainData", testPutDoesNotRetain},
		{"PutWrongID", testPutWrongID},
		{"PutDuplicate", testPutDuplicate},
		{"GetMissing", testGetMissing},
		{"HasMany", testHasMany},
		{"Iterate", testIterate},
		{"IterateStops", testIterateStops},
		{"IterateCancelled", testIterateCancelled},
		{"VerifyClean", testVerifyClean},
		{"Concurrent", testConcurrent},
		{"CloseTwice", testCloseTwice},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

// EdgeChunks returns the chunks at the edges of what a store must take:
// empty, one byte, just below the size compression is tried at, a MiB of
// zeros, and random and compressible chunks of chunk.MaxChunkCeil.
func EdgeChunks() [][]byte {
	r := rand.New(rand.NewPCG(0xed6e, 0xed6e))
	return [][]byte{
		{},
		{0},
		RandomBytes(r, 127),
		make([]byte, 1<<20),
		RandomBytes(r, chunk.MaxChunkCeil),
		Text(r, chunk.MaxChunkCeil),
	}
}

// Chunks returns n distinct chunks, the same for the same seed: a mix of
// random (incompressible) chunks up to 128 KiB, pg_dump-like text
// (compressible) up to 256 KiB, and tiny ones.
func Chunks(seed uint64, n int) [][]byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([][]byte, 0, n)
	for i := range n {
		switch i % 3 {
		case 0:
			out = append(out, RandomBytes(r, 16+r.IntN(128<<10)))
		case 1:
			out = append(out, Text(r, 1024+r.IntN(256<<10)))
		default:
			out = append(out, fmt.Appendf(nil, "small chunk %d of seed %d", i, seed))
		}
	}
	return out
}

// RandomBytes returns n random bytes from r.
func RandomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// Text returns n bytes shaped like pg_dump COPY data of pgbench_accounts
// (aid, bid, abalance, and a filler of 84 blanks) with one row in sixteen
// of varied text, as history rows would be.
func Text(r *rand.Rand, n int) []byte {
	const filler = "                                                                                    " // 84 blanks
	b := make([]byte, 0, n+256)
	aid := r.IntN(1 << 20)
	for len(b) < n {
		aid++
		if r.IntN(16) == 0 {
			b = fmt.Appendf(b, "%d\t%d\t%d\t%d\t2024-01-%02d 12:%02d:%02d.%06d\tnote %x\n",
				aid, r.IntN(10), r.IntN(100000), r.IntN(1e6)-5e5, 1+r.IntN(28), r.IntN(60), r.IntN(60), r.IntN(1e6), r.Uint64())
			continue
		}
		b = strconv.AppendInt(b, int64(aid), 10)
		b = append(b, '\t')
		b = strconv.AppendInt(b, int64(1+aid/100000), 10)
		b = append(b, "\t0\t"+filler+"\n"...)
	}
	return b[:n]
}

func putAll(t *testing.T, s chunkstore.Store, chunks [][]byte) []chunk.ID {
	t.Helper()
	ids := make([]chunk.ID, len(chunks))
	for i, c := range chunks {
		ids[i] = chunk.Sum(c)
		require.NoError(t, s.Put(t.Context(), ids[i], c), "chunk %d (%d bytes)", i, len(c))
	}
	return ids
}

func checkAll(t *testing.T, s chunkstore.Store, ids []chunk.ID, chunks [][]byte) {
	t.Helper()
	for i, id := range ids {
		got, err := s.Get(t.Context(), id, nil)
		require.NoError(t, err, "chunk %d", i)
		require.True(t, bytes.Equal(chunks[i], got), "chunk %d: content differs (%d bytes, want %d)", i, len(got), len(chunks[i]))
	}
}

func testRoundTrip(t *testing.T, s chunkstore.Store) {
	chunks := append(EdgeChunks(), Chunks(1, 60)...)
	ids := putAll(t, s, chunks)
	// Readable as soon as Put returns, before any Flush.
	checkAll(t, s, ids, chunks)
	require.NoError(t, s.Flush(t.Context()))
	checkAll(t, s, ids, chunks)
	has, err := s.HasMany(t.Context(), ids)
	require.NoError(t, err)
	require.NotContains(t, has, false)
}

func testGetAppends(t *testing.T, s chunkstore.Store) {
	data := []byte("appended after the prefix")
	id := chunk.Sum(data)
	require.NoError(t, s.Put(t.Context(), id, data))
	got, err := s.Get(t.Context(), id, []byte("prefix:"))
	require.NoError(t, err)
	require.Equal(t, "prefix:"+string(data), string(got))
}

func testPutDoesNotRetain(t *testing.T, s chunkstore.Store) {
	data := bytes.Repeat([]byte("retained? "), 1000)
	want := bytes.Clone(data)
	id := chunk.Sum(data)
	require.NoError(t, s.Put(t.Context(), id, data))
	for i := range data {
		data[i] = 'x'
	}
	got, err := s.Get(t.Context(), id, nil)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))
}

func testPutWrongID(t *testing.T, s chunkstore.Store) {
	a, b := []byte("content a"), []byte("content b")
	require.Error(t, s.Put(t.Context(), chunk.Sum(a), b))
	for _, id := range []chunk.ID{chunk.Sum(a), chunk.Sum(b)} {
		ok, err := s.Has(t.Context(), id)
		require.NoError(t, err)
		require.False(t, ok)
	}
}

func testPutDuplicate(t *testing.T, s chunkstore.Store) {
	data := bytes.Repeat([]byte("dup"), 5000)
	id := chunk.Sum(data)
	for range 3 {
		require.NoError(t, s.Put(t.Context(), id, data))
	}
	require.NoError(t, s.Flush(t.Context()))
	require.NoError(t, s.Put(t.Context(), id, data))
	require.NoError(t, s.Flush(t.Context()))
	var n int
	require.NoError(t, s.Iterate(t.Context(), func(chunk.ID, chunkstore.Info) error { n++; return nil }))
	require.Equal(t, 1, n)
	st, err := s.Verify(t.Context(), nil)
	require.NoError(t, err)
	require.Equal(t, 1, st.Chunks)
}

func testGetMissing(t *testing.T, s chunkstore.Store) {
	id := chunk.Sum([]byte("never stored"))
	_, err := s.Get(t.Context(), id, nil)
	require.ErrorIs(t, err, chunk.ErrNotFound)
	var ce *chunk.CorruptChunkError
	require.False(t, errors.As(err, &ce), "a missing chunk is not a corrupt one")
	ok, err := s.Has(t.Context(), id)
	require.NoError(t, err)
	require.False(t, ok)
}

func testHasMany(t *testing.T, s chunkstore.Store) {
	var ids []chunk.ID
	var want []bool
	for i := range 300 {
		data := fmt.Appendf(nil, "chunk %d", i)
		id := chunk.Sum(data)
		if i%3 != 0 {
			require.NoError(t, s.Put(t.Context(), id, data))
		}
		if i == 150 {
			require.NoError(t, s.Flush(t.Context())) // some durable, some not
		}
		ids = append(ids, id)
		want = append(want, i%3 != 0)
	}
	// Duplicates, in any order, answer for each position.
	ids = append(ids, ids[1], ids[0], ids[1])
	want = append(want, true, false, true)

	got, err := s.HasMany(t.Context(), ids)
	require.NoError(t, err)
	require.Equal(t, want, got)
	for i, id := range ids {
		ok, err := s.Has(t.Context(), id)
		require.NoError(t, err)
		require.Equal(t, want[i], ok, "Has of chunk %d", i)
	}
	got, err = s.HasMany(t.Context(), nil)
	require.NoError(t, err)
	require.Empty(t, got)
}

func testIterate(t *testing.T, s chunkstore.Store) {
	chunks := append(EdgeChunks()[:3], Chunks(2, 60)...)
	ids := putAll(t, s, chunks)
	require.NoError(t, s.Flush(t.Context()))
	want := map[chunk.ID]int{}
	for i, id := range ids {
		want[id] = len(chunks[i])
	}
	var seen []chunk.ID
	require.NoError(t, s.Iterate(t.Context(), func(id chunk.ID, info chunkstore.Info) error {
		plain, ok := want[id]
		require.True(t, ok, "unexpected chunk %s", id)
		require.Equal(t, plain, info.PlainLen, "chunk %s", id)
		require.True(t, info.Codec.Valid())
		require.GreaterOrEqual(t, info.StoredLen, 0)
		seen = append(seen, id)
		return nil
	}))
	require.Len(t, seen, len(want))
	sorted := slices.SortedFunc(slices.Values(seen), func(a, b chunk.ID) int { return bytes.Compare(a[:], b[:]) })
	require.Len(t, slices.Compact(sorted), len(seen), "Iterate repeated a chunk")
	// The order is stable (an encrypted store's is not by chunk ID).
	var again []chunk.ID
	require.NoError(t, s.Iterate(t.Context(), func(id chunk.ID, _ chunkstore.Info) error {
		again = append(again, id)
		return nil
	}))
	require.Equal(t, seen, again, "Iterate's order must be stable")
}

func testIterateStops(t *testing.T, s chunkstore.Store) {
	putAll(t, s, Chunks(3, 10))
	require.NoError(t, s.Flush(t.Context()))
	stop := errors.New("stop here")
	var n int
	err := s.Iterate(t.Context(), func(chunk.ID, chunkstore.Info) error {
		n++
		if n == 3 {
			return stop
		}
		return nil
	})
	require.ErrorIs(t, err, stop)
	require.Equal(t, 3, n)
}

func testIterateCancelled(t *testing.T, s chunkstore.Store) {
	const total = 10
	putAll(t, s, Chunks(4, total))
	require.NoError(t, s.Flush(t.Context()))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var n int
	err := s.Iterate(ctx, func(chunk.ID, chunkstore.Info) error {
		n++
		cancel()
		return nil
	})
	require.ErrorIs(t, err, context.Canceled)
	require.Less(t, n, total, "Iterate went on after its context was cancelled")
}

func testVerifyClean(t *testing.T, s chunkstore.Store) {
	chunks := append(EdgeChunks(), Chunks(5, 30)...)
	putAll(t, s, chunks)
	require.NoError(t, s.Flush(t.Context()))
	var plain int64
	for _, c := range chunks {
		plain += int64(len(c))
	}
	st, err := s.Verify(t.Context(), func(id chunk.ID, err error) {
		t.Errorf("Verify reported good chunk %s: %v", id, err)
	})
	require.NoError(t, err)
	require.Equal(t, chunkstore.VerifyStats{Chunks: len(chunks), PlainBytes: plain}, st)
}

// testConcurrent has several goroutines put their own chunks and a shared
// set (the same IDs from every goroutine), reading back as they go. Run it
// with -race.
func testConcurrent(t *testing.T, s chunkstore.Store) {
	const workers, perWorker = 8, 40
	r := rand.New(rand.NewPCG(6, 6))
	shared := make([][]byte, 20)
	for i := range shared {
		shared[i] = Text(r, 1000+r.IntN(64<<10))
	}
	own := make([][][]byte, workers)
	for w := range own {
		for range perWorker {
			if r.IntN(2) == 0 {
				own[w] = append(own[w], RandomBytes(r, 1+r.IntN(32<<10)))
			} else {
				own[w] = append(own[w], Text(r, 1+r.IntN(64<<10)))
			}
		}
	}
	g, ctx := errgroup.WithContext(t.Context())
	for w := range workers {
		g.Go(func() error {
			for i, data := range own[w] {
				if err := putGet(ctx, s, data); err != nil {
					return fmt.Errorf("worker %d chunk %d: %w", w, i, err)
				}
				if err := putGet(ctx, s, shared[(w+i)%len(shared)]); err != nil {
					return fmt.Errorf("worker %d shared chunk: %w", w, err)
				}
				if i%10 == 0 && w%2 == 0 {
					if err := s.Flush(ctx); err != nil {
						return err
					}
				}
				// Read another worker's chunks: they may or may not be
				// there yet, but must never be wrong.
				other := own[(w+1)%workers][i]
				got, err := s.Get(ctx, chunk.Sum(other), nil)
				if err == nil && !bytes.Equal(got, other) {
					return fmt.Errorf("worker %d read wrong content", w)
				}
				if err != nil && !errors.Is(err, chunk.ErrNotFound) {
					return err
				}
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	require.NoError(t, s.Flush(t.Context()))

	want := map[chunk.ID]bool{}
	for _, c := range shared {
		want[chunk.Sum(c)] = true
	}
	for _, cs := range own {
		for _, c := range cs {
			want[chunk.Sum(c)] = true
		}
	}
	var n int
	require.NoError(t, s.Iterate(t.Context(), func(id chunk.ID, _ chunkstore.Info) error {
		require.True(t, want[id])
		n++
		return nil
	}))
	require.Equal(t, len(want), n)
	st, err := s.Verify(t.Context(), nil)
	require.NoError(t, err)
	require.Equal(t, len(want), st.Chunks)
	require.Zero(t, st.Corrupt)
}

func putGet(ctx context.Context, s chunkstore.Store, data []byte) error {
	id := chunk.Sum(data)
	if err := s.Put(ctx, id, data); err != nil {
		return err
	}
	got, err := s.Get(ctx, id, nil)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("chunk %s read back wrong", id.Short())
	}
	return nil
}

func testCloseTwice(t *testing.T, s chunkstore.Store) {
	data := []byte("closing")
	require.NoError(t, s.Put(t.Context(), chunk.Sum(data), data))
	require.NoError(t, s.Close())
	require.NoError(t, s.Close())
}
