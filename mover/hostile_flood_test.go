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
