package testsupport

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// Direction is the way a datagram crosses a UDPProxy.
type Direction int

const (
	ToTarget   Direction = iota // from a client to the target
	FromTarget                  // from the target back to a client
)

func (d Direction) String() string {
	if d == ToTarget {
		return "to-target"
	}
	return "from-target"
}

// ErrProxyClosed is returned by UDPProxy.Wait once the proxy is closed.
var ErrProxyClosed = errors.New("testsupport: UDP proxy closed")

// ProxyStats are a UDPProxy's counters. Forwarded bytes are UDP payload
// bytes, counted just before the write so that a receiver never holds a
// datagram the counters miss. Dropped datagrams are those that Cut, CutAfter,
// SetLoss or the filter discarded, or that found the delay line full.
type ProxyStats struct {
	ToTarget, FromTarget               int64 // payload bytes forwarded
	PacketsToTarget, PacketsFromTarget int64 // datagrams forwarded
	DroppedToTarget, DroppedFromTarget int64 // datagrams dropped
}

// delayLine bounds the datagrams held back by SetDelay; beyond it packets
// drop, as at a router with a full queue.
const delayLine = 4096

// maxDatagram is the largest UDP payload.
const maxDatagram = 64 << 10

// UDPProxy forwards UDP datagrams between clients and one target over
// loopback, with faults injected on demand: a cut (both ways), random loss,
// a fixed delay, a byte budget, a per-packet filter. Each client address gets
// its own upstream socket, so the target sees one peer per client, as through
// a NAT. It is meant for QUIC tests on the real network stack.
type UDPProxy struct {
	target *net.UDPAddr
	ln     *net.UDPConn

	mu        sync.Mutex // guards every field below up to wg
	upstreams map[string]*net.UDPConn
	cut       bool
	budget    int64 // bytes that may still be admitted; <0 is unlimited
	loss      float64
	rng       *rand.Rand
	delay     time.Duration
	filter    func(Direction, []byte) bool
	stats     ProxyStats
	changed   chan struct{} // closed on the next stats change; nil when nobody waits
	closed    bool

	wg        sync.WaitGroup // the serve, upstream and delay goroutines
	delayed   chan delayedPacket
	done      chan struct{} // closed by Close
	closeOnce sync.Once
}

type delayedPacket struct {
	due  time.Time
	dir  Direction
	conn *net.UDPConn
	to   *net.UDPAddr // nil for a connected upstream socket
	data []byte
}

// NewUDPProxy starts a proxy on 127.0.0.1 that forwards to target (host:port)
// and closes it, waiting for its goroutines, when the test ends.
func NewUDPProxy(t testing.TB, target string) *UDPProxy {
	t.Helper()
	p, err := StartUDPProxy(target)
	if err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// StartUDPProxy is NewUDPProxy outside a test; the caller must Close it.
func StartUDPProxy(target string) (*UDPProxy, error) {
	ta, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return nil, err
	}
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	p := &UDPProxy{
		target:    ta,
		ln:        ln,
		upstreams: map[string]*net.UDPConn{},
		budget:    -1,
		rng:       rand.New(rand.NewPCG(1, 2)),
		delayed:   make(chan delayedPacket, delayLine),
		done:      make(chan struct{}),
	}
	p.wg.Add(2)
	go p.serve()
	go p.delayLoop()
	return p, nil
}

// Addr returns the address clients send to.
func (p *UDPProxy) Addr() string { return p.ln.LocalAddr().String() }

// Close stops forwarding, closes every socket and waits for the proxy's
// goroutines. It may be called more than once.
func (p *UDPProxy) Close() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		ups := p.upstreams
		p.upstreams = nil
		p.mu.Unlock()
		close(p.done)
		p.ln.Close()
		for _, u := range ups {
			u.Close()
		}
		p.wg.Wait()
	})
}

// Cut drops every datagram both ways until Restore.
func (p *UDPProxy) Cut() {
	p.mu.Lock()
	p.cut = true
	p.mu.Unlock()
}

// Restore ends a Cut (or a cut made by CutAfter) and removes the byte budget.
func (p *UDPProxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.budget = -1
	p.mu.Unlock()
}

// IsCut reports whether the proxy is dropping everything.
func (p *UDPProxy) IsCut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cut
}

// CutAfter lets n more payload bytes through (both ways together) and then
// cuts, dropping the first datagram that would exceed n: a cut at an exact
// point in a transfer, which a test cannot get by calling Cut after a wait.
func (p *UDPProxy) CutAfter(n int64) {
	p.mu.Lock()
	p.budget = max(n, 0)
	p.mu.Unlock()
}

// SetLoss drops each datagram with probability rate (0 to 1), drawn from a
// generator seeded with seed, so a run can be repeated.
func (p *UDPProxy) SetLoss(rate float64, seed uint64) {
	p.mu.Lock()
	p.loss = rate
	p.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	p.mu.Unlock()
}

// SetDelay holds every datagram back by d in each direction (0 turns it off).
func (p *UDPProxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// SetFilter installs f, called for every datagram that no Cut drops, before
// the CutAfter budget and SetLoss apply; it returns true to drop the datagram. f runs on the proxy's goroutines with no
// lock held, must not retain payload, and may call the proxy's methods. It
// may change payload's bytes in place: what is forwarded is the changed
// datagram (a link that corrupts, or an attacker on the path). nil removes
// the filter.
func (p *UDPProxy) SetFilter(f func(dir Direction, payload []byte) (drop bool)) {
	p.mu.Lock()
	p.filter = f
	p.mu.Unlock()
}

// Rebind gives every client a new upstream socket, so the target sees each
// client arrive from a new address (a NAT rebinding).
func (p *UDPProxy) Rebind() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	old := p.upstreams
	p.upstreams = map[string]*net.UDPConn{}
	p.mu.Unlock()
	for _, u := range old {
		u.Close()
	}
}

// Bytes returns the payload bytes forwarded to and from the target.
func (p *UDPProxy) Bytes() (toTarget, fromTarget int64) {
	s := p.Stats()
	return s.ToTarget, s.FromTarget
}

// Stats returns a snapshot of the counters.
func (p *UDPProxy) Stats() ProxyStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Wait blocks until cond holds for the counters, ctx ends or the proxy
// closes. cond runs with the proxy's lock held: it must only look at its
// argument.
func (p *UDPProxy) Wait(ctx context.Context, cond func(ProxyStats) bool) error {
	for {
		p.mu.Lock()
		if cond(p.stats) {
			p.mu.Unlock()
			return nil
		}
		if p.closed {
			p.mu.Unlock()
			return ErrProxyClosed
		}
		if p.changed == nil {
			p.changed = make(chan struct{})
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-p.done:
			return ErrProxyClosed
		}
	}
}

// WaitBytes blocks until at least n payload bytes have been forwarded, both
// ways together.
func (p *UDPProxy) WaitBytes(ctx context.Context, n int64) error {
	return p.Wait(ctx, func(s ProxyStats) bool { return s.ToTarget+s.FromTarget >= n })
}

// serve reads datagrams from clients and forwards them upstream.
func (p *UDPProxy) serve() {
	defer p.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := p.ln.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		up := p.upstream(from)
		if up == nil {
			continue // closing, or no socket to spare: the datagram is lost
		}
		p.forward(ToTarget, up, nil, buf[:n])
	}
}

// upstream returns the socket that carries client's datagrams, creating it
// and its reader on first use; nil once the proxy is closed.
func (p *UDPProxy) upstream(client *net.UDPAddr) *net.UDPConn {
	key := client.String()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	if u := p.upstreams[key]; u != nil {
		return u
	}
	u, err := net.DialUDP("udp", nil, p.target)
	if err != nil {
		return nil
	}
	p.upstreams[key] = u
	p.wg.Add(1)
	go p.readUpstream(u, client)
	return u
}

// readUpstream forwards the target's replies on u back to client.
func (p *UDPProxy) readUpstream(u *net.UDPConn, client *net.UDPAddr) {
	defer p.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, err := u.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ECONNREFUSED from an ICMP error: the target may come back
		}
		p.forward(FromTarget, p.ln, client, buf[:n])
	}
}

// forward applies the faults to one datagram and writes it on conn (to to,
// or on the connected socket when to is nil), now or after the delay.
func (p *UDPProxy) forward(dir Direction, conn *net.UDPConn, to *net.UDPAddr, b []byte) {
	p.mu.Lock()
	cut, f := p.cut, p.filter
	p.mu.Unlock()
	if cut || (f != nil && f(dir, b)) {
		p.dropped(dir)
		return
	}

	p.mu.Lock()
	drop := false
	if p.budget >= 0 {
		if int64(len(b)) > p.budget {
			p.cut, drop = true, true
		} else {
			p.budget -= int64(len(b))
		}
	}
	if !drop && p.loss > 0 && p.rng.Float64() < p.loss {
		drop = true
	}
	delay := p.delay
	p.mu.Unlock()
	if drop {
		p.dropped(dir)
		return
	}

	if delay <= 0 {
		p.write(dir, conn, to, b)
		return
	}
	pkt := delayedPacket{due: time.Now().Add(delay), dir: dir, conn: conn, to: to, data: append([]byte(nil), b...)}
	select {
	case p.delayed <- pkt:
	default:
		p.dropped(dir)
	}
}

// write sends b and counts it. It counts first, so that whoever receives the
// datagram already sees it in the counters; a failed write is moved to the
// dropped counter.
func (p *UDPProxy) write(dir Direction, conn *net.UDPConn, to *net.UDPAddr, b []byte) {
	n := int64(len(b))
	p.count(dir, n, 1)
	var err error
	if to == nil {
		_, err = conn.Write(b)
	} else {
		_, err = conn.WriteToUDP(b, to)
	}
	if err != nil {
		p.count(dir, -n, -1)
		p.dropped(dir)
	}
}

func (p *UDPProxy) count(dir Direction, bytes, packets int64) {
	p.update(func(s *ProxyStats) {
		if dir == ToTarget {
			s.ToTarget += bytes
			s.PacketsToTarget += packets
		} else {
			s.FromTarget += bytes
			s.PacketsFromTarget += packets
		}
	})
}

func (p *UDPProxy) dropped(dir Direction) {
	p.update(func(s *ProxyStats) {
		if dir == ToTarget {
			s.DroppedToTarget++
		} else {
			s.DroppedFromTarget++
		}
	})
}

// update changes the counters and wakes the waiters.
func (p *UDPProxy) update(f func(*ProxyStats)) {
	p.mu.Lock()
	f(&p.stats)
	if p.changed != nil {
		close(p.changed)
		p.changed = nil
	}
	p.mu.Unlock()
}

// delayLoop sends held-back datagrams when they are due, in arrival order.
func (p *UDPProxy) delayLoop() {
	defer p.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		var pkt delayedPacket
		select {
		case pkt = <-p.delayed:
		case <-p.done:
			return
		}
		if d := time.Until(pkt.due); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-p.done:
				return
			}
		}
		p.write(pkt.dir, pkt.conn, pkt.to, pkt.data)
	}
}
