package staging

import (
	"sync"
	"time"
)

// LatencyReader is a ChunkReader whose Gets wait for a round trip over a
// network (mover.RemoteRepo). A mount of one reads ahead of a sequential
// reader by the round trip times the rate the mount serves reads at, so
// that a link's bandwidth × delay is in flight, rather than by the fixed
// count of chunks that suits a local store.
type LatencyReader interface {
	ChunkReader
	// RTT returns the current round-trip time to the store, 0 while it is
	// not known. It must be cheap: the mount calls it on every read.
	RTT() time.Duration
}

// Readahead of a mount over a LatencyReader.
const (
	// aheadGain multiplies RTT × rate: with exactly that much in flight,
	// reads would go no faster than they go now, so the window could never
	// grow. With twice that, it grows until the link, not the window,
	// limits the rate.
	aheadGain = 2
	// rateWindow is the shortest interval the read rate is measured over.
	rateWindow = 20 * time.Millisecond
	// aheadChunk is the chunk size the bound on a mount's background
	// fetches assumes: it allows MaxReadaheadBytes/aheadChunk of them, at
	// least maxPrefetch and at most maxLatencyPrefetch. Fetches past the
	// bound are not started (the next read asks again), so the bound must
	// not cut the window short for chunks of the usual size (64 KiB).
	aheadChunk         = 32 << 10
	maxLatencyPrefetch = 1024
)

// latencyPrefetch is the bound on background fetches of a mount over a
// LatencyReader that reads up to maxAhead bytes ahead.
func latencyPrefetch(maxAhead int64) int {
	return int(min(max(maxAhead/aheadChunk, maxPrefetch), maxLatencyPrefetch))
}

// rateMeter measures the rate a mount serves reads at, smoothed over
// intervals of at least rateWindow.
type rateMeter struct {
	mu    sync.Mutex // guards start, bytes, rate
	start time.Time  // of the interval being measured
	bytes int64      // served since start
	rate  float64    // bytes per second; 0 until the first interval ends
}

// add counts n bytes served at now.
func (m *rateMeter) add(now time.Time, n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.start.IsZero() {
		m.start = now
	}
	m.bytes += n
	d := now.Sub(m.start)
	if d < rateWindow {
		return
	}
	r := float64(m.bytes) / d.Seconds()
	if m.rate == 0 {
		m.rate = r
	} else {
		m.rate = (m.rate + r) / 2
	}
	m.start, m.bytes = now, 0
}

// get returns the rate in bytes per second.
func (m *rateMeter) get() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rate
}

// aheadBytes is how many bytes a mount over a store rtt away keeps in
// flight ahead of a sequential reader served at rate bytes per second: gain
// × rtt × rate, at most max.
func aheadBytes(rtt time.Duration, rate float64, max int64) int64 {
	b := aheadGain * rtt.Seconds() * rate
	if b >= float64(max) {
		return max
	}
	return int64(b)
}
