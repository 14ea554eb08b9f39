package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/pgporter/pgporter/staging"
)

// corruptWatch remembers the repository chunks that failed verification
// while the mount read them. The mount can only answer EIO, and pg_dump
// then reports an I/O error on some table: explain adds which chunk of the
// repository is corrupt, which is what an operator has to act on.
type corruptWatch struct {
	mu    sync.Mutex // guards first, count
	first error      // the first corruption seen
	count int
}

// wrap returns chunks reporting its corruptions to w. A store behind a
// network stays a staging.LatencyReader: the mount reads ahead by its RTT.
func (w *corruptWatch) wrap(chunks staging.ChunkReader) staging.ChunkReader {
	wc := &watchedChunks{ChunkReader: chunks, w: w}
	if lr, ok := chunks.(staging.LatencyReader); ok {
		return &watchedRemoteChunks{watchedChunks: wc, rtt: lr.RTT}
	}
	return wc
}

type watchedRemoteChunks struct {
	*watchedChunks
	rtt func() time.Duration
}

func (c *watchedRemoteChunks) RTT() time.Duration { return c.rtt() }

type watchedChunks struct {
	staging.ChunkReader
	w *corruptWatch
}

func (c *watchedChunks) Get(ctx context.Context, id chunk.ID, dst []byte) ([]byte, error) {
	b, err := c.ChunkReader.Get(ctx, id, dst)
	if err != nil {
		ce, local := errors.AsType[*chunk.CorruptChunkError](err)
		if local || errors.Is(err, protocol.ErrCorrupt) {
			c.w.mu.Lock()
			if c.w.first == nil {
				c.w.first = err
				if !local || ce.ID != id { // name the chunk once
					c.w.first = fmt.Errorf("chunk %s: %w", id, err)
				}
			}
			c.w.count++
			c.w.mu.Unlock()
		}
	}
	return b, err
}

// explain prefixes err, if not nil, with the corruption seen, if any.
func (w *corruptWatch) explain(err error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil || w.first == nil {
		return err
	}
	return fmt.Errorf("the repository holds corrupt data (%d failed reads; first: %v); the export cannot be made from this restore point: %w", w.count, w.first, err)
}
