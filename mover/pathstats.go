package mover

import (
	"context"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// PathStats are quic-go's figures for the connections of one send: on a
// long or lossy link they say whether the congestion window, the round
// trip or the loss limits the transfer. Counts add up over the connections
// of every attempt; the RTTs are the last connection's.
type PathStats struct {
	Connections       int     `json:"connections"`
	MinRTTMillis      float64 `json:"min_rtt_ms"`
	SmoothedRTTMillis float64 `json:"srtt_ms"`
	// CwndMean and CwndMax are the congestion window in bytes, sampled
	// every pathSampleEvery while the connections were open.
	CwndMean    uint64 `json:"cwnd_mean"`
	CwndMax     uint64 `json:"cwnd_max"`
	PacketsSent uint64 `json:"packets_sent"`
	PacketsLost uint64 `json:"packets_lost"`
	BytesSent   uint64 `json:"bytes_sent"`
	BytesLost   uint64 `json:"bytes_lost"`
	// Repaired counts the connections whose datagrams were framed for
	// loss repair (protocol 11), in groups of RepairGroup datagrams.
	Repaired    int `json:"repaired_connections,omitempty"`
	RepairGroup int `json:"repair_group,omitempty"`
	// PreDialled counts the joined connections that were dialled ahead of
	// their join (the early join's, and the spares after it), so that
	// joining took one round trip, not a handshake and a Hello more.
	PreDialled int `json:"predialled_connections,omitempty"`
}

const pathSampleEvery = 250 * time.Millisecond

// pathRecorder gathers PathStats from the connections of a send.
type pathRecorder struct {
	mu      sync.Mutex // guards st, cwndSum, samples
	st      PathStats
	cwndSum uint64
	samples uint64
}

// watch samples conn's congestion window until ctx ends, then adds its
// totals.
func (r *pathRecorder) watch(ctx context.Context, conn *quic.Conn) {
	t := time.NewTicker(pathSampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			r.add(conn.ConnectionStats())
			return
		case <-t.C:
			cs := conn.ConnectionStats()
			r.mu.Lock()
			r.cwndSum += cs.CongestionWindow
			r.samples++
			r.st.CwndMax = max(r.st.CwndMax, cs.CongestionWindow)
			r.mu.Unlock()
		}
	}
}

// repaired notes a connection framed for loss repair in groups of k.
func (r *pathRecorder) repaired(k int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.Repaired++
	r.st.RepairGroup = k
}

// predialled counts a joined connection that was dialled ahead.
func (r *pathRecorder) predialled() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.PreDialled++
}

func (r *pathRecorder) add(cs quic.ConnectionStats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.Connections++
	r.st.MinRTTMillis = float64(cs.MinRTT.Microseconds()) / 1000
	r.st.SmoothedRTTMillis = float64(cs.SmoothedRTT.Microseconds()) / 1000
	r.st.CwndMax = max(r.st.CwndMax, cs.CongestionWindow)
	r.st.PacketsSent += cs.PacketsSent
	r.st.PacketsLost += cs.PacketsLost
	r.st.BytesSent += cs.BytesSent
	r.st.BytesLost += cs.BytesLost
}

// result returns the stats so far, nil if no connection was watched.
func (r *pathRecorder) result() *PathStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st.Connections == 0 {
		return nil
	}
	st := r.st
	if r.samples > 0 {
		st.CwndMean = r.cwndSum / r.samples
	}
	return &st
}
