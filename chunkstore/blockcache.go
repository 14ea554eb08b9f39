package chunkstore

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/pgporter/pgporter/chunkstore/objstore"
)

// A store on a Remote reads packs by aligned blocks of blockSize bytes,
// each one ranged GET, kept in a bounded LRU cache: a sequential reader
// (a mount, an export's pg_dump, a check) costs one request per block, not
// one per chunk; each request costs the client and the server far more CPU
// than the bytes it carries. A lone read of one record costs a block's
// transfer, which on the links an object store is reached over is about
// the price of the request itself.
const (
	blockSize = 2 << 20
	// DefaultBlockCacheBytes is LocalOptions.BlockCacheBytes's default.
	DefaultBlockCacheBytes = 32 << 20
	// readAheadBlocks is how many blocks a sequential reader has
	// requested ahead of the one it reads: 8 MiB, a quarter of the default
	// cache. Requests in flight hide each other's latency: one alone
	// would hide only the reader's own work on a block.
	readAheadBlocks = 4
)

// blockCache holds blocks of packs read from the object store, in memory
// and, under that, on disk (blockdisk.go). Concurrent reads of one block
// make one request.
type blockCache struct {
	b       objstore.Backend
	max     int64
	group   singleflight.Group
	fetched func(time.Duration) // called with each block fetch's duration
	disk    *diskBlocks         // the tier under this one; nil: none
	aheads  sync.WaitGroup      // fetches no reader waits for: read-aheads, and those their readers left
	stop    context.Context     // ends every fetch at close
	cancel  context.CancelFunc
	// noReadAhead turns readAhead off, for BenchmarkRemoteVerifyLatency.
	noReadAhead bool

	mu    sync.Mutex // guards the fields below
	lru   *list.List // of *block, most recently used first
	byKey map[blockKey]*list.Element
	bytes int64
	sizes map[uint64]int64  // pack sizes, by Stat: packs never change
	ahead map[blockKey]bool // blocks being read ahead
}

type blockKey struct {
	pack uint64
	n    int64 // block number: offset / blockSize
}

type block struct {
	key  blockKey
	data []byte
	disk bool // read from the disk tier, not the bucket
}

func newBlockCache(b objstore.Backend, max int64) *blockCache {
	c := &blockCache{b: b, max: max, lru: list.New(), byKey: map[blockKey]*list.Element{}, sizes: map[uint64]int64{}, ahead: map[blockKey]bool{}}
	c.stop, c.cancel = context.WithCancel(context.Background())
	return c
}

// close ends the fetches in flight and waits for those no reader waits
// for (read-aheads, and fetches their readers left): none outlives the
// store.
func (c *blockCache) close() {
	c.cancel()
	c.aheads.Wait()
}

// readAt fills p with the bytes of pack n at off. A pack that is gone
// gives an error matching fs.ErrNotExist; a range past its end, one
// matching objstore.ErrRange.
func (c *blockCache) readAt(ctx context.Context, n uint64, p []byte, off int64) error {
	size, err := c.packSize(ctx, n, off)
	if err != nil {
		return err
	}
	if off < 0 || off+int64(len(p)) > size {
		return fmt.Errorf("reading pack %s: %w: %d bytes at %d of %d", packName(n), objstore.ErrRange, len(p), off, size)
	}
	for len(p) > 0 {
		k := blockKey{pack: n, n: off / blockSize}
		data, err := c.block(ctx, k, size)
		if err != nil {
			return err
		}
		m := copy(p, data[off-k.n*blockSize:])
		p, off = p[m:], off+int64(m)
		c.readAhead(ctx, k, off-k.n*blockSize, size)
	}
	return nil
}

// readAhead starts fetching the readAheadBlocks blocks after k, which a
// read has just reached pos bytes into, if the reader reads the pack in
// order: it read the block before k too, or has gone through half of the
// pack's first block. Their requests then overlap the reader's work on
// this one (decompressing, hashing), where the client and the server
// would otherwise take turns, and each other's latency: a reader that
// jumps about costs at most the blocks it does not use.
func (c *blockCache) readAhead(ctx context.Context, k blockKey, pos, size int64) {
	if c.noReadAhead || (k.n+1)*blockSize >= size {
		return
	}
	bucket := bucketOnly(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, prev := c.byKey[blockKey{pack: k.pack, n: k.n - 1}]; !prev && !(k.n == 0 && pos >= blockSize/2) {
		return
	}
	// At most half the cache: blocks read ahead must not evict the one
	// being read, nor each other before their reader comes.
	depth := min(readAheadBlocks, c.max/blockSize/2)
	for i := int64(1); i <= depth && (k.n+i)*blockSize < size; i++ {
		next := blockKey{pack: k.pack, n: k.n + i}
		if _, have := c.byKey[next]; have || c.ahead[next] {
			continue
		}
		c.ahead[next] = true
		// No reader waits for it: one that wants the block joins the
		// flight.
		ch := c.group.DoChan(c.flightKey(next, bucket), c.fetch(c.stop, next, size, bucket))
		c.aheads.Go(func() {
			<-ch
			c.mu.Lock()
			delete(c.ahead, next)
			c.mu.Unlock()
		})
	}
}

// flightKey names the fetch of block k in c.group.
func (c *blockCache) flightKey(k blockKey, bucket bool) string {
	key := fmt.Sprintf("%x/%d", k.pack, k.n)
	if bucket {
		key += "/bucket"
	}
	return key
}

// block returns block k of a pack of size bytes, from the cache or the
// store. The slice is shared: never written.
func (c *blockCache) block(ctx context.Context, k blockKey, size int64) ([]byte, error) {
	bucket := bucketOnly(ctx)
	if data := c.cached(k, bucket); data != nil {
		return data, nil
	}
	// The fetch is shared by every reader of the block meanwhile, so no
	// one reader's context ends it (objstore bounds its retries), but
	// close does; each reader stops waiting when its own context ends.
	ch := c.group.DoChan(c.flightKey(k, bucket), c.fetch(c.stop, k, size, bucket))
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.([]byte), nil
	case <-ctx.Done():
		// The flight goes on without this reader: close waits for it.
		c.aheads.Go(func() { <-ch })
		return nil, ctx.Err()
	}
}

// fetch returns the flight that reads block k of a pack of size bytes,
// from the disk tier or the store, into the cache.
func (c *blockCache) fetch(ctx context.Context, k blockKey, size int64, bucket bool) func() (any, error) {
	return func() (any, error) {
		// A flight that ended just before this one began has cached it.
		if data := c.cached(k, bucket); data != nil {
			return data, nil
		}
		if c.disk != nil && !bucket {
			if data, _, ok := c.disk.get(k, size); ok {
				c.add(&block{key: k, data: data, disk: true})
				return data, nil
			}
		}
		start := k.n * blockSize
		n := min(blockSize, size-start)
		t := time.Now()
		data, err := c.b.GetRange(ctx, packObject(k.pack), start, n, make([]byte, 0, n))
		if err == nil && c.fetched != nil {
			c.fetched(time.Since(t))
		}
		if errors.Is(err, objstore.ErrNotFound) {
			return nil, fmt.Errorf("reading pack %s: %w", packName(k.pack), fs.ErrNotExist)
		}
		if err != nil {
			return nil, err
		}
		if c.disk != nil && !bucket {
			c.disk.put(k, size, data)
		}
		c.add(&block{key: k, data: data})
		return data, nil
	}
}

// cached returns block k if the cache holds it, nil if not; with bucket
// set, only if it came from the bucket.
func (c *blockCache) cached(k blockKey, bucket bool) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[k]; ok && !(bucket && e.Value.(*block).disk) {
		c.lru.MoveToFront(e)
		return e.Value.(*block).data
	}
	return nil
}

func (c *blockCache) add(b *block) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[b.key]; ok {
		if old := e.Value.(*block); old.disk && !b.disk {
			e.Value = b // the bucket's bytes, as a check wants them
		}
		return
	}
	c.byKey[b.key] = c.lru.PushFront(b)
	c.bytes += int64(len(b.data))
	for c.bytes > c.max && c.lru.Len() > 1 {
		old := c.lru.Remove(c.lru.Back()).(*block)
		delete(c.byKey, old.key)
		c.bytes -= int64(len(old.data))
	}
}

// forget drops the blocks of pack n, removed from the bucket, from the
// disk tier of this host; other hosts' go when they are evicted.
func (c *blockCache) forget(n uint64) {
	if c.disk != nil {
		c.disk.forget(n)
	}
}

// bucketOnlyKey marks a context whose reads must reach the bucket.
type bucketOnlyKey struct{}

// withBucketOnly returns ctx whose reads skip the disk tier, and the
// blocks the memory tier holds from it: a check of the repository checks
// what the bucket holds, not this host's copy of it. Nor do its reads,
// of every pack, evict the blocks the host's readers use.
func withBucketOnly(ctx context.Context) context.Context {
	return context.WithValue(ctx, bucketOnlyKey{}, true)
}

func bucketOnly(ctx context.Context) bool {
	v, _ := ctx.Value(bucketOnlyKey{}).(bool)
	return v
}

// packSize returns the size of pack n, asking the store once, or none:
// the file of the block at off, if the disk tier holds it, says it (and
// that block goes into the memory tier, where the read finds it).
func (c *blockCache) packSize(ctx context.Context, n uint64, off int64) (int64, error) {
	c.mu.Lock()
	size, ok := c.sizes[n]
	c.mu.Unlock()
	if ok {
		return size, nil
	}
	if c.disk != nil && off >= 0 && !bucketOnly(ctx) {
		k := blockKey{pack: n, n: off / blockSize}
		if data, size, ok := c.disk.get(k, -1); ok {
			c.add(&block{key: k, data: data, disk: true})
			c.mu.Lock()
			c.sizes[n] = size
			c.mu.Unlock()
			return size, nil
		}
	}
	size, err := c.b.Stat(ctx, packObject(n))
	if errors.Is(err, objstore.ErrNotFound) {
		return 0, fmt.Errorf("reading pack %s: %w", packName(n), fs.ErrNotExist)
	}
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.sizes[n] = size
	c.mu.Unlock()
	return size, nil
}
