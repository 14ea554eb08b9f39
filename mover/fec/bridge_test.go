package fec

import (
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBridgeBoundsPeers: frames from more addresses than MaxPeers (a
// flood with spoofed sources) keep state for at most MaxPeers, and the
// datagrams of every frame still come out of ReadFrom.
func TestBridgeBoundsPeers(t *testing.T) {
	var (
		mu      sync.Mutex // guards written
		written [][]byte
	)
	b := NewBridge(func(p []byte, a net.Addr) (int, error) {
		mu.Lock()
		written = append(written, append([]byte(nil), p...))
		mu.Unlock()
		return len(p), nil
	}, &net.UDPAddr{})
	defer b.Close()
	frame := []byte{TypeData, 0, 0, 0, 0, 0, 8, 0x41, 'x'}
	n := MaxPeers + 500
	go func() {
		for i := range n {
			a := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 9))
			b.Handle(append([]byte(nil), frame...), a)
		}
	}()
	buf := make([]byte, 2048)
	for range n {
		k, _, err := b.ReadFrom(buf)
		require.NoError(t, err)
		require.Equal(t, []byte{0x41, 'x'}, buf[:k])
	}
	b.mu.Lock()
	peers := len(b.peers)
	b.mu.Unlock()
	require.LessOrEqual(t, peers, MaxPeers)
	require.EqualValues(t, n, b.Stats().Data, "the forgotten peers' counts are kept")

	// A reply to a known peer is framed; to an unknown one it is sent as is.
	last := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte((n - 1) >> 8), byte(n - 1)}), 9))
	_, err := b.WriteTo([]byte{0x41, 1}, last)
	require.NoError(t, err)
	_, err = b.WriteTo([]byte{0x41, 2}, &net.UDPAddr{IP: net.IPv4(198, 19, 0, 1), Port: 9})
	require.NoError(t, err)
	mu.Lock()
	defer mu.Unlock()
	require.GreaterOrEqual(t, len(written), 2) // and a parity, once the group's span ends
	require.Equal(t, []byte{TypeData}, written[0][:1])
	require.Equal(t, []byte{0x41, 1}, written[0][HeaderLen:])
	require.Contains(t, written, []byte{0x41, 2}, "sent as is")
}
