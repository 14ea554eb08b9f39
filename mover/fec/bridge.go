package fec

import (
	"net"
	"sync"
	"time"
)

// MaxPeers bounds the peers a Bridge keeps state for. Past it the peer
// heard from least recently is forgotten: a flood of frames from many
// addresses costs a bounded amount of memory.
const MaxPeers = 1024

// Bridge is a net.PacketConn over frames that another socket's reader
// hands it (Handle): a mover's listening socket diverts the datagrams that
// are frames to it, and a second quic.Transport, on the Bridge, serves
// the connections of peers that frame. Each peer address has its own
// Decoder and Encoder; replies are framed in the group size the peer's
// own frames carry.
type Bridge struct {
	write func(b []byte, addr net.Addr) (int, error)
	local net.Addr
	q     *queue

	mu     sync.Mutex // guards peers, stats, closed
	peers  map[string]*bridgePeer
	stats  Stats // of peers forgotten
	closed bool
}

type bridgePeer struct {
	addr net.Addr
	dec  *Decoder
	enc  *Encoder
	k    int
	seen time.Time
}

var _ net.PacketConn = (*Bridge)(nil)

// NewBridge returns a Bridge whose replies write sends on the shared
// socket, whose address is local.
func NewBridge(write func(b []byte, addr net.Addr) (int, error), local net.Addr) *Bridge {
	return &Bridge{write: write, local: local, q: newQueue(), peers: make(map[string]*bridgePeer)}
}

// Handle takes a datagram from addr that IsFrame says is a frame; it may
// change f. It must not be called concurrently (a socket's one reader
// calls it); after Close it drops f.
func (b *Bridge) Handle(f []byte, addr net.Addr) {
	if len(f) < HeaderLen || !IsFrame(f[0]) {
		return // not ours: a stray datagram
	}
	k := int(f[6])
	if k < 2 || k > MaxGroup {
		return
	}
	if p := b.peer(addr, k); p != nil {
		p.dec.Handle(f)
	}
}

// peer returns addr's state, made on its first frame; nil once b is
// closed.
func (b *Bridge) peer(addr net.Addr, k int) *bridgePeer {
	key := addr.String()
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	if p, ok := b.peers[key]; ok {
		p.seen = now
		return p
	}
	if len(b.peers) >= MaxPeers {
		var oldest *bridgePeer
		var oldKey string
		for k, p := range b.peers {
			if oldest == nil || p.seen.Before(oldest.seen) {
				oldest, oldKey = p, k
			}
		}
		b.forget(oldKey, oldest)
	}
	p := &bridgePeer{addr: addr, k: k, seen: now}
	p.dec = NewDecoder(func(d []byte) { b.q.put(d, addr) })
	p.enc = NewEncoder(k, func(f []byte) error {
		_, err := b.write(f, addr)
		return err
	})
	b.peers[key] = p
	return p
}

// forget drops a peer's state; b.mu is held.
func (b *Bridge) forget(key string, p *bridgePeer) {
	p.enc.Close()
	p.dec.Close()
	s := p.dec.Stats()
	b.stats.add(s)
	delete(b.peers, key)
}

func (s *Stats) add(o Stats) {
	s.Data += o.Data
	s.Parity += o.Parity
	s.Recovered += o.Recovered
	s.Lost += o.Lost
	s.Dropped += o.Dropped
}

// Stats sums the decoders' counts, of peers current and forgotten.
func (b *Bridge) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.stats
	for _, p := range b.peers {
		s.add(p.dec.Stats())
	}
	return s
}

// ReadFrom returns the next datagram of any peer, repaired and in order.
func (b *Bridge) ReadFrom(p []byte) (int, net.Addr, error) { return b.q.read(p) }

// WriteTo frames p for addr, a peer the Bridge has heard from (the
// transport on it only answers); to another address it is sent as it is.
func (b *Bridge) WriteTo(p []byte, addr net.Addr) (int, error) {
	b.mu.Lock()
	peer, ok := b.peers[addr.String()]
	b.mu.Unlock()
	if !ok {
		return b.write(p, addr)
	}
	if err := peer.enc.Write(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close stops every peer's timers and ends ReadFrom; the shared socket
// is its owner's to close.
func (b *Bridge) Close() error {
	b.mu.Lock()
	b.closed = true
	for k, p := range b.peers {
		b.forget(k, p)
	}
	b.mu.Unlock()
	b.q.close()
	return nil
}

func (b *Bridge) LocalAddr() net.Addr                { return b.local }
func (b *Bridge) SetDeadline(t time.Time) error      { return b.SetReadDeadline(t) }
func (b *Bridge) SetReadDeadline(t time.Time) error  { b.q.setDeadline(t); return nil }
func (b *Bridge) SetWriteDeadline(t time.Time) error { return nil }
func (b *Bridge) SetReadBuffer(int) error            { return nil }
func (b *Bridge) SetWriteBuffer(int) error           { return nil }
