package protocol

import (
	"encoding/binary"
	"fmt"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// Encoding primitives. Every integer is a minimal-length uvarint (signed ones
// zig-zag varints), every string and byte slice a uvarint length followed by
// the bytes, every list a uvarint count followed by its elements, every
// hash 32 raw bytes, every bool one byte 0 or 1. Decoders reject non-minimal
// varints, so each value has exactly one encoding.

func appendUvarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

func appendVarint(b []byte, v int64) []byte { return binary.AppendVarint(b, v) }

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b, s []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// violation returns an error matching ErrProtocol.
func violation(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}

// decoder reads one payload. The first failure sticks: later reads return
// zero values, and err says what went wrong.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = violation(format, args...)
	}
}

// uvarint reads a uvarint no greater than max.
func (d *decoder) uvarint(field string, max uint64) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	switch {
	case n == 0:
		d.fail("%s: truncated", field)
		return 0
	case n < 0:
		d.fail("%s: varint overflows 64 bits", field)
		return 0
	case n > 1 && d.b[n-1] == 0:
		d.fail("%s: non-minimal varint", field)
		return 0
	case v > max:
		d.fail("%s: %d above the limit %d", field, v, max)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint(field string) int64 {
	u := d.uvarint(field, 1<<64-1)
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x
}

func (d *decoder) uint16(field string) uint16 { return uint16(d.uvarint(field, 1<<16-1)) }
func (d *decoder) uint32(field string) uint32 { return uint32(d.uvarint(field, 1<<32-1)) }
func (d *decoder) uint64(field string) uint64 { return d.uvarint(field, 1<<64-1) }

// length reads a byte count no greater than max and than what remains.
func (d *decoder) length(field string, max int) int {
	n := d.uvarint(field, uint64(max))
	if d.err == nil && n > uint64(len(d.b)) {
		d.fail("%s: length %d but %d bytes remain", field, n, len(d.b))
		return 0
	}
	return int(n)
}

func (d *decoder) string(field string, max int) string {
	n := d.length(field, max)
	if d.err != nil {
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// bytes returns a slice that aliases the payload, or nil if empty.
func (d *decoder) bytes(field string, max int) []byte {
	n := d.length(field, max)
	if d.err != nil || n == 0 {
		return nil
	}
	s := d.b[:n:n]
	d.b = d.b[n:]
	return s
}

// count reads a list length no greater than max, and checks that the rest of
// the payload could hold that many elements of at least minSize bytes, so
// the caller may allocate the list.
func (d *decoder) count(field string, max, minSize int) int {
	n := d.uvarint(field, uint64(max))
	if d.err == nil && n*uint64(minSize) > uint64(len(d.b)) {
		d.fail("%s: %d elements cannot fit in %d bytes", field, n, len(d.b))
		return 0
	}
	return int(n)
}

func (d *decoder) hash(field string) (h [32]byte) {
	d.fixed(field, h[:])
	return h
}

func (d *decoder) token(field string) (t [JoinTokenLen]byte) {
	d.fixed(field, t[:])
	return t
}

// fixed reads len(dst) bytes into dst.
func (d *decoder) fixed(field string, dst []byte) {
	if d.err != nil {
		return
	}
	if len(d.b) < len(dst) {
		d.fail("%s: truncated", field)
		return
	}
	copy(dst, d.b)
	d.b = d.b[len(dst):]
}

func (d *decoder) bool(field string) bool {
	if d.err != nil {
		return false
	}
	if len(d.b) == 0 {
		d.fail("%s: truncated", field)
		return false
	}
	v := d.b[0]
	if v > 1 {
		d.fail("%s: bool byte %d", field, v)
		return false
	}
	d.b = d.b[1:]
	return v == 1
}

// end fails unless the whole payload was consumed.
func (d *decoder) end() {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
}

// appendChunkRefs appends a count, then each chunk's ID and length.
func appendChunkRefs(b []byte, refs []ChunkRef) []byte {
	b = appendUvarint(b, uint64(len(refs)))
	for i := range refs {
		b = append(b, refs[i].ID[:]...)
		b = appendUvarint(b, uint64(refs[i].Len))
	}
	return b
}

// chunkRefs reads what appendChunkRefs wrote, at most max of them (nil for
// none), allocating only once the count fits the bytes left.
func (d *decoder) chunkRefs(max int) []ChunkRef {
	n := d.count("chunks", max, chunk.IDSize+1)
	if n == 0 {
		return nil
	}
	refs := make([]ChunkRef, n)
	for i := range refs {
		refs[i].ID = d.hash("chunk ID")
		refs[i].Len = uint32(d.uvarint("chunk length", chunk.MaxChunkCeil))
	}
	return refs
}
