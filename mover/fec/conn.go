package fec

import (
	"net"
	"os"
	"sync"
	"time"
)

// queueLen bounds the datagrams decoded but not yet read: about a 100
// Mbit/s path's 150 ms. Past it a datagram is dropped, as a full socket
// buffer drops one.
const queueLen = 2048

type datagram struct {
	b    []byte
	addr net.Addr
}

// queue hands decoded datagrams to a net.PacketConn's ReadFrom, with the
// read deadline quic-go uses to stop its read loop.
type queue struct {
	in   chan datagram
	done chan struct{} // closed by close

	mu       sync.Mutex // guards deadline, wake
	deadline time.Time
	wake     chan struct{} // closed when the deadline changes
	once     sync.Once
}

func newQueue() *queue {
	return &queue{in: make(chan datagram, queueLen), done: make(chan struct{}), wake: make(chan struct{})}
}

// put queues a copy of p from addr; it reports false when the queue was
// full and p was dropped.
func (q *queue) put(p []byte, addr net.Addr) bool {
	select {
	case q.in <- datagram{b: append([]byte(nil), p...), addr: addr}:
		return true
	case <-q.done:
		return false
	default:
		return false
	}
}

func (q *queue) read(b []byte) (int, net.Addr, error) {
	for {
		q.mu.Lock()
		dl, wake := q.deadline, q.wake
		q.mu.Unlock()
		var expired <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(d)
			defer t.Stop()
			expired = t.C
		}
		select {
		case p := <-q.in:
			return copy(b, p.b), p.addr, nil
		case <-q.done:
			return 0, nil, net.ErrClosed
		case <-expired:
		case <-wake:
		}
	}
}

func (q *queue) setDeadline(t time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.deadline = t
	close(q.wake)
	q.wake = make(chan struct{})
}

func (q *queue) close() { q.once.Do(func() { close(q.done) }) }

// Conn is a UDP socket to one peer that frames every datagram it sends
// with an Encoder and decodes the frames it receives; plain datagrams
// (QUIC packets of a peer that does not frame its replies) pass through.
// It is a net.PacketConn for a quic.Transport, which then sends without
// GSO and at quic-go's smallest packet size (no path MTU discovery
// without the socket's DF control): meant for lossy, slower paths. Close
// closes the socket.
type Conn struct {
	pc   *net.UDPConn
	peer net.Addr
	enc  *Encoder
	dec  *Decoder
	q    *queue
	wg   sync.WaitGroup // the reader
}

var _ net.PacketConn = (*Conn)(nil)

// NewConn frames what is sent on pc to peer in groups of k and reads
// frames from pc until Close.
func NewConn(pc *net.UDPConn, peer net.Addr, k int) *Conn {
	c := &Conn{pc: pc, peer: peer, q: newQueue()}
	c.enc = NewEncoder(k, func(f []byte) error {
		_, err := pc.WriteTo(f, peer)
		return err
	})
	c.dec = NewDecoder(func(p []byte) { c.q.put(p, peer) })
	c.wg.Go(c.readLoop)
	return c
}

func (c *Conn) readLoop() {
	buf := make([]byte, 64<<10)
	for {
		n, addr, err := c.pc.ReadFrom(buf)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			c.q.close()
			return
		}
		if n == 0 {
			continue
		}
		if IsFrame(buf[0]) {
			c.dec.Handle(buf[:n])
			continue
		}
		c.q.put(buf[:n], addr)
	}
}

// ReadFrom returns the next datagram, repaired and in order.
func (c *Conn) ReadFrom(b []byte) (int, net.Addr, error) { return c.q.read(b) }

// WriteTo sends b to the peer, framed; addr must be the peer's.
func (c *Conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if err := c.enc.Write(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close closes the socket and waits for the reader.
func (c *Conn) Close() error {
	c.enc.Close()
	err := c.pc.Close()
	c.wg.Wait()
	c.dec.Close()
	c.q.close()
	return err
}

func (c *Conn) LocalAddr() net.Addr                { return c.pc.LocalAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.SetReadDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { c.q.setDeadline(t); return nil }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.pc.SetWriteDeadline(t) }

// SetReadBuffer and SetWriteBuffer do nothing: the caller sized the
// socket's buffers (quic-go asks for its own size, which may be smaller).
func (c *Conn) SetReadBuffer(int) error  { return nil }
func (c *Conn) SetWriteBuffer(int) error { return nil }
