package chunkstore

import (
	"bytes"
	"context"
	"io/fs"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/objstore"
)

// countingBackend counts the ranged reads that reach the store.
type countingBackend struct {
	objstore.Backend
	ranges atomic.Int64
	stats  atomic.Int64
}

func (c *countingBackend) GetRange(ctx context.Context, name string, off, n int64, dst []byte) ([]byte, error) {
	c.ranges.Add(1)
	return c.Backend.GetRange(ctx, name, off, n, dst)
}

func (c *countingBackend) Stat(ctx context.Context, name string) (int64, error) {
	c.stats.Add(1)
	return c.Backend.Stat(ctx, name)
}

// Reads of any range of a pack, across block boundaries and at its end,
// give the pack's bytes; a sequential read costs one request per block and
// one Stat per pack; concurrent readers of one block share its request; the
// cache stays within its bound; a range past the end and a missing pack
// are errors of their own kinds.
func TestBlockCache(t *testing.T) {
	d, err := objstore.OpenDir(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 2))
	pack := make([]byte, 3*blockSize+12345)
	for i := range pack {
		pack[i] = byte(r.Uint32())
	}
	const n = 1<<63 | 7
	require.NoError(t, d.PutIfAbsent(ctx, packObject(n), bytes.NewReader(pack), int64(len(pack))))
	b := &countingBackend{Backend: d}
	c := newBlockCache(b, 2*blockSize)

	// Sequential, in records of 70,000 bytes: every block once.
	for off := 0; off < len(pack); off += 70_000 {
		p := make([]byte, min(70_000, len(pack)-off))
		require.NoError(t, c.readAt(ctx, n, p, int64(off)))
		require.True(t, bytes.Equal(pack[off:off+len(p)], p), "at %d", off)
	}
	c.aheads.Wait()
	require.EqualValues(t, 4, b.ranges.Load(), "one request per block: a block read ahead is not read again")
	require.EqualValues(t, 1, b.stats.Load(), "one Stat per pack")
	require.LessOrEqual(t, c.bytes, int64(2*blockSize), "the cache keeps its bound")

	// A cache of 16 blocks reads 4 ahead: the whole pack at once.
	c = newBlockCache(b, 16*blockSize)
	before0 := b.ranges.Load()
	require.NoError(t, c.readAt(ctx, n, make([]byte, 100), blockSize/2+1000))
	c.aheads.Wait()
	require.Equal(t, int64(4), b.ranges.Load()-before0, "blocks 1 to 3 read ahead")
	for i := range int64(4) {
		require.NotNil(t, c.cached(blockKey{pack: n, n: i}, false), "block %d", i)
	}

	// Random ranges, some across two or three blocks.
	for range 200 {
		off := r.IntN(len(pack))
		p := make([]byte, r.IntN(min(len(pack)-off, 2*blockSize+1)))
		require.NoError(t, c.readAt(ctx, n, p, int64(off)))
		require.True(t, bytes.Equal(pack[off:off+len(p)], p), "at %d, %d bytes", off, len(p))
	}

	c.aheads.Wait()

	// A read in the first half of a pack's first block reads no further
	// ahead; one past its half, and one of the block after a block read,
	// read ahead (here one block: half the cache).
	c = newBlockCache(b, 2*blockSize)
	before := b.ranges.Load()
	require.NoError(t, c.readAt(ctx, n, make([]byte, 100), 1000))
	c.aheads.Wait()
	require.Equal(t, int64(1), b.ranges.Load()-before, "no read-ahead for a lone read")
	require.NoError(t, c.readAt(ctx, n, make([]byte, 100), blockSize/2+1000))
	c.aheads.Wait()
	require.Equal(t, int64(2), b.ranges.Load()-before, "block 1 read ahead")
	require.NotNil(t, c.cached(blockKey{pack: n, n: 1}, false))
	require.NoError(t, c.readAt(ctx, n, make([]byte, 100), blockSize+10))
	c.aheads.Wait()
	require.Equal(t, int64(3), b.ranges.Load()-before, "block 2 read ahead, block 1 not read again")
	require.NotNil(t, c.cached(blockKey{pack: n, n: 2}, false))

	// Eight readers of one block not cached: one request.
	c = newBlockCache(b, 2*blockSize)
	before = b.ranges.Load()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			p := make([]byte, 100)
			if err := c.readAt(ctx, n, p, blockSize+10); err != nil || !bytes.Equal(p, pack[blockSize+10:blockSize+110]) {
				t.Errorf("concurrent read: %v", err)
			}
		})
	}
	wg.Wait()
	require.Equal(t, int64(1), b.ranges.Load()-before, "concurrent readers share one request")

	err = c.readAt(ctx, n, make([]byte, 10), int64(len(pack)-5))
	require.ErrorIs(t, err, objstore.ErrRange)
	err = c.readAt(ctx, 1<<63|8, make([]byte, 10), 0)
	require.ErrorIs(t, err, fs.ErrNotExist)

	// A reader whose context ends stops waiting.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err = newBlockCache(b, blockSize).readAt(cctx, n, make([]byte, 10), 0)
	require.ErrorIs(t, err, context.Canceled)
}

// gatedBackend holds each ranged read until open is closed or the read's
// context ends, and counts the reads in progress.
type gatedBackend struct {
	objstore.Backend
	entered  chan struct{} // a send for each ranged read that begins, if there is room
	open     chan struct{}
	inFlight atomic.Int64
}

func (g *gatedBackend) GetRange(ctx context.Context, name string, off, n int64, dst []byte) ([]byte, error) {
	g.inFlight.Add(1)
	defer g.inFlight.Add(-1)
	select {
	case g.entered <- struct{}{}:
	default:
	}
	select {
	case <-g.open:
	case <-ctx.Done():
		return dst, ctx.Err()
	}
	return g.Backend.GetRange(ctx, name, off, n, dst)
}

// Regression: a block's fetch, which no one reader's context ends, went on
// after the reader that started it gave up and after Close returned,
// reading the bucket (for up to the retries' two minutes, or for ever from
// a server that stalls) and then writing into the cache of a closed store.
// Close ends it and waits for it.
func TestRemoteCloseEndsAbandonedFetch(t *testing.T) {
	d, err := objstore.OpenDir(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	data := bytes.Repeat([]byte("pgporter block fetch "), 1000)
	id := chunk.Sum(data)
	w, err := OpenLocal(t.TempDir(), LocalOptions{Remote: d})
	require.NoError(t, err)
	require.NoError(t, w.Put(context.Background(), id, data))
	require.NoError(t, w.Close())

	g := &gatedBackend{Backend: d, entered: make(chan struct{}, 1), open: make(chan struct{})}
	defer close(g.open) // on main, the fetch is still waiting: let it go
	r, err := OpenLocal(t.TempDir(), LocalOptions{Remote: g, DiskCacheBytes: -1})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := r.Get(ctx, id, nil)
		errc <- err
	}()
	<-g.entered
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	require.NoError(t, r.Close())
	require.Zero(t, g.inFlight.Load(), "no read of the bucket outlives Close")
}
