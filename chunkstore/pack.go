package chunkstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
	"strings"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/crypt"
)

// A pack file is a sequence of chunk records, appended and never rewritten
// in place. Each record is a fixed header followed by the chunk's stored
// bytes:
//
//	offset size field
//	0      4    magic "PGK1"
//	4      32   chunk ID (BLAKE3-256 of the plain content)
//	36     1    codec
//	37     4    plain length, little endian
//	41     4    stored length, little endian
//	45     4    CRC-32C of bytes 0..45
//	49     n    stored bytes (n = stored length)
//
// The header carries everything the index holds except the position, so a
// pack can be scanned without the index (to measure a torn tail, or to
// rebuild a lost index), and its CRC makes a torn or garbage header
// recognisable before its lengths are trusted. The stored bytes need no
// checksum of their own: every read checks the BLAKE3 of the plain content.

const (
	recordMagic      = "PGK1"
	recordHeaderSize = 4 + chunk.IDSize + 1 + 4 + 4 + 4

	packExt = ".pack"
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// errBadRecord is the Err of a CorruptChunkError (wrapped) for a record whose
// bytes cannot be what was written.
var errBadRecord = errors.New("chunkstore: bad pack record")

// recordHeader is the decoded header of a pack record.
type recordHeader struct {
	ID        chunk.ID
	Codec     chunk.Codec
	PlainLen  uint32
	StoredLen uint32
}

// size is the length of the whole record on disk.
func (h recordHeader) size() int64 { return recordHeaderSize + int64(h.StoredLen) }

func (h recordHeader) info() Info {
	return Info{PlainLen: int(h.PlainLen), StoredLen: int(h.StoredLen), Codec: h.Codec}
}

// validate checks the lengths and codec against what any writer produces, so
// that no decoder allocates what a corrupt header claims.
func (h recordHeader) validate() error {
	switch {
	case !h.Codec.Valid():
		return fmt.Errorf("%w: unknown codec %d", errBadRecord, uint8(h.Codec))
	case h.PlainLen > chunk.MaxChunkCeil:
		return fmt.Errorf("%w: plain length %d above %d", errBadRecord, h.PlainLen, chunk.MaxChunkCeil)
	case h.StoredLen > chunk.MaxChunkCeil:
		return fmt.Errorf("%w: stored length %d above %d", errBadRecord, h.StoredLen, chunk.MaxChunkCeil)
	case h.Codec == chunk.CodecNone && h.StoredLen != h.PlainLen:
		return fmt.Errorf("%w: uncompressed record stores %d bytes for %d", errBadRecord, h.StoredLen, h.PlainLen)
	case h.Codec != chunk.CodecNone && h.StoredLen == 0:
		return fmt.Errorf("%w: empty %s record", errBadRecord, h.Codec)
	}
	return nil
}

// putRecordHeader writes h into b[:recordHeaderSize].
func putRecordHeader(b []byte, h recordHeader) {
	_ = b[recordHeaderSize-1]
	copy(b[0:4], recordMagic)
	copy(b[4:4+chunk.IDSize], h.ID[:])
	b[36] = byte(h.Codec)
	binary.LittleEndian.PutUint32(b[37:41], h.PlainLen)
	binary.LittleEndian.PutUint32(b[41:45], h.StoredLen)
	binary.LittleEndian.PutUint32(b[45:49], crc32.Checksum(b[:45], crc32c))
}

// appendRecord appends a whole record (header and stored bytes) to dst.
func appendRecord(dst []byte, h recordHeader, stored []byte) []byte {
	n := len(dst)
	dst = append(dst, make([]byte, recordHeaderSize)...)
	putRecordHeader(dst[n:], h)
	return append(dst, stored...)
}

// decodeRecordHeader decodes and checks the header at the start of b.
func decodeRecordHeader(b []byte) (recordHeader, error) {
	var h recordHeader
	if len(b) < recordHeaderSize {
		return h, fmt.Errorf("%w: header truncated at %d bytes", errBadRecord, len(b))
	}
	if string(b[0:4]) != recordMagic {
		return h, fmt.Errorf("%w: bad magic %q", errBadRecord, b[0:4])
	}
	if got, want := crc32.Checksum(b[:45], crc32c), binary.LittleEndian.Uint32(b[45:49]); got != want {
		return h, fmt.Errorf("%w: header checksum %08x, want %08x", errBadRecord, got, want)
	}
	copy(h.ID[:], b[4:4+chunk.IDSize])
	h.Codec = chunk.Codec(b[36])
	h.PlainLen = binary.LittleEndian.Uint32(b[37:41])
	h.StoredLen = binary.LittleEndian.Uint32(b[41:45])
	return h, h.validate()
}

// decodeRecord decodes a whole record, which must be exactly b. The stored
// bytes alias b.
func decodeRecord(b []byte) (recordHeader, []byte, error) {
	h, err := decodeRecordHeader(b)
	if err != nil {
		return h, nil, err
	}
	if int64(len(b)) != h.size() {
		return h, nil, fmt.Errorf("%w: record is %d bytes, header says %d", errBadRecord, len(b), h.size())
	}
	return h, b[recordHeaderSize:], nil
}

// scanRecords walks the records of r from off up to end, calling fn (which
// may be nil) with the offset and header of each whole record whose header
// is valid. It stops at end or at the first torn or invalid record and
// returns the offset where the whole records stop. It reads headers only.
func scanRecords(r io.ReaderAt, off, end int64, fn func(off int64, h recordHeader) error) (int64, error) {
	return scanHeaders(r, off, end, recordHeaderSize, decodeRecordHeader, fn)
}

// scanHeaders is scanRecords for records whose headers are hsize bytes,
// decoded by decode.
func scanHeaders[H interface{ size() int64 }](r io.ReaderAt, off, end int64, hsize int, decode func([]byte) (H, error), fn func(off int64, h H) error) (int64, error) {
	buf := make([]byte, hsize)
	for off+int64(hsize) <= end {
		if _, err := r.ReadAt(buf, off); err != nil {
			if errors.Is(err, io.EOF) {
				return off, nil
			}
			return off, fmt.Errorf("reading record header at %d: %w", off, err)
		}
		h, err := decode(buf)
		if err != nil || off+h.size() > end {
			return off, nil
		}
		if fn != nil {
			if err := fn(off, h); err != nil {
				return off, err
			}
		}
		off += h.size()
	}
	return off, nil
}

// packName is the file name of pack n: 8 hex digits for the numbered packs
// of the previous layout (below 2^32), 16 for the random names of this one
// (top bit set).
func packName(n uint64) string {
	if n < 1<<32 {
		return fmt.Sprintf("%08x%s", n, packExt)
	}
	return fmt.Sprintf("%016x%s", n, packExt)
}

// parsePackName is the inverse of packName.
func parsePackName(name string) (uint64, bool) {
	hexPart, ok := strings.CutSuffix(name, packExt)
	if !ok || (len(hexPart) != 8 && len(hexPart) != 16) {
		return 0, false
	}
	n, err := strconv.ParseUint(hexPart, 16, 64)
	if err != nil || packName(n) != name {
		return 0, false
	}
	return n, true
}

// A store with a key (LocalOptions.Key) writes sealed records instead
// (docs/design/0010-repository-encryption.md, "Packs"):
//
//	offset size field (clear)
//	0      4    magic "PGE1"
//	4      32   object ID (keyed BLAKE3 of the chunk ID)
//	36     4    sealed length n, little endian
//	40     4    CRC-32C of bytes 0..40
//	44     n    Seal(KindChunk, name = object ID, inner)
//	inner: plain chunk ID (32) | codec (1) | plain length (4) | stored bytes
//
// The clear header is what a scan needs to walk a pack without the key; the
// codec and plain length, a fingerprint of content-defined chunks, are
// inside. The seal is bound to the object ID, not to the pack and offset, so
// a prune copies sealed records as they are.
const (
	sealedMagic      = "PGE1"
	sealedHeaderSize = 4 + crypt.ObjectIDSize + 4 + 4
	innerHeaderSize  = chunk.IDSize + 1 + 4
	// minSealedLen and maxSealedLen bound a sealed length any writer makes.
	minSealedLen = crypt.Overhead + innerHeaderSize
	maxSealedLen = minSealedLen + chunk.MaxChunkCeil
)

// sealedHeader is the decoded clear header of a sealed record.
type sealedHeader struct {
	OID       crypt.ObjectID
	SealedLen uint32
}

// size is the length of the whole sealed record on disk.
func (h sealedHeader) size() int64 { return sealedHeaderSize + int64(h.SealedLen) }

// putSealedRecordHeader writes h into b[:sealedHeaderSize].
func putSealedRecordHeader(b []byte, h sealedHeader) {
	_ = b[sealedHeaderSize-1]
	copy(b[0:4], sealedMagic)
	copy(b[4:36], h.OID[:])
	binary.LittleEndian.PutUint32(b[36:40], h.SealedLen)
	binary.LittleEndian.PutUint32(b[40:44], crc32.Checksum(b[:40], crc32c))
}

// decodeSealedRecordHeader decodes and checks the clear header at the start
// of b. It proves nothing about the record's origin: only the seal does.
func decodeSealedRecordHeader(b []byte) (sealedHeader, error) {
	var h sealedHeader
	if len(b) < sealedHeaderSize {
		return h, fmt.Errorf("%w: header truncated at %d bytes", errBadRecord, len(b))
	}
	if string(b[0:4]) != sealedMagic {
		return h, fmt.Errorf("%w: bad magic %q", errBadRecord, b[0:4])
	}
	if got, want := crc32.Checksum(b[:40], crc32c), binary.LittleEndian.Uint32(b[40:44]); got != want {
		return h, fmt.Errorf("%w: header checksum %08x, want %08x", errBadRecord, got, want)
	}
	copy(h.OID[:], b[4:36])
	h.SealedLen = binary.LittleEndian.Uint32(b[36:40])
	if h.SealedLen < minSealedLen || h.SealedLen > maxSealedLen {
		return h, fmt.Errorf("%w: sealed length %d outside [%d, %d]", errBadRecord, h.SealedLen, minSealedLen, maxSealedLen)
	}
	return h, nil
}

// putInner writes the inner header of h into b[:innerHeaderSize].
func putInner(b []byte, h recordHeader) {
	_ = b[innerHeaderSize-1]
	copy(b[0:chunk.IDSize], h.ID[:])
	b[32] = byte(h.Codec)
	binary.LittleEndian.PutUint32(b[33:37], h.PlainLen)
}

// decodeInner decodes an opened record, inner header and stored bytes,
// which must be exactly b; its lengths are checked as a plain record's. The
// stored bytes alias b.
func decodeInner(b []byte) (recordHeader, []byte, error) {
	var h recordHeader
	if len(b) < innerHeaderSize {
		return h, nil, fmt.Errorf("%w: inner header truncated at %d bytes", errBadRecord, len(b))
	}
	copy(h.ID[:], b[0:chunk.IDSize])
	h.Codec = chunk.Codec(b[32])
	h.PlainLen = binary.LittleEndian.Uint32(b[33:37])
	if n := len(b) - innerHeaderSize; n <= chunk.MaxChunkCeil {
		h.StoredLen = uint32(n)
	} else {
		return h, nil, fmt.Errorf("%w: stored length %d above %d", errBadRecord, n, chunk.MaxChunkCeil)
	}
	return h, b[innerHeaderSize:], h.validate()
}

// scanSealedRecords is scanRecords for a pack of sealed records: it walks
// their clear headers, without the key.
func scanSealedRecords(r io.ReaderAt, off, end int64, fn func(off int64, h sealedHeader) error) (int64, error) {
	return scanHeaders(r, off, end, sealedHeaderSize, decodeSealedRecordHeader, fn)
}
