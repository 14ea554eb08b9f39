package mover

import (
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Receive windows sized to the link (step 4.2 of docs/design/0005). quic-go
// doubles a connection's receive window, up to maxConnectionWindow, when the
// application reads it faster than a few round trips allow. What the window
// grows to is memory a sender can make the receiver buffer, so a mover grows
// it only while it stays under twice the bandwidth-delay product it measures
// (never below windowFloor), and only as far as the peer's data-stream
// budget grants the growth. Windows already granted are released when the
// connection ends.

// windowFloor is the window every connection may grow to, whatever its
// measured rate: 1 Gbit/s across 130 ms, enough before a rate is known.
const windowFloor = 16 << 20

// windowCeiling is the largest connection window worth having for a link
// that delivers rate bytes per second with round trip srtt: twice its
// bandwidth-delay product, at least windowFloor, at most
// maxConnectionWindow.
func windowCeiling(rate float64, srtt time.Duration) uint64 {
	bdp := uint64(2 * rate * srtt.Seconds())
	return min(max(bdp, windowFloor), maxConnectionWindow)
}

// connWindow is what one connection's window growth holds.
type connWindow struct {
	peer    PeerID
	window  uint64 // the connection's receive window now
	granted int64  // of the peer's streams budget, for growth past the initial window

	lastAt    time.Time // the previous rate sample
	lastBytes uint64
}

// windows tracks the connections of a server whose window may grow.
type windows struct {
	budget *memBudget // the peers' data-stream budget

	mu    sync.Mutex // guards conns
	conns map[*quic.Conn]*connWindow
}

func newWindows(budget *memBudget) *windows {
	return &windows{budget: budget, conns: map[*quic.Conn]*connWindow{}}
}

// track starts charging conn's window growth to peer.
func (w *windows) track(conn *quic.Conn, peer PeerID, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.conns[conn] = &connWindow{peer: peer, window: initialConnectionWindow, lastAt: now}
}

// release returns what conn's window growth held.
func (w *windows) release(conn *quic.Conn) {
	w.mu.Lock()
	cw := w.conns[conn]
	delete(w.conns, conn)
	w.mu.Unlock()
	if cw != nil {
		w.budget.release(cw.peer, cw.granted)
	}
}

// allow is quic.Config.AllowConnectionWindowIncrease: quic-go asks to grow
// conn's window by delta.
func (w *windows) allow(conn *quic.Conn, delta uint64) bool {
	cs := conn.ConnectionStats()
	return w.grow(conn, delta, cs.BytesReceived, cs.SmoothedRTT, time.Now())
}

// grow decides a growth of conn's window by delta, given the bytes conn
// received so far and its smoothed RTT: under the ceiling the rate since the
// previous decision allows, and within the peer's budget. A connection not
// tracked (still in its handshake, or ended) does not grow.
func (w *windows) grow(conn *quic.Conn, delta, received uint64, srtt time.Duration, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	cw := w.conns[conn]
	if cw == nil {
		return false
	}
	rate := 0.0
	if d := now.Sub(cw.lastAt); d > 0 && received > cw.lastBytes {
		rate = float64(received-cw.lastBytes) / d.Seconds()
	}
	cw.lastAt, cw.lastBytes = now, received
	if cw.window+delta > windowCeiling(rate, srtt) {
		return false
	}
	// At most half the peer's data-stream budget: the streams' own buffers
	// need the rest.
	if !w.budget.tryAcquireBelow(cw.peer, int64(delta), w.budget.perPeer/2) {
		return false
	}
	cw.granted += int64(delta)
	cw.window += delta
	return true
}
