package chunk

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
)

// cutter holds the precomputed masks of one Params.
//
// The gear hash shifts left, so its bit k depends only on the last k+1 bytes
// seen: low bits have almost no window, and testing them cuts on short
// repeated patterns (or never, in padding). We test the high bits, which
// depend on the last 64 bytes.
type cutter struct {
	min, avg, max int
	maskS, maskL  uint64 // stricter before avg, looser after (normalized chunking, level 2)
}

func newCutter(p Params) cutter {
	b := bits.TrailingZeros(uint(p.Avg))
	return cutter{
		min:   p.Min,
		avg:   p.Avg,
		max:   p.Max,
		maskS: ^uint64(0) << (64 - (b + 2)),
		maskL: ^uint64(0) << (64 - (b - 2)),
	}
}

// cut returns the length of the chunk at the start of data. data must hold
// at least max bytes unless it is the end of the stream.
func (c *cutter) cut(data []byte) int {
	n := len(data)
	if n <= c.min {
		return n
	}
	n = min(n, c.max)
	normal := min(c.avg, n)
	i, h := scan(data[:normal], c.min, 0, c.maskS)
	if i >= 0 {
		return i
	}
	if i, _ = scan(data[:n], normal, h, c.maskL); i >= 0 {
		return i
	}
	return n
}

// scan feeds data[i:] to the gear hash h and returns the length of the
// prefix of data after which h&mask is first zero, or -1 and the final h.
//
// The recurrence h = h<<1 + gear[b] is a chain of two dependent operations
// per byte, and that chain, not the loads, bounds the naive loop. Over four
// bytes it expands to h<<4 + (g0<<3 + g1<<2 + g2<<1 + g3): the sums of the
// table entries do not depend on h, so the CPU computes them ahead and the
// chain through h is one shift and one add per four bytes: 3.2 GB/s against
// 2.1 for the byte loop on a Zen 5 core. The hashes tested are the same.
func scan(data []byte, i int, h, mask uint64) (int, uint64) {
	for ; i+4 <= len(data); i += 4 {
		b := (*[4]byte)(data[i : i+4])
		t1 := gear[b[0]]
		t2 := t1<<1 + gear[b[1]]
		t3 := t2<<1 + gear[b[2]]
		t4 := t3<<1 + gear[b[3]]
		if (h<<1+t1)&mask == 0 {
			return i + 1, 0
		}
		if (h<<2+t2)&mask == 0 {
			return i + 2, 0
		}
		if (h<<3+t3)&mask == 0 {
			return i + 3, 0
		}
		h = h<<4 + t4
		if h&mask == 0 {
			return i + 4, 0
		}
	}
	for ; i < len(data); i++ {
		h = h<<1 + gear[data[i]]
		if h&mask == 0 {
			return i + 1, 0
		}
	}
	return -1, h
}

// Chunk is one piece of a stream cut by a Chunker.
type Chunk struct {
	Offset int64  // position of Data in the stream
	Data   []byte // owned by the Chunker: valid until the next call to Next (see SetAlloc)
}

// Chunker cuts a stream into content-defined chunks. It is not safe for
// concurrent use.
type Chunker struct {
	r          io.Reader
	c          cutter
	buf        []byte
	window     int // bytes read ahead of the cut point, at most
	start, end int // unconsumed bytes are buf[start:end]
	off        int64
	eof        bool
	alloc      func() []byte // SetAlloc's
}

// NewChunker returns a Chunker reading r, cutting with p (zero p means
// DefaultParams).
func NewChunker(r io.Reader, p Params) (*Chunker, error) {
	p = p.WithDefaults()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	size := 4 * p.Max
	if size < 1<<20 {
		size = 1 << 20
	}
	return &Chunker{r: r, c: newCutter(p), buf: make([]byte, size), window: size}, nil
}

// SetAlloc makes the Chunker read into buffers that alloc returns instead of
// its own: when the current one has no room left for another chunk, it takes
// a new one and carries the unread tail over, leaving the old buffer as it
// is. A chunk's Data then stays valid after later calls to Next and Reset,
// until the caller reuses the buffer it lies in: the caller can keep the
// bytes it was given without copying them. alloc must return buffers of
// at least MinAllocSize bytes; after a Reset the next stream's bytes go
// after the last one's in the same buffer, while it has room.
func (ch *Chunker) SetAlloc(alloc func() []byte) {
	ch.alloc, ch.buf, ch.start, ch.end = alloc, nil, 0, 0
}

// MinAllocSize is the smallest buffer SetAlloc's function may return for a
// Chunker cutting with p.
func MinAllocSize(p Params) int {
	p = p.WithDefaults()
	return max(1<<20, 4*p.Max) + p.Max
}

// Reset makes the Chunker read r from offset 0, keeping its buffer.
func (ch *Chunker) Reset(r io.Reader) {
	if ch.alloc != nil {
		// The caller may hold chunks of the last stream: the next one goes
		// after them, in the same buffer while it has room. Small files
		// then share a buffer instead of taking one each.
		ch.r, ch.start, ch.off, ch.eof = r, ch.end, 0, false
		return
	}
	ch.r, ch.start, ch.end, ch.off, ch.eof = r, 0, 0, 0, false
}

// WillAlloc reports whether the next call to Next will take a new buffer
// from SetAlloc's function: a caller that keeps chunks can make room first.
func (ch *Chunker) WillAlloc() bool {
	return ch.alloc != nil && ch.end-ch.start < ch.c.max && !ch.eof && len(ch.buf)-ch.end < ch.c.max
}

// Next returns the next chunk, or io.EOF after the last one. An empty stream
// has no chunks.
func (ch *Chunker) Next() (Chunk, error) {
	if ch.end-ch.start < ch.c.max && !ch.eof {
		if err := ch.fill(); err != nil {
			return Chunk{}, err
		}
	}
	if ch.start == ch.end {
		return Chunk{}, io.EOF
	}
	n := ch.c.cut(ch.buf[ch.start:ch.end])
	c := Chunk{Offset: ch.off, Data: ch.buf[ch.start : ch.start+n : ch.start+n]}
	ch.start += n
	ch.off += int64(n)
	return c, nil
}

func (ch *Chunker) fill() error {
	switch {
	case ch.alloc != nil && len(ch.buf)-ch.end < ch.c.max:
		nb := ch.alloc()
		if len(nb) < ch.window+ch.c.max {
			return fmt.Errorf("chunker: buffer of %d bytes, need at least %d", len(nb), ch.window+ch.c.max)
		}
		ch.end = copy(nb, ch.buf[ch.start:ch.end])
		ch.buf, ch.start = nb, 0
	case ch.alloc == nil && ch.start > 0:
		ch.end = copy(ch.buf, ch.buf[ch.start:ch.end])
		ch.start = 0
	}
	limit := min(len(ch.buf), ch.start+ch.window)
	for ch.end < limit {
		n, err := ch.r.Read(ch.buf[ch.end:limit])
		ch.end += n
		if errors.Is(err, io.EOF) {
			ch.eof = true
			return nil
		}
		if err != nil {
			return fmt.Errorf("chunker: reading at offset %d: %w", ch.off+int64(ch.end-ch.start), err)
		}
		if n == 0 {
			continue
		}
	}
	return nil
}

// Split cuts data held in memory, calling fn with each chunk in order. It
// stops at the first error fn returns.
func Split(data []byte, p Params, fn func(Chunk) error) error {
	p = p.WithDefaults()
	if err := p.Validate(); err != nil {
		return err
	}
	c := newCutter(p)
	var off int64
	for len(data) > 0 {
		n := c.cut(data)
		if err := fn(Chunk{Offset: off, Data: data[:n:n]}); err != nil {
			return err
		}
		data = data[n:]
		off += int64(n)
	}
	return nil
}
