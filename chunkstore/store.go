package chunkstore

import (
	"context"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// Info describes a stored chunk.
type Info struct {
	PlainLen  int         // size of the plain content
	StoredLen int         // size at rest, after compression
	Codec     chunk.Codec // how it is stored
}

// Reader is the read side of a chunk store.
//
// Every method verifies what it returns: Get never hands out bytes that do
// not hash to the requested ID; it returns a *CorruptChunkError instead.
// A chunk that is not held gives an error matching ErrNotFound.
type Reader interface {
	Has(ctx context.Context, id chunk.ID) (bool, error)
	// HasMany reports, for each of ids, whether it is held. The result has
	// len(ids) entries.
	HasMany(ctx context.Context, ids []chunk.ID) ([]bool, error)
	// Get appends the plain content of id to dst and returns it. The caller
	// owns the result.
	Get(ctx context.Context, id chunk.ID, dst []byte) ([]byte, error)
}

// RawReader is a store that hands out chunks as they are stored, for a
// caller that passes them on to a reader that decodes and verifies them (a
// repository mover answering a fetch): the store neither decodes nor hashes
// them, so a corrupt chunk is found by whoever decodes it, not here.
type RawReader interface {
	// GetStored appends the stored bytes of id to dst and returns them
	// with how they are stored (Info.Codec, PlainLen, StoredLen). The
	// record's header is checked against the index (ID, codec, lengths), so
	// the lengths are safe to trust; the bytes are not verified and may not
	// decode to content that hashes to id. A record that cannot be id's
	// gives a *CorruptChunkError, a chunk not held an error matching
	// ErrNotFound; on error dst is returned unchanged.
	GetStored(ctx context.Context, id chunk.ID, dst []byte) ([]byte, Info, error)
}

// Store is a chunk store that can also write, enumerate and scrub.
type Store interface {
	Reader
	// Put stores data under its ID (computed by the caller, checked by the
	// store). Storing a chunk already held is a cheap no-op. A chunk is
	// readable when Put returns and durable after Flush returns. Put does
	// not retain data.
	Put(ctx context.Context, id chunk.ID, data []byte) error
	// Flush makes every chunk Put so far durable.
	Flush(ctx context.Context) error
	// Iterate calls fn for every durable chunk, each once, in a stable
	// order (by ID in a plain Local, by object ID in an encrypted one),
	// until fn returns an error, which Iterate returns.
	Iterate(ctx context.Context, fn func(chunk.ID, Info) error) error
	// Verify reads back every chunk and checks its hash. It reports each
	// bad chunk to bad (which may be nil) and returns the totals; a
	// non-nil error means the scrub itself could not complete.
	Verify(ctx context.Context, bad func(chunk.ID, error)) (VerifyStats, error)
	// Close flushes and releases the store. It may be called twice.
	Close() error
}

// VerifyStats are the totals of a Verify run.
type VerifyStats struct {
	Chunks     int   // chunks checked
	PlainBytes int64 // plain bytes checked
	Corrupt    int   // chunks that failed
}
