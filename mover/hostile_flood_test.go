package mover

import (
	"context"
	"testing"
	"time"

	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// TestHostileConnectionFlood: one peer may hold MaxConnsPerPeer connections;
// more are refused with a reason, other peers are not affected, a closed
// connection frees its slot, and a connection carries a bounded number of
// streams.
func TestHostileConnectionFlood(t *testing.T) {
	const limit = 4
	r := startReceiver(t, ServerOptions{MaxConnsPerPeer: limit})
	ctx := context.Background()
	m := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "flood", Perms: PermSend, Added: time.Now()}))
	var conns []*quic.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.CloseWithError(0, "")
		}
	})
	for range limit {
		conn, _, err := dialMover(ctx, r.addr, m.id, r.id.ID, 0)
		require.NoError(t, err)
		conns = append(conns, conn)
	}
	for range 3 {
		conn, _, err := dialMover(ctx, r.addr, m.id, r.id.ID, 0)
		if err == nil {
			conn.CloseWithError(0, "")
		}
		require.ErrorContains(t, err, "too many connections from this peer (limit 4)")
	}

	other := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: other.id.ID, Name: "other", Perms: PermSend, Added: time.Now()}))
	conn, _, err := dialMover(ctx, r.addr, other.id, r.id.ID, 0)
	require.NoError(t, err, "another peer is not affected")
	conn.CloseWithError(0, "")

	// Streams: the server grants QUICConfig().MaxIncomingStreams at a time.
	opened := 1 // the control stream
	for ; opened < 1000; opened++ {
		st, err := conns[0].OpenStream()
		if err != nil {
			break
		}
		_, _ = st.Write([]byte{byte(protocol.StreamData)})
	}
	require.LessOrEqual(t, int64(opened), QUICConfig().MaxIncomingStreams)

	conns[0].CloseWithError(0, "")
	conns = conns[1:]
	require.Eventually(t, func() bool {
		c, _, err := dialMover(ctx, r.addr, m.id, r.id.ID, 0)
		if err != nil {
			return false
		}
		conns = append(conns, c)
		return true
	}, 10*time.Second, 50*time.Millisecond, "a closed connection frees its slot")
}

// TestHandshakeFloodRetried: past the handshake rate, new connections must
// first prove their source address with a QUIC Retry (which spoofed
// addresses cannot); a real client still connects, one round trip later.
func TestHandshakeFloodRetried(t *testing.T) {
	r := startReceiver(t, ServerOptions{HandshakeRate: 1}) // a burst of 2
	ctx := context.Background()
	m := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "flood", Perms: PermSend, Added: time.Now()}))
	const n = 8
	for range n {
		conn, _, err := dialMover(ctx, r.addr, m.id, r.id.ID, 0)
		require.NoError(t, err, "a client above the handshake rate still connects")
		conn.CloseWithError(0, "")
	}
	retried := counterValue(t, r.srv, "pgporter_mover_handshake_retries_total")
	// Counted per Initial packet: a ClientHello may take two.
	require.GreaterOrEqual(t, retried, float64(n-2-1), "connections beyond the burst (and the one token a second can add) were retried")
}

// counterValue reads counter name from the server's metrics.
func counterValue(t *testing.T, s *Server, name string) float64 {
	t.Helper()
	mfs, err := s.metrics.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
