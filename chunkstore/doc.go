// Package chunkstore is pgporter's content-addressed chunk engine: a
// content-defined chunker (FastCDC with a gear hash and normalized chunking),
// chunk IDs (BLAKE3-256 of the plain content), per-chunk zstd compression, and
// a crash-safe local store made of append-only pack files indexed by pebble.
//
// The mover, the backup repository and the FUSE mount all build on it. It is
// not a file format for whole trees: trees (restore points, transfer
// manifests) are built by their owners out of chunk lists.
package chunkstore
