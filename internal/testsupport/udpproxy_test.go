package testsupport

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// echoServer answers every UDP datagram with the same bytes and remembers
// who sent what.
type echoServer struct {
	conn *net.UDPConn
	wg   sync.WaitGroup

	mu      sync.Mutex // guards got, sources
	got     []string
	sources map[string]bool
}

func newEchoServer(t *testing.T) *echoServer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	e := &echoServer{conn: conn, sources: map[string]bool{}}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			e.mu.Lock()
			e.got = append(e.got, string(buf[:n]))
			e.sources[from.String()] = true
			e.mu.Unlock()
			conn.WriteToUDP(buf[:n], from)
		}
	}()
	t.Cleanup(func() { conn.Close(); e.wg.Wait() })
	return e
}

func (e *echoServer) Addr() string { return e.conn.LocalAddr().String() }

func (e *echoServer) received() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.got...)
}

func (e *echoServer) sourceCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.sources)
}

func dialClient(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	require.NoError(t, err)
	c, err := net.DialUDP("udp", nil, ua)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends msg and returns the first reply; the deadline only guards
// against a hung test.
func roundTrip(t *testing.T, c *net.UDPConn, msg string) string {
	t.Helper()
	_, err := c.Write([]byte(msg))
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	buf := make([]byte, maxDatagram)
	n, err := c.Read(buf)
	require.NoError(t, err)
	return string(buf[:n])
}

func send(t *testing.T, c *net.UDPConn, msg string) {
	t.Helper()
	_, err := c.Write([]byte(msg))
	require.NoError(t, err)
}

func waitStats(t *testing.T, p *UDPProxy, cond func(ProxyStats) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	require.NoError(t, p.Wait(ctx, cond), "stats now %+v", p.Stats())
}

func TestUDPProxyForwardsPerClient(t *testing.T) {
	e := newEchoServer(t)
	p := NewUDPProxy(t, e.Addr())
	a, b := dialClient(t, p.Addr()), dialClient(t, p.Addr())

	require.Equal(t, "hello from a", roundTrip(t, a, "hello from a"))
	require.Equal(t, "b", roundTrip(t, b, "b"))
	require.Equal(t, "again a", roundTrip(t, a, "again a"))

	to, from := p.Bytes()
	require.EqualValues(t, 12+1+7, to)
	require.EqualValues(t, 12+1+7, from)
	s := p.Stats()
	require.EqualValues(t, 3, s.PacketsToTarget)
	require.EqualValues(t, 3, s.PacketsFromTarget)
	require.Zero(t, s.DroppedToTarget+s.DroppedFromTarget)
	require.Equal(t, 2, e.sourceCount(), "each client gets its own upstream socket")
}

func TestUDPProxyCutRestore(t *testing.T) {
	e := newEchoServer(t)
	p := NewUDPProxy(t, e.Addr())
	c := dialClient(t, p.Addr())
	require.Equal(t, "one", roundTrip(t, c, "one"))

	p.Cut()
	require.True(t, p.IsCut())
	send(t, c, "lost")
	waitStats(t, p, func(s ProxyStats) bool { return s.DroppedToTarget == 1 })

	p.Restore()
	require.False(t, p.IsCut())
	require.Equal(t, "two", roundTrip(t, c, "two"), "the cut datagram never arrives")
	require.Equal(t, []string{"one", "two"}, e.received())
}

func TestUDPProxyCutDropsReplies(t *testing.T) {
	e := newEchoServer(t)
	p := NewUDPProxy(t, e.Addr())
	c := dialClient(t, p.Addr())
	// Cut just after the request passes: the reply is dropped.
	p.SetFilter(func(dir Direction, payload []byte) bool {
		if dir == ToTarget {
			p.Cut()
		}
		return false
	})
	send(t, c, "ping")
	waitStats(t, p, func(s ProxyStats) bool { return s.DroppedFromTarget == 1 })
	require.Equal(t, []string{"ping"}, e.received())
	p.SetFilter(nil)
	p.Restore()
	require.Equal(t, "pong", roundTrip(t, c, "pong"))
}

func TestUDPProxyFilter(t *testing.T) {
	e := newEchoServer(t)
	p := NewUDPProxy(t, e.Addr())
	c := dialClient(t, p.Addr())
	p.SetFilter(func(dir Direction, payload []byte) bool {
		return dir == FromTarget && string(payload) == "drop-reply"
	})
	send(t, c, "drop-reply")
	waitStats(t, p, func(s ProxyStats) bool { return s.DroppedFromTarget == 1 })
	require.Equal(t, "kept", roundTrip(t, c, "kept"))
	require.Equal(t, []string{"drop-reply", "kept"}, e.received())
}

func TestUDPProxyCutAfter(t *testing.T) {
	e := newEchoServer(t)
	p := NewUDPProxy(t, e.Addr())
	c := dialClient(t, p.Addr())
	p.CutAfter(10) // one 4-byte request and its reply fit; the next request does not
	require.Equal(t, "abcd", roundTrip(t, c, "abcd"))
	send(t, c, "efgh")
	waitStats(t, p, func(s ProxyStats) bool { return s.DroppedToTarget == 1 })
	require.True(t, p.IsCut())
	to, from := p.Bytes()
	require.EqualValues(t, 8, to+from)
	p.Restore()
	require.Equal(t, "ijkl", roundTrip(t, c, "ijkl"))
}

func TestUDPProxyLoss(t *testing.T) {
	e := newEchoServer(t)
	p := NewUDPProxy(t, e.Addr())
	c := dialClient(t, p.Addr())
	p.SetFilter(func(dir Direction, _ []byte) bool { return dir == FromTarget }) // count requests only
	p.SetLoss(0.5, 42)
	const n = 400
	for i := range n {
		send(t, c, "x")
		// Lockstep, so no datagram is lost to a full socket buffer.
		waitStats(t, p, func(s ProxyStats) bool { return s.PacketsToTarget+s.DroppedToTarget == int64(i+1) })
	}
	s := p.Stats()
	require.InDelta(t, n/2, s.DroppedToTarget, n/5, "about half dropped: %+v", s)

	p.SetLoss(1, 1)
	send(t, c, "y")
	waitStats(t, p, func(s ProxyStats) bool { return s.PacketsToTarget+s.DroppedToTarget == n+1 })
	require.Equal(t, s.PacketsToTarget, p.Stats().PacketsToTarget)
}

func TestUDPProxyDelay(t *testing.T) {
	e := newEchoServer(t)
	p := NewUDPProxy(t, e.Addr())
	c := dialClient(t, p.Addr())
	const d = 40 * time.Millisecond
	p.SetDelay(d)
	start := time.Now()
	require.Equal(t, "slow", roundTrip(t, c, "slow"))
	require.GreaterOrEqual(t, time.Since(start), 2*d, "delayed each way")
	p.SetDelay(0)
	require.Equal(t, "fast", roundTrip(t, c, "fast"))
}

func TestUDPProxyWaitBytes(t *testing.T) {
	e := newEchoServer(t)
	p := NewUDPProxy(t, e.Addr())
	c := dialClient(t, p.Addr())

	waited := make(chan error, 1)
	go func() { waited <- p.WaitBytes(t.Context(), 10) }()
	require.Equal(t, "12345", roundTrip(t, c, "12345")) // 5 bytes each way
	require.NoError(t, <-waited)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.ErrorIs(t, p.WaitBytes(ctx, 1<<40), context.Canceled)

	go func() { waited <- p.WaitBytes(t.Context(), 1<<40) }()
	p.Close()
	require.ErrorIs(t, <-waited, ErrProxyClosed)
	p.Close() // idempotent
}

func TestUDPProxyRebind(t *testing.T) {
	e := newEchoServer(t)
	p := NewUDPProxy(t, e.Addr())
	c := dialClient(t, p.Addr())
	require.Equal(t, "before", roundTrip(t, c, "before"))
	p.Rebind()
	require.Equal(t, "after", roundTrip(t, c, "after"))
	require.Equal(t, 2, e.sourceCount(), "the target sees the client from a new address")
}
