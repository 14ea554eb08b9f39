package mover

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgporter/pgporter/protocol"
)

// controlStream is the request/reply stream of a mover connection. Writes
// may come from several goroutines; reads from one.
//
// Messages of many files (a manifest's FileHeader, FileChunks and FileEnd,
// the receiver's Needs) are queued and leave in one stream write when the
// side that queues them would wait; every other message is written at once,
// after whatever is queued. Each message stays one whole frame: the wire is
// the same as with a write per message.
type controlStream struct {
	rw io.ReadWriter
	rb *readBuffer
	r  *protocol.Reader
	// version is the one the Hellos negotiated (0 before); peerSoftware
	// the build the peer named in its Hello (at most 64 bytes).
	version      uint16
	peerSoftware string

	mu     sync.Mutex // guards writes to rw, queued
	queued []byte     // whole frames not yet written

	// Messages written and stream writes made: their ratio shows how well
	// per-file messages are coalesced.
	msgs, writes atomic.Int64
}

// maxQueued is the most queued bytes: past it, queue writes them. Large
// enough for a few hundred small files' messages, small enough that the
// peer starts on the first files early.
const maxQueued = 64 << 10

// controlCounts are a control stream's messages and writes so far.
type controlCounts struct{ Msgs, Writes int64 }

func (c *controlStream) counts() controlCounts {
	return controlCounts{Msgs: c.msgs.Load(), Writes: c.writes.Load()}
}

func newControlStream(rw io.ReadWriter) *controlStream {
	rb := &readBuffer{r: rw, buf: make([]byte, readBufferSize)}
	return &controlStream{rw: rw, rb: rb, r: protocol.NewReader(rb, protocol.MaxControlFrameSize)}
}

// write sends m now, after the queued messages.
func (c *controlStream) write(m protocol.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.appendLocked(m); err != nil {
		return err
	}
	return c.flushLocked()
}

// queue sends m with the next write or flush, or now if the queue is full.
// A caller that queues must flush before it waits for anything the peer
// can only send once it has read m.
func (c *controlStream) queue(m protocol.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.appendLocked(m); err != nil {
		return err
	}
	if len(c.queued) >= maxQueued {
		return c.flushLocked()
	}
	return nil
}

// flush writes the queued messages.
func (c *controlStream) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushLocked()
}

// frameAppender collects what protocol.WriteMessage writes: one whole
// frame per call, checked against the limits Decode enforces.
type frameAppender struct{ b *[]byte }

func (a frameAppender) Write(p []byte) (int, error) {
	*a.b = append(*a.b, p...)
	return len(p), nil
}

func (c *controlStream) appendLocked(m protocol.Message) error {
	if err := protocol.WriteMessage(frameAppender{&c.queued}, m); err != nil {
		return fmt.Errorf("writing %s: %w", m.Type(), err)
	}
	c.msgs.Add(1)
	return nil
}

func (c *controlStream) flushLocked() error {
	if len(c.queued) == 0 {
		return nil
	}
	_, err := c.rw.Write(c.queued)
	c.writes.Add(1)
	if cap(c.queued) > 4*maxQueued {
		c.queued = nil // one large FileChunks or Need: do not keep its buffer
	} else {
		c.queued = c.queued[:0]
	}
	if err != nil {
		return fmt.Errorf("writing control frames: %w", err)
	}
	return nil
}

// wouldBlock reports whether reading the next message may wait for the
// peer: no whole frame is buffered.
func (c *controlStream) wouldBlock() bool { return !c.rb.frameBuffered() }

// nextFlushing is next, after writing the queued messages if the read may
// wait: the peer may be waiting for them.
func (c *controlStream) nextFlushing() (protocol.Message, error) {
	if c.wouldBlock() {
		if err := c.flush(); err != nil {
			return nil, err
		}
	}
	return c.next()
}

// next returns the next message; an Error message from the peer is returned
// as its Go error (a *protocol.RemoteError).
func (c *controlStream) next() (protocol.Message, error) {
	m, err := c.r.Next()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("control stream closed by peer: %w", io.ErrUnexpectedEOF)
		}
		return nil, fmt.Errorf("reading control stream: %w", err)
	}
	if e, ok := m.(*protocol.Error); ok {
		return nil, e.Err()
	}
	return m, nil
}

// sendError reports err to the peer, best effort.
func (c *controlStream) sendError(err error) {
	_ = c.write(protocol.ToWire(err))
}

func hello() *protocol.Hello {
	return &protocol.Hello{Version: protocol.Version, MinVersion: protocol.MinVersion, Software: Software}
}

// checkHello validates the peer's Hello against ours and keeps the build
// the peer names.
func (c *controlStream) checkHello(m protocol.Message) error {
	h, ok := m.(*protocol.Hello)
	if !ok {
		return fmt.Errorf("%w: expected Hello, got %s", protocol.ErrProtocol, m.Type())
	}
	c.peerSoftware = peerSoftware(h.Software)
	if h.Version < protocol.MinVersion || protocol.Version < h.MinVersion {
		return fmt.Errorf("%w: the peer (%s) speaks versions %d..%d, this build (%s) %d..%d", protocol.ErrVersion, c.peerSoftware, h.MinVersion, h.Version, Software, protocol.MinVersion, protocol.Version)
	}
	return nil
}

// peerSoftware makes a peer's Software fit for messages and logs: at most
// 64 bytes, printable, quoted.
func peerSoftware(s string) string {
	if len(s) > 64 {
		s = s[:64]
	}
	return strconv.Quote(strings.ToValidUTF8(s, "?"))
}

// clientHello opens a control stream: kind byte, then Hello both ways;
// then, if not nil, goes right after the client's Hello (dialMoverFEC).
func (c *controlStream) clientHello(then protocol.Message) error {
	c.mu.Lock()
	_, err := c.rw.Write([]byte{byte(protocol.StreamControl)})
	c.writes.Add(1)
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("writing stream kind: %w", err)
	}
	if then == nil {
		err = c.write(hello())
	} else if err = c.queue(hello()); err == nil {
		err = c.write(then)
	}
	if err != nil {
		return err
	}
	m, err := c.next()
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	if err := c.checkHello(m); err != nil {
		return err
	}
	c.version = min(protocol.Version, m.(*protocol.Hello).Version)
	return nil
}

// testServerVersion, set only by tests, makes servers speak at most that
// version (0: protocol.Version), as an older build would.
var testServerVersion atomic.Uint32

// serverHello answers a client's Hello; the kind byte was already read.
func (c *controlStream) serverHello() error {
	m, err := c.next()
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	if err := c.checkHello(m); err != nil {
		c.sendError(err)
		return err
	}
	h := hello()
	if v := testServerVersion.Load(); v != 0 {
		h.Version = uint16(v)
	}
	c.version = min(h.Version, m.(*protocol.Hello).Version)
	return c.write(h)
}

// frameHeaderSize is the frame header of docs/PROTOCOL.md: payload length
// (4 bytes, big-endian) and type (1 byte).
const frameHeaderSize = 5

// readBufferSize is what a control stream reads ahead: the peer's queued
// frames arrive in writes of up to maxQueued.
const readBufferSize = 64 << 10

// readBuffer reads a stream ahead into a buffer, so that its owner can tell
// whether the next frame is already here (frameBuffered). Reads larger
// than the buffer bypass it once it is empty.
type readBuffer struct {
	r          io.Reader
	buf        []byte
	start, end int   // buf[start:end] is read and not consumed
	err        error // of the read that filled buf last; returned once buf is empty
}

func (b *readBuffer) Read(p []byte) (int, error) {
	if b.start == b.end {
		if b.err != nil {
			err := b.err
			b.err = nil
			return 0, err
		}
		if len(p) >= len(b.buf) {
			return b.r.Read(p)
		}
		n, err := b.r.Read(b.buf)
		b.start, b.end = 0, n
		if n == 0 {
			return 0, err
		}
		b.err = err
	}
	n := copy(p, b.buf[b.start:b.end])
	b.start += n
	return n, nil
}

// SetReadDeadline passes a frame timeout (protocol.Reader.SetFrameTimeout)
// on to the stream; on a stream without deadlines it does nothing.
func (b *readBuffer) SetReadDeadline(t time.Time) error {
	if d, ok := b.r.(interface{ SetReadDeadline(time.Time) error }); ok {
		return d.SetReadDeadline(t)
	}
	return nil
}

// frameBuffered reports whether a whole frame is buffered: reading it
// will not wait for the peer.
func (b *readBuffer) frameBuffered() bool {
	n := b.end - b.start
	if n < frameHeaderSize {
		return false
	}
	return n-frameHeaderSize >= int(binary.BigEndian.Uint32(b.buf[b.start:]))
}
