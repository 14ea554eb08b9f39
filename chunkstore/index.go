package chunkstore

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// The index is a pebble DB with three kinds of keys:
//
//	'c' + ID (33 bytes)        -> chunk location (locSize bytes, below)
//	'p' + pack number (BE u32) -> durable length of the pack (LE u64)
//	"format"                   -> indexFormat
//
// A chunk key exists only once its record is synced in its pack, and a pack's
// durable length is written in the same batch as the chunk keys that point
// below it: everything past the durable length is a torn tail, safe to cut.
// Pack numbers are big endian so that pack keys sort in pack order.

const (
	keyChunk = 'c'
	keyPack  = 'p'

	chunkKeySize = 1 + chunk.IDSize
	packKeySize  = 1 + 4

	// indexFormat names this layout of keys, values and pack records.
	indexFormat = "pgporter-chunkstore-1"

	// locVersion is the first byte of a chunk location.
	locVersion = 1
	// locSize is the size of an encoded chunk location:
	// version, pack, offset, stored length, plain length, codec.
	locSize = 1 + 4 + 8 + 4 + 4 + 1

	packLenSize = 8
	// maxPackOffset bounds offsets and pack lengths read from the index. A
	// pack never grows past maxPackSize plus one record.
	maxPackOffset = maxPackSize + recordHeaderSize + chunk.MaxChunkCeil
)

// errBadIndex reports an index entry that no writer produces.
var errBadIndex = errors.New("chunkstore: bad index entry")

// chunkLoc is where a chunk's record lives.
type chunkLoc struct {
	Pack      uint32
	Offset    int64 // of the record header
	StoredLen uint32
	PlainLen  uint32
	Codec     chunk.Codec
}

func (l chunkLoc) info() Info {
	return Info{PlainLen: int(l.PlainLen), StoredLen: int(l.StoredLen), Codec: l.Codec}
}

// header is the record header expected at l for id.
func (l chunkLoc) header(id chunk.ID) recordHeader {
	return recordHeader{ID: id, Codec: l.Codec, PlainLen: l.PlainLen, StoredLen: l.StoredLen}
}

func (l chunkLoc) validate() error {
	if l.Offset < 0 || l.Offset > maxPackOffset {
		return fmt.Errorf("%w: offset %d out of range", errBadIndex, l.Offset)
	}
	if err := l.header(chunk.ID{}).validate(); err != nil {
		return fmt.Errorf("%w: %w", errBadIndex, err)
	}
	return nil
}

// appendLoc appends the encoding of l to dst.
func appendLoc(dst []byte, l chunkLoc) []byte {
	dst = append(dst, locVersion)
	dst = binary.LittleEndian.AppendUint32(dst, l.Pack)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(l.Offset))
	dst = binary.LittleEndian.AppendUint32(dst, l.StoredLen)
	dst = binary.LittleEndian.AppendUint32(dst, l.PlainLen)
	return append(dst, byte(l.Codec))
}

// decodeLoc decodes and checks a chunk location.
func decodeLoc(b []byte) (chunkLoc, error) {
	var l chunkLoc
	if len(b) != locSize {
		return l, fmt.Errorf("%w: location is %d bytes, want %d", errBadIndex, len(b), locSize)
	}
	if b[0] != locVersion {
		return l, fmt.Errorf("%w: location version %d", errBadIndex, b[0])
	}
	off := binary.LittleEndian.Uint64(b[5:13])
	if off > maxPackOffset {
		return l, fmt.Errorf("%w: offset %d out of range", errBadIndex, off)
	}
	l = chunkLoc{
		Pack:      binary.LittleEndian.Uint32(b[1:5]),
		Offset:    int64(off),
		StoredLen: binary.LittleEndian.Uint32(b[13:17]),
		PlainLen:  binary.LittleEndian.Uint32(b[17:21]),
		Codec:     chunk.Codec(b[21]),
	}
	return l, l.validate()
}

// appendChunkKey appends the index key of id to dst.
func appendChunkKey(dst []byte, id chunk.ID) []byte {
	return append(append(dst, keyChunk), id[:]...)
}

func parseChunkKey(k []byte) (chunk.ID, bool) {
	if len(k) != chunkKeySize || k[0] != keyChunk {
		return chunk.ID{}, false
	}
	return chunk.ID(k[1:]), true
}

func packKey(n uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{keyPack}, n)
}

func parsePackKey(k []byte) (uint32, bool) {
	if len(k) != packKeySize || k[0] != keyPack {
		return 0, false
	}
	return binary.BigEndian.Uint32(k[1:]), true
}

func appendPackLen(dst []byte, n int64) []byte {
	return binary.LittleEndian.AppendUint64(dst, uint64(n))
}

func decodePackLen(b []byte) (int64, error) {
	if len(b) != packLenSize {
		return 0, fmt.Errorf("%w: pack length is %d bytes, want %d", errBadIndex, len(b), packLenSize)
	}
	n := binary.LittleEndian.Uint64(b)
	if n > maxPackOffset {
		return 0, fmt.Errorf("%w: pack length %d out of range", errBadIndex, n)
	}
	return int64(n), nil
}

// Key ranges for iterators.
var (
	chunkLower = []byte{keyChunk}
	chunkUpper = []byte{keyChunk + 1}
	packLower  = []byte{keyPack}
	packUpper  = []byte{keyPack + 1}
)
