package chunkstore

import (
	"errors"
	"fmt"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

const (
	// maxPackOffset bounds offsets read from the index. A pack never grows
	// past maxPackSize plus one record.
	maxPackOffset = maxPackSize + sealedHeaderSize + maxSealedLen
)

// errBadIndex reports an index entry that no writer produces.
var errBadIndex = errors.New("chunkstore: bad index entry")

// chunkLoc is where a chunk's record lives.
type chunkLoc struct {
	Pack      uint64 // see packName
	Offset    int64  // of the record header
	StoredLen uint32
	PlainLen  uint32
	Codec     chunk.Codec
	// Sealed: the record is sealed (LocalOptions.Key). StoredLen is then
	// its sealed length, and PlainLen and Codec are unknown (zero) until
	// the record is opened: they are inside it.
	Sealed bool
}

// recordSize is the length of the whole record at l.
func (l chunkLoc) recordSize() int64 {
	if l.Sealed {
		return sealedHeaderSize + int64(l.StoredLen)
	}
	return recordHeaderSize + int64(l.StoredLen)
}

func (l chunkLoc) info() Info {
	return Info{PlainLen: int(l.PlainLen), StoredLen: int(l.StoredLen), Codec: l.Codec}
}

// header is the record header expected at l for id (a plain record).
func (l chunkLoc) header(id chunk.ID) recordHeader {
	return recordHeader{ID: id, Codec: l.Codec, PlainLen: l.PlainLen, StoredLen: l.StoredLen}
}

func (l chunkLoc) validate() error {
	if l.Offset < 0 || l.Offset > maxPackOffset {
		return fmt.Errorf("%w: offset %d out of range", errBadIndex, l.Offset)
	}
	if l.Sealed {
		if l.StoredLen < minSealedLen || l.StoredLen > maxSealedLen {
			return fmt.Errorf("%w: sealed length %d outside [%d, %d]", errBadIndex, l.StoredLen, minSealedLen, maxSealedLen)
		}
		return nil
	}
	if err := l.header(chunk.ID{}).validate(); err != nil {
		return fmt.Errorf("%w: %w", errBadIndex, err)
	}
	return nil
}
