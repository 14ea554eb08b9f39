package fec

import (
	"context"
	"net"
	"sync"
	"time"
)

// MaxPeers bounds the peers a Bridge keeps state for. Past it the peer
// heard from least recently is forgotten: a flood of frames from many
// addresses costs a bounded amount of memory.
const MaxPeers = 1024

// Bridge is a net.PacketConn over frames that another socket's reader
// hands it: a mover's listening quic.Transport passes the datagrams that
// are not QUIC (ReadNonQUICPacket) to read, and a second quic.Transport,
// on the Bridge, serves the connections of peers that frame. Each peer
// address has its own Decoder and Encoder; replies are framed in the
// group size the peer's own frames carry.
type Bridge struct {
	read  func(ctx context.Context, b []byte) (int, net.Addr, error)
	write func(b []byte, addr net.Addr) (int, error)
	local net.Addr
	q     *queue

	cancel context.CancelFunc
	wg     sync.WaitGroup // the reader

	mu    sync.Mutex // guards peers, stats
	peers map[string]*bridgePeer
	stats Stats // of peers forgotten
}

type bridgePeer struct {
	addr net.Addr
	dec  *Decoder
	enc  *Encoder
	k    int
	seen time.Time
}

var _ net.PacketConn = (*Bridge)(nil)

// NewBridge starts reading frames with read until Close; write sends a
// frame on the shared socket, local is that socket's address.
func NewBridge(read func(ctx context.Context, b []byte) (int, net.Addr, error), write func(b []byte, addr net.Addr) (int, error), local net.Addr) *Bridge {
	ctx, cancel := context.WithCancel(context.Background())
	b := &Bridge{read: read, write: write, local: local, q: newQueue(), cancel: cancel, peers: make(map[string]*bridgePeer)}
	b.wg.Go(func() { b.readLoop(ctx) })
	return b
}

func (b *Bridge) readLoop(ctx context.Context) {
	defer b.q.close()
	buf := make([]byte, 64<<10)
	for {
		n, addr, err := b.read(ctx, buf)
		if err != nil {
			return
		}
		if n < HeaderLen || !IsFrame(buf[0]) {
			continue // not ours: a stray datagram
		}
		k := int(buf[6])
		if k < 2 || k > MaxGroup {
			continue
		}
		p := b.peer(addr, k)
		p.dec.Handle(buf[:n])
	}
}

// peer returns addr's state, made on its first frame.
func (b *Bridge) peer(addr net.Addr, k int) *bridgePeer {
	key := addr.String()
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
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

// Close stops the reader and every peer's timers; the shared socket is
// its owner's to close.
func (b *Bridge) Close() error {
	b.cancel()
	b.wg.Wait()
	b.mu.Lock()
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
