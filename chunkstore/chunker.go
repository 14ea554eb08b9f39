package chunkstore

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
	if n > c.max {
		n = c.max
	}
	normal := c.avg
	if normal > n {
		normal = n
	}
	var h uint64
	i := c.min
	// Two bytes per step: halves the loop overhead, the dominant cost.
	for ; i+1 < normal; i += 2 {
		h = (h << 1) + gear[data[i]]
		if h&c.maskS == 0 {
			return i + 1
		}
		h = (h << 1) + gear[data[i+1]]
		if h&c.maskS == 0 {
			return i + 2
		}
	}
	for ; i < normal; i++ {
		h = (h << 1) + gear[data[i]]
		if h&c.maskS == 0 {
			return i + 1
		}
	}
	for ; i+1 < n; i += 2 {
		h = (h << 1) + gear[data[i]]
		if h&c.maskL == 0 {
			return i + 1
		}
		h = (h << 1) + gear[data[i+1]]
		if h&c.maskL == 0 {
			return i + 2
		}
	}
	for ; i < n; i++ {
		h = (h << 1) + gear[data[i]]
		if h&c.maskL == 0 {
			return i + 1
		}
	}
	return n
}

// Chunk is one piece of a stream cut by a Chunker.
type Chunk struct {
	Offset int64  // position of Data in the stream
	Data   []byte // owned by the Chunker: valid until the next call to Next
}

// Chunker cuts a stream into content-defined chunks. It is not safe for
// concurrent use.
type Chunker struct {
	r          io.Reader
	c          cutter
	buf        []byte
	start, end int // unconsumed bytes are buf[start:end]
	off        int64
	eof        bool
}

// NewChunker returns a Chunker reading r, cutting with p (zero p means
// DefaultParams).
func NewChunker(r io.Reader, p Params) (*Chunker, error) {
	p = p.withDefaults()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	size := 4 * p.Max
	if size < 1<<20 {
		size = 1 << 20
	}
	return &Chunker{r: r, c: newCutter(p), buf: make([]byte, size)}, nil
}

// Reset makes the Chunker read r from offset 0, keeping its buffer.
func (ch *Chunker) Reset(r io.Reader) {
	ch.r, ch.start, ch.end, ch.off, ch.eof = r, 0, 0, 0, false
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
	if ch.start > 0 {
		ch.end = copy(ch.buf, ch.buf[ch.start:ch.end])
		ch.start = 0
	}
	for ch.end < len(ch.buf) {
		n, err := ch.r.Read(ch.buf[ch.end:])
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
	p = p.withDefaults()
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
