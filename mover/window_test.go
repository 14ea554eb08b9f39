package mover

import (
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

func TestWindowCeiling(t *testing.T) {
	for _, c := range []struct {
		name string
		rate float64
		srtt time.Duration
		want uint64
	}{
		{"no rate yet", 0, 40 * time.Millisecond, windowFloor},
		{"100 Mbit/s, 40 ms: the floor", 12.5e6, 40 * time.Millisecond, windowFloor},
		{"800 MB/s, 25 ms", 800e6, 25 * time.Millisecond, 40e6},
		{"10 Gbit/s, 100 ms: the ceiling", 1.25e9, 100 * time.Millisecond, maxConnectionWindow},
	} {
		t.Run(c.name, func(t *testing.T) {
			require.Equal(t, c.want, windowCeiling(c.rate, c.srtt))
		})
	}
}

// TestWindowGrowth: a connection's receive window grows past the floor only
// as fast as its measured rate × RTT says, within half the peer's
// data-stream budget, and what it held is released when it ends. Guards
// against a sender making the receiver buffer 128 MiB per connection
// whatever its budget.
func TestWindowGrowth(t *testing.T) {
	var peer, other PeerID
	peer[0], other[0] = 1, 2
	budget := newMemBudget("data streams", 64<<20, 1<<30)
	w := newWindows(budget)
	conn, untracked := new(quic.Conn), new(quic.Conn)
	now := time.Now()
	w.track(conn, peer, now)
	srtt := 100 * time.Millisecond

	require.False(t, w.grow(untracked, 8<<20, 0, srtt, now), "a connection not tracked grew")
	// 8 -> 16 MiB: the floor, whatever the rate.
	now = now.Add(time.Second)
	require.True(t, w.grow(conn, 8<<20, 1<<20, srtt, now))
	// 16 -> 32 MiB at 10 MB/s: twice the BDP is 2 MB, below the floor.
	now = now.Add(time.Second)
	require.False(t, w.grow(conn, 16<<20, 1<<20+10e6, srtt, now))
	// At 1 GB/s it may: 2 × 1 GB/s × 100 ms is above 32 MiB.
	now = now.Add(time.Second)
	require.True(t, w.grow(conn, 16<<20, 1<<20+10e6+1e9, srtt, now))
	held, _ := budget.held(peer)
	require.Equal(t, int64(24<<20), held)
	// 32 -> 64 MiB would hold 56 MiB, above half the peer's 64 MiB.
	now = now.Add(time.Second)
	require.False(t, w.grow(conn, 32<<20, 1<<20+10e6+2e9, srtt, now))
	// Another peer's budget is its own.
	c2 := new(quic.Conn)
	w.track(c2, other, now)
	require.True(t, w.grow(c2, 8<<20, 0, srtt, now))

	w.release(conn)
	held, _ = budget.held(peer)
	require.Zero(t, held, "the window's growth was not released with the connection")
	require.False(t, w.grow(conn, 8<<20, 0, srtt, now), "an ended connection grew")
	w.release(c2)
	_, all := budget.held(other)
	require.Zero(t, all)
}
