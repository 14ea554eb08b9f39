package staging

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// TestChunkCachePinning guards the recycling of chunk buffers: an entry
// evicted while a reader holds it must keep its content until the reader
// releases it, and only then go back to the pool.
func TestChunkCachePinning(t *testing.T) {
	const size = 64 << 10
	var wg sync.WaitGroup
	defer wg.Wait()
	c := newChunkCache(2*size, &wg)
	ctx := context.Background()
	fetches := map[byte]int{}
	var mu sync.Mutex
	fetch := func(b byte) chunkFetch {
		return func(context.Context) ([]byte, *[]byte, error) {
			mu.Lock()
			fetches[b]++
			mu.Unlock()
			bp := c.bufs.get(size)
			*bp = append((*bp)[:0], bytes.Repeat([]byte{b}, size)...)
			return *bp, bp, nil
		}
	}
	id := func(b byte) chunk.ID { return chunk.ID{b} }

	a, err := c.get(ctx, ctx, id('a'), fetch('a'))
	require.NoError(t, err)
	for _, b := range []byte("bcd") { // evicts a, pinned
		e, err := c.get(ctx, ctx, id(b), fetch(b))
		require.NoError(t, err)
		c.release(e)
	}
	require.False(t, c.has(id('a')), "a should be evicted")
	c.mu.Lock()
	require.True(t, a.gone)
	require.NotNil(t, a.buf, "a pinned entry's buffer was freed")
	c.mu.Unlock()
	require.Equal(t, bytes.Repeat([]byte{'a'}, size), a.data)
	c.release(a)
	c.mu.Lock()
	require.Nil(t, a.buf, "an unpinned evicted entry's buffer was not freed")
	require.Nil(t, a.data)
	c.mu.Unlock()

	// A cached entry is served without fetching again; an evicted one is
	// fetched again.
	d, err := c.get(ctx, ctx, id('d'), fetch('d'))
	require.NoError(t, err)
	require.Equal(t, byte('d'), d.data[0])
	c.release(d)
	a, err = c.get(ctx, ctx, id('a'), fetch('a'))
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{'a'}, size), a.data)
	c.release(a)
	mu.Lock()
	require.Equal(t, map[byte]int{'a': 2, 'b': 1, 'c': 1, 'd': 1}, fetches)
	mu.Unlock()

	// Failures are not cached.
	bad := errors.New("boom")
	_, err = c.get(ctx, ctx, id('x'), func(context.Context) ([]byte, *[]byte, error) { return nil, nil, bad })
	require.ErrorIs(t, err, bad)
	require.False(t, c.has(id('x')))
}

func TestChunkBufClasses(t *testing.T) {
	p := newBufPool(1 << 20)
	for _, n := range []int{1, 4096, 4097, 16 << 10, 65536 + 1, 256 << 10, chunk.MaxChunkCeil} {
		bp := p.get(n)
		require.GreaterOrEqual(t, cap(*bp), n)
		require.LessOrEqual(t, cap(*bp), max(4096, n*5/4+1), "size class for %d too large", n)
		require.Empty(t, *bp)
		*bp = append(*bp, 1)
		p.put(bp)
		require.LessOrEqual(t, p.bytes, p.max)
	}
	// A buffer put back is the next one got of its class, emptied.
	bp := p.get(70 << 10)
	p.put(bp)
	again := p.get(70 << 10)
	require.Same(t, bp, again)
	require.Empty(t, *again)
}
