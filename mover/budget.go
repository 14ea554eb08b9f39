package mover

import (
	"context"
	"fmt"
	"sync"

	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/protocol"
)

// memBudget caps the bytes one kind of receiver state may hold, per peer
// and over all peers. It caps memory, not the size of a dump: state that
// waits for data (chunk positions) is taken on only as data arrives, and
// buffers are reserved only while they exist.
type memBudget struct {
	what    string // "chunk positions", "data streams", "transfers"
	perPeer int64
	total   int64

	mu    sync.Mutex // guards used, peers, wake
	used  int64
	peers map[PeerID]int64
	wake  chan struct{} // closed and replaced on every release
}

func newMemBudget(what string, perPeer, total int64) *memBudget {
	return &memBudget{what: what, perPeer: perPeer, total: total, peers: map[PeerID]int64{}, wake: make(chan struct{})}
}

// errBudget is matched by a refusal for lack of memory budget; it is
// retryable (busy): what other transfers hold is released as they end.
func (b *memBudget) errBudget(p PeerID, n int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return fmt.Errorf("%w: memory budget for %s exhausted: %s more wanted, this peer holds %s of %s, all peers %s of %s",
		protocol.ErrBusy, b.what, bytesize.Format(n), bytesize.Format(b.peers[p]), bytesize.Format(b.perPeer), bytesize.Format(b.used), bytesize.Format(b.total))
}

// tryAcquire reserves n bytes for p if they fit now.
func (b *memBudget) tryAcquire(p PeerID, n int64) bool {
	return b.tryAcquireBelow(p, n, b.perPeer)
}

// tryAcquireBelow reserves n bytes for p if p then holds at most limit
// (and the budget allows it): optional state leaves room for the rest.
func (b *memBudget) tryAcquireBelow(p PeerID, n, limit int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.peers[p]+n > min(limit, b.perPeer) || b.used+n > b.total {
		return false
	}
	b.peers[p] += n
	b.used += n
	return true
}

// acquire reserves n bytes for p, waiting for releases while canWait says
// that something will be released (nil: always). It fails at once for a
// request that can never fit, and when waiting can no longer help.
func (b *memBudget) acquire(ctx context.Context, p PeerID, n int64, canWait func() bool) error {
	if n > b.perPeer || n > b.total {
		return fmt.Errorf("%w: %s needs %s of memory, above the budget of %s per peer", protocol.ErrTooLarge, b.what, bytesize.Format(n), bytesize.Format(min(b.perPeer, b.total)))
	}
	for {
		b.mu.Lock()
		wake := b.wake
		b.mu.Unlock()
		if b.tryAcquire(p, n) {
			return nil
		}
		if canWait != nil && !canWait() {
			return b.errBudget(p, n)
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// release returns n bytes of p's reservation.
func (b *memBudget) release(p PeerID, n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.peers[p] -= n; b.peers[p] <= 0 {
		delete(b.peers, p)
	}
	close(b.wake)
	b.wake = make(chan struct{})
}

// held returns what p holds and what all peers hold.
func (b *memBudget) held(p PeerID) (peer, all int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peers[p], b.used
}

// Memory costs charged to the budgets, measured with the hostile tests
// (TestHostileMemoryBudget): what the receiver's heap grows by per unit.
const (
	// posCost is one chunk position waiting for its data: its entry in
	// the pending map.
	posCost = 160
	// fileCost is one file of a manifest, besides its path.
	fileCost = 400
	// transferCost is one open transfer: the receiver, its file cache, its
	// maps and channels, and its table of local copies.
	transferCost = 256<<10 + copyTableBytes
)

// streamCost is what one data stream of a transfer with chunks of at most
// maxChunk bytes may hold: its frame buffer and its decompression buffer.
func streamCost(maxChunk int) int64 {
	return 2*int64(maxChunk) + protocol.DataFrameOverhead
}
