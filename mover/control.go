package mover

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/pgporter/pgporter/protocol"
)

// controlStream is the request/reply stream of a mover connection. Writes
// may come from several goroutines; reads from one.
type controlStream struct {
	rw io.ReadWriter
	r  *protocol.Reader
	// version is the one the Hellos negotiated (0 before).
	version uint16

	mu sync.Mutex // guards writes to rw

	// Messages written and stream writes made: their ratio shows how well
	// per-file messages are coalesced.
	msgs, writes atomic.Int64
}

// controlCounts are a control stream's messages and writes so far.
type controlCounts struct{ Msgs, Writes int64 }

func (c *controlStream) counts() controlCounts {
	return controlCounts{Msgs: c.msgs.Load(), Writes: c.writes.Load()}
}

func newControlStream(rw io.ReadWriter) *controlStream {
	return &controlStream{rw: rw, r: protocol.NewReader(rw, protocol.MaxControlFrameSize)}
}

func (c *controlStream) write(m protocol.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := protocol.WriteMessage(c.rw, m); err != nil {
		return fmt.Errorf("writing %s: %w", m.Type(), err)
	}
	c.msgs.Add(1)
	c.writes.Add(1)
	return nil
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

// checkHello validates the peer's Hello against ours.
func checkHello(m protocol.Message) error {
	h, ok := m.(*protocol.Hello)
	if !ok {
		return fmt.Errorf("%w: expected Hello, got %s", protocol.ErrProtocol, m.Type())
	}
	if h.Version < protocol.MinVersion || protocol.Version < h.MinVersion {
		return fmt.Errorf("%w: peer speaks versions %d..%d, we speak %d..%d", protocol.ErrVersion, h.MinVersion, h.Version, protocol.MinVersion, protocol.Version)
	}
	return nil
}

// clientHello opens a control stream: kind byte, then Hello both ways.
func (c *controlStream) clientHello() error {
	c.mu.Lock()
	_, err := c.rw.Write([]byte{byte(protocol.StreamControl)})
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("writing stream kind: %w", err)
	}
	if err := c.write(hello()); err != nil {
		return err
	}
	m, err := c.next()
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	if err := checkHello(m); err != nil {
		return err
	}
	c.version = min(protocol.Version, m.(*protocol.Hello).Version)
	return nil
}

// serverHello answers a client's Hello; the kind byte was already read.
func (c *controlStream) serverHello() error {
	m, err := c.next()
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	if err := checkHello(m); err != nil {
		c.sendError(err)
		return err
	}
	c.version = min(protocol.Version, m.(*protocol.Hello).Version)
	return c.write(hello())
}
