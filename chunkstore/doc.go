// Package chunkstore stores chunks and the backups made of them: the Store
// interface and its conformance suite (storetest), the crash-safe local
// store of pack files indexed by immutable sorted runs, which any number of
// processes read and write at once (local.go, pack.go, runs.go; migrate.go
// converts the previous pebble index), chunking statistics (stats.go), and
// the backup repository: restore points, their trees, and backups of a data
// directory or of a running server (repo.go, snapshot.go, backup.go,
// basebackup.go), its WAL archive (wal.go, walrange.go), retention and
// checks (prune.go, check.go), and what monitoring reads of it: the recorded
// outcomes of its operations (status.go) and its health (health.go).
//
// Chunk identity (IDs, codecs, parameters, the chunker) is the leaf package
// chunkstore/chunk, which protocol imports without the store's pebble and
// pgx.
package chunkstore
