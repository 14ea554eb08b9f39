package protocol

import (
	"fmt"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// Messages of the WAL archive (version 9), between pgporter wal-fetch or
// wal-push and a repository mover. GetWAL and WALRecord travel on the
// control stream: a client reads an archived file's record, then its
// chunks with GetChunks on a fetch stream. A push takes an archive stream
// (StreamArchive) of its own: PushWAL, answered with WALNeed or WALPushed;
// then the ChunkData frames WALNeed asked for, answered with WALPushed once
// the file is durable in the repository.

// Limits on WAL archive messages.
const (
	// MaxWALNameLen bounds a WAL file's name on the wire; PostgreSQL's
	// longest, a backup history file, has 40 bytes.
	MaxWALNameLen = 64
	// MaxWALSize bounds a WAL file's size: segments are at most 1 GiB
	// (initdb --wal-segsize).
	MaxWALSize = 1 << 30
	// MaxWALChunks bounds a WAL file's chunk list (WALRecord.Chunks) and
	// WALNeed.Chunks: the chunker's minimum (16 KiB) cuts MaxWALSize into
	// at most 65,536; twice that leaves room.
	MaxWALChunks = 1 << 17
)

// ValidWALName returns an error matching ErrBadPath unless name can name a
// WAL file on the wire: the rules of ValidTransferID, at most MaxWALNameLen
// bytes. A repository further requires one of PostgreSQL's WAL file names.
func ValidWALName(name string) error {
	if len(name) > MaxWALNameLen {
		return fmt.Errorf("%w: WAL file name of %d bytes above the limit %d", ErrBadPath, len(name), MaxWALNameLen)
	}
	if err := ValidTransferID(name); err != nil {
		return fmt.Errorf("WAL file name: %w", err)
	}
	return nil
}

// GetWAL asks a repository mover for the record of an archived WAL file.
// It is answered with WALRecord, or Error not-found when the archive does
// not hold that name.
type GetWAL struct {
	Name string // ValidWALName
}

func (*GetWAL) Type() Type               { return TypeGetWAL }
func (m *GetWAL) Append(b []byte) []byte { return appendString(b, m.Name) }
func (m *GetWAL) decode(d *decoder)      { m.Name = d.string("WAL file name", MaxWALNameLen) }

func (m *GetWAL) check() error {
	if err := ValidWALName(m.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return nil
}

// WALRecord describes one WAL file: its content is the plain content of
// Chunks, concatenated in order. It answers GetWAL; PushWAL offers one.
type WALRecord struct {
	Name   string     // ValidWALName
	Size   uint64     // at most MaxWALSize; the chunks' lengths add up to it
	Hash   [32]byte   // the chunk-list hash (chunk.FileListHash) of Chunks and Size
	Chunks []ChunkRef // at most MaxWALChunks, each 1 to MaxChunkCeil bytes
}

func (*WALRecord) Type() Type { return TypeWALRecord }

func (m *WALRecord) Append(b []byte) []byte {
	b = appendString(b, m.Name)
	b = appendUvarint(b, m.Size)
	b = append(b, m.Hash[:]...)
	return appendChunkRefs(b, m.Chunks)
}

func (m *WALRecord) decode(d *decoder) {
	m.Name = d.string("WAL file name", MaxWALNameLen)
	m.Size = d.uvarint("size", MaxWALSize)
	m.Hash = d.hash("hash")
	m.Chunks = d.chunkRefs(MaxWALChunks)
}

// check verifies the limits and that the lengths add up to Size. The hash
// is the receiver's to compute: it needs the whole list.
func (m *WALRecord) check() error {
	if err := ValidWALName(m.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	switch {
	case m.Size > MaxWALSize:
		return violation("WAL file of %d bytes above the limit %d", m.Size, MaxWALSize)
	case len(m.Chunks) > MaxWALChunks:
		return violation("%d chunks above the limit %d", len(m.Chunks), MaxWALChunks)
	}
	var sum uint64
	for i, c := range m.Chunks {
		if c.Len == 0 || c.Len > chunk.MaxChunkCeil {
			return violation("chunk %d: length %d outside [1, %d]", i, c.Len, chunk.MaxChunkCeil)
		}
		sum += uint64(c.Len)
	}
	if sum != m.Size {
		return violation("chunks of %d bytes in all, the WAL file has %d", sum, m.Size)
	}
	return nil
}

// PushWAL opens an archive stream: the client offers the WAL file it
// describes. Encoded as WALRecord.
type PushWAL struct{ WALRecord }

func (*PushWAL) Type() Type { return TypePushWAL }

// WALNeed answers PushWAL with the chunks the repository lacks, by index
// in PushWAL.Chunks: the client sends a ChunkData for each, in this order,
// on the same stream. An ID listed more than once in the offer is asked
// for at one index only; an empty list asks for nothing.
type WALNeed struct {
	Chunks []uint32 // at most MaxWALChunks, strictly increasing, each below MaxWALChunks
}

func (*WALNeed) Type() Type { return TypeWALNeed }

func (m *WALNeed) Append(b []byte) []byte {
	b = appendUvarint(b, uint64(len(m.Chunks)))
	for _, c := range m.Chunks {
		b = appendUvarint(b, uint64(c))
	}
	return b
}

func (m *WALNeed) decode(d *decoder) {
	n := d.count("chunks", MaxWALChunks, 1)
	if n == 0 {
		return
	}
	m.Chunks = make([]uint32, n)
	for i := range m.Chunks {
		m.Chunks[i] = uint32(d.uvarint("chunk index", MaxWALChunks-1))
	}
}

func (m *WALNeed) check() error {
	if len(m.Chunks) > MaxWALChunks {
		return violation("%d chunks above the limit %d", len(m.Chunks), MaxWALChunks)
	}
	for i, c := range m.Chunks {
		if c >= MaxWALChunks {
			return violation("chunk index %d above the limit %d", c, MaxWALChunks-1)
		}
		if i > 0 && c <= m.Chunks[i-1] {
			return violation("chunk indexes not increasing: %d after %d", c, m.Chunks[i-1])
		}
	}
	return nil
}

// WALPushed ends a push: the WAL file is durable in the repository.
// Already says that the repository held that name, with the same content,
// before this push.
type WALPushed struct {
	Already bool
}

func (*WALPushed) Type() Type               { return TypeWALPushed }
func (m *WALPushed) Append(b []byte) []byte { return appendBool(b, m.Already) }
func (m *WALPushed) decode(d *decoder)      { m.Already = d.bool("already") }
func (*WALPushed) check() error             { return nil }

var (
	_ message = (*GetWAL)(nil)
	_ message = (*WALRecord)(nil)
	_ message = (*PushWAL)(nil)
	_ message = (*WALNeed)(nil)
	_ message = (*WALPushed)(nil)
)
