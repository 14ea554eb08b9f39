package chunk

import (
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/zeebo/blake3"
)

// IDSize is the size in bytes of a chunk ID.
const IDSize = 32

// ID names a chunk: the BLAKE3-256 hash of its plain (uncompressed) content.
type ID [IDSize]byte

// Sum returns the ID of data.
func Sum(data []byte) ID {
	return ID(blake3.Sum256(data))
}

// String returns the ID in lower-case hex.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 12 hex digits, for logs.
func (id ID) Short() string { return hex.EncodeToString(id[:6]) }

// IsZero reports whether id is the zero ID, which names no chunk.
func (id ID) IsZero() bool { return id == ID{} }

// ParseID parses the hex form produced by String.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*IDSize {
		return id, fmt.Errorf("chunkstore: parsing ID %q: want %d hex digits, got %d", s, 2*IDSize, len(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("chunkstore: parsing ID %q: %w", s, err)
	}
	return id, nil
}

// MarshalText implements encoding.TextMarshaler (hex).
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler (hex).
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// ErrNotFound is returned when a store does not hold a chunk.
var ErrNotFound = errors.New("chunkstore: chunk not found")

// CorruptChunkError reports a chunk whose stored bytes do not hash to its ID,
// or cannot be decoded. It is never retryable: the stored copy is bad.
type CorruptChunkError struct {
	// ID is the chunk's, or zero where it cannot be known: a sealed record
	// of an encrypted store that does not open (Err then names its object).
	ID  ID
	Err error // what was wrong: hash mismatch, decode failure, bad record
}

func (e *CorruptChunkError) Error() string {
	if e.ID == (ID{}) {
		return fmt.Sprintf("chunkstore: a chunk is corrupt: %v", e.Err)
	}
	return fmt.Sprintf("chunkstore: chunk %s is corrupt: %v", e.ID, e.Err)
}

func (e *CorruptChunkError) Unwrap() error { return e.Err }

// ErrHashMismatch is the Err of a CorruptChunkError whose content does not
// hash to its ID.
var ErrHashMismatch = errors.New("content does not match its BLAKE3 hash")

// VerifyContent returns a *CorruptChunkError unless data hashes to id.
func VerifyContent(id ID, data []byte) error {
	if Sum(data) != id {
		return &CorruptChunkError{ID: id, Err: ErrHashMismatch}
	}
	return nil
}
