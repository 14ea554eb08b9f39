package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// ALPN is the TLS application protocol every pgporter connection negotiates.
const ALPN = "pgporter/1"

// Frame size limits, on the payload (the frame minus its 5-byte header).
const (
	// MaxFrameSize bounds every frame, on any stream. A ChunkData of
	// MaxChunkPayload bytes fits with room to spare.
	MaxFrameSize = 16 << 20
	// MaxControlFrameSize is the max control-stream readers pass to
	// NewReader. Every control message within its own limits fits: the
	// largest, a Need of MaxNeedChunks indexes, takes at most about 5 MiB.
	MaxControlFrameSize = 8 << 20
)

const frameHeaderSize = 5 // 4-byte big-endian payload length, 1 type byte

// StreamKind is the first byte written on every QUIC stream, naming what the
// stream carries.
type StreamKind uint8

const (
	StreamControl StreamKind = 1 // requests and replies, in frames
	StreamData    StreamKind = 2 // ChunkData frames
	StreamFetch   StreamKind = 3 // GetChunks requests, answered on the same stream
	StreamArchive StreamKind = 4 // one PushWAL and its chunks, answered on the same stream (version 9)
)

func (k StreamKind) String() string {
	switch k {
	case StreamControl:
		return "control"
	case StreamData:
		return "data"
	case StreamFetch:
		return "fetch"
	case StreamArchive:
		return "archive"
	}
	return fmt.Sprintf("stream(%d)", uint8(k))
}

// WriteStreamKind writes the byte that opens a stream.
func WriteStreamKind(w io.Writer, k StreamKind) error {
	if _, err := w.Write([]byte{byte(k)}); err != nil {
		return fmt.Errorf("writing stream kind: %w", err)
	}
	return nil
}

// ReadStreamKind reads the byte that opens a stream. An unknown kind is an
// error matching ErrProtocol.
func ReadStreamKind(r io.Reader) (StreamKind, error) {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, fmt.Errorf("reading stream kind: %w", err)
	}
	k := StreamKind(b[0])
	if k != StreamControl && k != StreamData && k != StreamFetch && k != StreamArchive {
		return 0, violation("unknown stream kind %d", b[0])
	}
	return k, nil
}

// QUIC application error codes for closing a connection.
const (
	CloseOK            uint64 = 0 // done; nothing went wrong
	CloseProtocolError uint64 = 1 // the peer broke the protocol
	CloseShutdown      uint64 = 2 // this side is shutting down; try again later
	CloseRefused       uint64 = 3 // refused: no common version, or not trusted for anything
)

var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// WriteMessage writes m as one frame, with a single call to w.Write, so
// that frames written by different goroutines to a writer that serialises
// Write calls never interleave. It refuses a message outside the limits that
// Decode enforces, with an error matching ErrProtocol (and ErrBadPath for a
// bad name), before writing anything.
func WriteMessage(w io.Writer, m Message) error {
	if m == nil {
		return fmt.Errorf("%w: writing a nil message", ErrInternal)
	}
	t := m.Type()
	mm, ok := m.(message)
	if !ok || newMessage(t) == nil {
		return fmt.Errorf("%w: writing %T: not a message of this package", ErrInternal, m)
	}
	if err := mm.check(); err != nil {
		return fmt.Errorf("encoding %s: %w", t, err)
	}
	bp := framePool.Get().(*[]byte)
	defer framePool.Put(bp)
	b := (*bp)[:0]
	if cd, ok := m.(*ChunkData); ok && cap(b) < frameHeaderSize+64+len(cd.Payload) {
		b = make([]byte, 0, frameHeaderSize+64+len(cd.Payload))
	}
	b = AppendFrame(b, m)
	*bp = b
	if n := len(b) - frameHeaderSize; n > MaxFrameSize {
		return fmt.Errorf("encoding %s: %w: %d bytes above the frame limit %d", t, ErrTooLarge, n, MaxFrameSize)
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("writing %s frame: %w", t, err)
	}
	return nil
}

// AppendFrame appends m as a whole frame (header and payload) to b, for
// callers that manage their own buffers and writes. Unlike WriteMessage it
// does not validate m: a message outside the limits yields a frame the
// peer's Reader rejects.
func AppendFrame(b []byte, m Message) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0, byte(m.Type()))
	b = m.Append(b)
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-frameHeaderSize))
	return b
}

// Reader reads frames from a stream and decodes them. It reads exactly the
// bytes of each frame, never beyond, and reuses one buffer that grows to the
// largest frame seen (never beyond its max), as that frame's bytes arrive.
// It is not safe for concurrent use.
type Reader struct {
	r       io.Reader
	max     int
	timeout time.Duration // see SetFrameTimeout; 0 = none
	hdr     [frameHeaderSize]byte
	buf     []byte
	err     error // sticky: after a failure the stream position is unknown
}

// readDeadliner is a stream whose reads can time out (a QUIC stream, a net.Conn).
type readDeadliner interface{ SetReadDeadline(time.Time) error }

// SetFrameTimeout bounds how long a frame may take to arrive once its first
// byte has: a peer that trickles a frame (slow-loris) cannot hold the reader,
// and the buffer its length header made it allocate, for longer than d.
// The wait for a frame's first byte is not bounded: an idle stream is the
// connection's business. Past d, Next fails with an error matching both
// ErrProtocol and os.ErrDeadlineExceeded. It needs the stream to have a
// SetReadDeadline method; on other readers, and with d <= 0, it does nothing.
func (r *Reader) SetFrameTimeout(d time.Duration) {
	if _, ok := r.r.(readDeadliner); ok && d > 0 {
		r.timeout = d
	}
}

// NewReader returns a Reader of r that refuses frames whose payload is above
// max bytes. A max <= 0 or above MaxFrameSize means MaxFrameSize. Control
// streams use MaxControlFrameSize, data streams MaxFrameSize.
func NewReader(r io.Reader, max int) *Reader {
	if max <= 0 || max > MaxFrameSize {
		max = MaxFrameSize
	}
	return &Reader{r: r, max: max}
}

// Next reads and decodes the next frame. It returns io.EOF, unwrapped, when
// the stream ends cleanly between frames; an error wrapping
// io.ErrUnexpectedEOF when it ends inside one; an error matching ErrTooLarge
// when the length header is above max, before allocating anything; an error
// matching ErrProtocol for an unknown type or a payload Decode rejects. After
// an error, every later call returns the same error.
//
// The Payload of a returned *ChunkData aliases the Reader's buffer: it is
// valid only until the next call to Next. Copy it (or finish with it) first.
// Every other message is the caller's to keep.
func (r *Reader) Next() (Message, error) {
	if r.err != nil {
		return nil, r.err
	}
	m, err := r.next()
	if err != nil {
		r.err = err
	}
	return m, err
}

func (r *Reader) next() (Message, error) {
	m, err := r.read()
	if r.timeout > 0 {
		_ = r.r.(readDeadliner).SetReadDeadline(time.Time{})
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w: a frame was not complete %s after its first byte: %w", ErrProtocol, r.timeout, err)
		}
	}
	return m, err
}

func (r *Reader) read() (Message, error) {
	first := 0
	if r.timeout > 0 {
		// The first byte may take as long as it likes; the rest of the
		// frame must follow within the timeout.
		if _, err := io.ReadFull(r.r, r.hdr[:1]); err != nil {
			if err == io.EOF {
				return nil, io.EOF
			}
			return nil, fmt.Errorf("reading frame header: %w", err)
		}
		if err := r.r.(readDeadliner).SetReadDeadline(time.Now().Add(r.timeout)); err != nil {
			return nil, fmt.Errorf("setting the frame deadline: %w", err)
		}
		first = 1
	}
	if _, err := io.ReadFull(r.r, r.hdr[first:]); err != nil {
		if err == io.EOF && first == 0 {
			return nil, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading frame header: %w", err)
	}
	n := binary.BigEndian.Uint32(r.hdr[:4])
	t := Type(r.hdr[4])
	if uint64(n) > uint64(r.max) {
		return nil, fmt.Errorf("reading %s frame: %w: payload of %d bytes above the limit %d", t, ErrTooLarge, n, r.max)
	}
	if !t.Known() {
		return nil, violation("unknown message type %d", uint8(t))
	}
	p, err := r.payload(int(n))
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading %s frame of %d bytes: %w", t, n, err)
	}
	return Decode(t, p)
}

// growStep is the first size of a frame buffer that grows as the frame
// arrives.
const growStep = 64 << 10

// payload reads a frame's n payload bytes into the Reader's buffer. A
// buffer too small grows as bytes arrive, doubling from growStep, never
// ahead of them by more than it holds: a length header alone (a peer that
// announces 16 MiB and sends nothing more) costs nothing.
func (r *Reader) payload(n int) ([]byte, error) {
	if cap(r.buf) >= n {
		p := r.buf[:n]
		_, err := io.ReadFull(r.r, p)
		return p, err
	}
	p := r.buf[:0]
	for len(p) < n {
		if len(p) == cap(p) {
			np := make([]byte, len(p), min(n, max(2*cap(p), growStep)))
			copy(np, p)
			p = np
			r.buf = np
		}
		k, err := r.r.Read(p[len(p):cap(p)])
		p = p[:len(p)+k]
		if err != nil && len(p) < n {
			return nil, err
		}
	}
	return p, nil
}
