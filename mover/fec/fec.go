package fec

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"slices"
	"sync"
	"time"
)

// Frame layout. Every frame starts with a 7-byte header: its type, the
// group number (big endian), a byte whose meaning depends on the type,
// and the sender's group size K.
//
//	data:   type 0x21, group, index in the group (0..K-1), K, then the datagram
//	parity: type 0x22, group, count of data frames it covers (1..K), K,
//	        then the XOR of their lengths (2 bytes) and the XOR of their
//	        bytes, each zero-padded to the longest
const (
	TypeData   = 0x21
	TypeParity = 0x22
	// HeaderLen is the header's size, which a data frame adds to its
	// datagram.
	HeaderLen = 7
	// MaxGroup is the largest group: a group's arrivals are a 64-bit mask.
	MaxGroup = 32
	// MaxPayload is the largest datagram a frame carries: a parity frame
	// of that size fills a 1500-byte IPv4 path's UDP payload.
	MaxPayload = 1472 - HeaderLen - 2
	// MaxSpan is how long a group stays open: an Encoder sends the parity
	// of a group once it is this old even if it is not full, so that a
	// slow sender's datagrams are repaired too and a Decoder holds a
	// datagram after a gap for a bounded time.
	MaxSpan = 4 * time.Millisecond
	// Hold is how long a Decoder holds datagrams after a gap before it
	// gives the group up: MaxSpan and room for the path's jitter.
	Hold = MaxSpan + 4*time.Millisecond
)

// IsFrame reports whether a datagram starting with b0 is a frame of this
// package: its two high bits are clear, which no QUIC packet's are, and
// it is of a known type.
func IsFrame(b0 byte) bool { return b0 == TypeData || b0 == TypeParity }

// ErrTooLarge is returned for a datagram longer than MaxPayload.
var ErrTooLarge = errors.New("fec: datagram larger than MaxPayload")

// Encoder frames datagrams and adds a parity frame per group. Its methods
// may be called concurrently.
type Encoder struct {
	k     int
	write func(frame []byte) error

	mu     sync.Mutex // guards the fields below
	group  uint32
	n      int // data frames in the open group
	acc    [MaxPayload]byte
	accLen int
	lenXor uint16
	frame  [HeaderLen + 2 + MaxPayload]byte
	timer  *time.Timer
	span   time.Duration // MaxSpan; a test's to lengthen
	closed bool
	parity int64 // parity frames sent
}

// NewEncoder returns an Encoder of groups of k datagrams (clamped to
// 2..MaxGroup) that sends each frame with write, under its lock: write
// must not call back into the Encoder, and must not keep the frame.
func NewEncoder(k int, write func(frame []byte) error) *Encoder {
	e := &Encoder{k: min(max(k, 2), MaxGroup), write: write, span: MaxSpan}
	e.timer = time.AfterFunc(time.Hour, e.expire)
	e.timer.Stop()
	return e
}

// Parity is how many parity frames e sent.
func (e *Encoder) Parity() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.parity
}

// Write sends p framed, then the group's parity if p filled it.
func (e *Encoder) Write(p []byte) error {
	if len(p) > MaxPayload {
		return ErrTooLarge
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errors.New("fec: encoder closed")
	}
	idx := e.n
	f := e.frame[:HeaderLen+len(p)]
	header(f, TypeData, e.group, byte(idx), byte(e.k))
	copy(f[HeaderLen:], p)
	err := e.write(f)
	// The datagram counts towards the parity even when its write failed:
	// the receiver then sees a loss, which the parity may repair.
	xorInto(e.acc[:], p)
	e.accLen = max(e.accLen, len(p))
	e.lenXor ^= uint16(len(p))
	e.n++
	if e.n == 1 {
		e.timer.Reset(e.span)
	}
	if e.n == e.k {
		e.timer.Stop()
		if perr := e.sendParity(); err == nil {
			err = perr
		}
	}
	return err
}

// expire sends the parity of a group left open for MaxSpan.
func (e *Encoder) expire() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n > 0 && !e.closed {
		_ = e.sendParity() // a lost parity is a loss like any other
	}
}

// sendParity sends the open group's parity and opens the next group.
func (e *Encoder) sendParity() error {
	f := e.frame[:HeaderLen+2+e.accLen]
	header(f, TypeParity, e.group, byte(e.n), byte(e.k))
	binary.BigEndian.PutUint16(f[HeaderLen:], e.lenXor)
	copy(f[HeaderLen+2:], e.acc[:e.accLen])
	err := e.write(f)
	clear(e.acc[:e.accLen])
	e.accLen, e.lenXor, e.n = 0, 0, 0
	e.group++
	e.parity++
	return err
}

// Close stops e's timer; later Writes fail.
func (e *Encoder) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	e.timer.Stop()
}

func header(f []byte, typ byte, group uint32, b5, k byte) {
	f[0] = typ
	binary.BigEndian.PutUint32(f[1:5], group)
	f[5] = b5
	f[6] = k
}

func xorInto(dst, src []byte) {
	for i, b := range src {
		dst[i] ^= b
	}
}

// Stats counts what a Decoder did.
type Stats struct {
	Data      int64 // data frames received
	Parity    int64 // parity frames received
	Recovered int64 // datagrams rebuilt from a parity
	Lost      int64 // datagrams missing from groups that could not be repaired
	Dropped   int64 // frames refused as malformed or duplicate
}

// Decoder takes the frames of one sender in arrival order and hands the
// datagrams on in the order of their groups, with one loss per group
// rebuilt. Its methods may be called concurrently; deliver is called
// under its lock, with a buffer it must not keep.
type Decoder struct {
	deliver func(p []byte)

	mu        sync.Mutex // guards the fields below
	started   bool
	group     uint32
	mask      uint64 // data frames of group received
	closed    bool   // group's parity handled: later frames pass
	gaveUp    bool   // the hold expired: later frames pass, the parity may still repair
	acc       [MaxPayload]byte
	accLen    int
	lenXor    uint16
	held      []heldFrame
	timer     *time.Timer
	hold      time.Duration // Hold; a test's to lengthen
	timerSeen uint32        // the group the timer was started for
	stats     Stats
}

type heldFrame struct {
	idx int
	p   []byte
}

// NewDecoder returns a Decoder that hands datagrams to deliver.
func NewDecoder(deliver func(p []byte)) *Decoder {
	d := &Decoder{deliver: deliver, hold: Hold}
	d.timer = time.AfterFunc(time.Hour, d.expire)
	d.timer.Stop()
	return d
}

// Stats returns the counts so far.
func (d *Decoder) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// Close stops d's timer and hands on what it holds.
func (d *Decoder) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.timer.Stop()
	d.flushHeld()
}

// Handle takes one frame, which it may change (a datagram is rebuilt in
// the parity's bytes). A frame that is not well formed, or repeats one
// already taken, is dropped and counted.
func (d *Decoder) Handle(f []byte) {
	if len(f) < HeaderLen || len(f) > HeaderLen+2+MaxPayload || !IsFrame(f[0]) {
		d.drop()
		return
	}
	group := binary.BigEndian.Uint32(f[1:5])
	b5, k := int(f[5]), int(f[6])
	if k < 2 || k > MaxGroup || b5 >= MaxGroup+1 {
		d.drop()
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.started || int32(group-d.group) > 0 {
		d.open(group)
	}
	switch f[0] {
	case TypeData:
		d.data(group, b5, f[HeaderLen:])
	case TypeParity:
		d.parity(group, b5, f[HeaderLen:])
	}
}

func (d *Decoder) drop() {
	d.mu.Lock()
	d.stats.Dropped++
	d.mu.Unlock()
}

// open ends the current group, handing on what it holds, and starts group.
func (d *Decoder) open(group uint32) {
	d.flushHeld()
	if d.started && !d.closed {
		// Ended without its parity: whatever is missing below the highest
		// index seen is lost to the receiver.
		if d.mask != 0 {
			top := 64 - bits.LeadingZeros64(d.mask)
			d.stats.Lost += int64(top - bits.OnesCount64(d.mask))
		}
	}
	d.started, d.group, d.mask, d.closed, d.gaveUp = true, group, 0, false, false
	clear(d.acc[:d.accLen])
	d.accLen, d.lenXor = 0, 0
	d.timer.Stop()
}

func (d *Decoder) data(group uint32, idx int, p []byte) {
	if group != d.group || d.closed {
		// An older group's frame, or one after its group was repaired or
		// given up: late, but QUIC takes late packets.
		if group == d.group && d.mask&(1<<idx) != 0 {
			d.stats.Dropped++
			return
		}
		d.stats.Data++
		if group == d.group {
			d.mask |= 1 << idx
		}
		d.deliver(p)
		return
	}
	if idx >= MaxGroup || len(p) > MaxPayload || d.mask&(1<<idx) != 0 {
		d.stats.Dropped++
		return
	}
	d.stats.Data++
	d.mask |= 1 << idx
	xorInto(d.acc[:], p)
	d.accLen = max(d.accLen, len(p))
	d.lenXor ^= uint16(len(p))
	below := uint64(1)<<idx - 1
	if d.gaveUp || d.mask&below == below {
		d.deliver(p)
		d.releaseInOrder()
		return
	}
	// A gap before it: hold it until the parity fills the gap.
	if len(d.held) == 0 {
		d.timer.Reset(d.hold)
		d.timerSeen = d.group
	}
	d.held = append(d.held, heldFrame{idx: idx, p: slices.Clone(p)})
}

// releaseInOrder hands on the held frames once no frame before them is
// missing.
func (d *Decoder) releaseInOrder() {
	if len(d.held) == 0 {
		return
	}
	top := 0
	for _, h := range d.held {
		top = max(top, h.idx)
	}
	below := uint64(1)<<top - 1
	if d.mask&below == below {
		d.flushHeld()
	}
}

// flushHeld hands on every held frame, in index order.
func (d *Decoder) flushHeld() {
	if len(d.held) == 0 {
		return
	}
	slices.SortFunc(d.held, func(a, b heldFrame) int { return a.idx - b.idx })
	for _, h := range d.held {
		d.deliver(h.p)
	}
	d.held = d.held[:0]
	d.timer.Stop()
}

func (d *Decoder) parity(group uint32, n int, body []byte) {
	if group != d.group || d.closed {
		return // an older group's, or a repeat
	}
	if n < 1 || n > MaxGroup || len(body) < 2 || len(body)-2 > MaxPayload {
		d.stats.Dropped++
		return
	}
	d.stats.Parity++
	all := uint64(1)<<n - 1
	if d.mask&^all != 0 {
		// Data frames beyond the count the parity covers: not one sender's
		// group; hand on what is held and take nothing from it.
		d.stats.Dropped++
		d.closed = true
		d.flushHeld()
		return
	}
	d.closed = true
	missing := all &^ d.mask
	switch bits.OnesCount64(missing) {
	case 0:
	case 1:
		size := int(binary.BigEndian.Uint16(body) ^ d.lenXor)
		xs := body[2:]
		if size == 0 || size > len(xs) {
			d.stats.Lost++ // a parity that does not fit its group
			break
		}
		rec := xs[:size] // body is the caller's frame; rebuilt in place
		xorInto(rec, d.acc[:size])
		d.stats.Recovered++
		d.mask |= missing
		d.deliver(rec)
	default:
		d.stats.Lost += int64(bits.OnesCount64(missing))
	}
	d.flushHeld()
}

// expire gives up the gap the held frames wait on.
func (d *Decoder) expire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timerSeen != d.group || len(d.held) == 0 {
		return
	}
	d.gaveUp = true
	d.flushHeld()
}
