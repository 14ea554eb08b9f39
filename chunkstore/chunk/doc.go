// Package chunk is chunk identity, the leaf under pgporter's chunk engine: a
// content-defined chunker (FastCDC with a gear hash and normalized
// chunking), chunk IDs (BLAKE3-256 of the plain content), per-chunk
// compression (zstd at several levels, S2) with decoding capped against
// hostile frames, chunking parameters, and the file chunk-list hash of
// manifests. It imports no other pgporter package: protocol, chunkstore and
// the mover build on it.
package chunk
