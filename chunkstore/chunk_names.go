package chunkstore

import "github.com/pgporter/pgporter/chunkstore/chunk"

// Chunk identity (IDs, codecs, parameters, the chunker) lives in the leaf
// package chunkstore/chunk, which protocol imports without pulling in the
// store's pebble and pgx (issue 18). These names forward to it, so that
// chunkstore's callers keep compiling while they move to chunk's own.

type (
	Chunk             = chunk.Chunk
	Chunker           = chunk.Chunker
	Codec             = chunk.Codec
	CorruptChunkError = chunk.CorruptChunkError
	FileListHash      = chunk.FileListHash
	ID                = chunk.ID
	Level             = chunk.Level
	Params            = chunk.Params
)

const (
	AlgorithmGearV1 = chunk.AlgorithmGearV1
	CEncoder        = chunk.CEncoder
	CodecNone       = chunk.CodecNone
	CodecS2         = chunk.CodecS2
	CodecZstd       = chunk.CodecZstd
	DecodeSlack     = chunk.DecodeSlack
	FileListContext = chunk.FileListContext
	IDSize          = chunk.IDSize
	LevelBest       = chunk.LevelBest
	LevelBetter     = chunk.LevelBetter
	LevelDefault    = chunk.LevelDefault
	LevelFast1      = chunk.LevelFast1
	LevelFast4      = chunk.LevelFast4
	LevelFastest    = chunk.LevelFastest
	LevelNone       = chunk.LevelNone
	LevelS2         = chunk.LevelS2
	MaxChunkCeil    = chunk.MaxChunkCeil
	MinChunkFloor   = chunk.MinChunkFloor
)

var (
	Compress        = chunk.Compress
	Decompress      = chunk.Decompress
	DefaultParams   = chunk.DefaultParams
	ErrHashMismatch = chunk.ErrHashMismatch
	ErrNotFound     = chunk.ErrNotFound
	ErrTooLarge     = chunk.ErrTooLarge
	MinAllocSize    = chunk.MinAllocSize
	NewChunker      = chunk.NewChunker
	NewFileListHash = chunk.NewFileListHash
	ParseID         = chunk.ParseID
	ParseLevel      = chunk.ParseLevel
	Split           = chunk.Split
	Sum             = chunk.Sum
	VerifyContent   = chunk.VerifyContent
)
