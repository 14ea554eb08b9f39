package mover

import (
	"context"
	"github.com/pgporter/pgporter/protocol"
	"sync"
)

// job is one chunk of one source file to send.
type job struct {
	file, chunk uint32
	ref         protocol.ChunkRef
	off         int64
}

// jobQueue is an unbounded FIFO of chunks to send, filled by the control
// reader (which must never block on it) and drained by the data workers.
type jobQueue struct {
	mu      sync.Mutex // guards items, closed, drained; signals cond
	cond    *sync.Cond
	items   []job
	closed  bool
	drained chan struct{} // closed once the queue is closed and empty
}

func newJobQueue() *jobQueue {
	q := &jobQueue{drained: make(chan struct{})}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// markDrained closes drained if every job was popped; q.mu is held.
func (q *jobQueue) markDrained() {
	if q.closed && len(q.items) == 0 {
		select {
		case <-q.drained:
		default:
			close(q.drained)
		}
	}
}

func (q *jobQueue) push(js ...job) {
	q.mu.Lock()
	q.items = append(q.items, js...)
	q.mu.Unlock()
	q.cond.Broadcast()
}

// close says no more jobs will be pushed.
func (q *jobQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.markDrained()
	q.mu.Unlock()
	q.cond.Broadcast()
}

// pop returns the next job; ok is false once the queue is closed and empty or
// ctx is done.
func (q *jobQueue) pop(ctx context.Context) (job, bool) {
	stop := context.AfterFunc(ctx, func() {
		q.mu.Lock()
		q.cond.Broadcast()
		q.mu.Unlock()
	})
	defer stop()
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 && !q.closed && ctx.Err() == nil {
		q.cond.Wait()
	}
	if len(q.items) == 0 || ctx.Err() != nil {
		return job{}, false
	}
	j := q.items[0]
	q.items = q.items[1:]
	if len(q.items) == 0 {
		q.items = nil // let a large drained backing array go
		q.markDrained()
	}
	return j, true
}
