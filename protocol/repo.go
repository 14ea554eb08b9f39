package protocol

import (
	"fmt"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// Messages of repository reads (a staging host reading a repository host's
// restore points and chunks). ListPoints and GetPoint travel on the control
// stream; GetChunks on a fetch stream (StreamFetch), answered there.

// Limits on repository messages.
const (
	MaxPoints          = 16384 // PointList.IDs
	MaxPointIDLen      = MaxTransferIDLen
	MaxPointTextLen    = 255   // Point.PGVersion, SystemID, SourceHost; DBInfo.Name
	MaxPointDatabases  = 8192  // Point.Databases
	MaxPointTreeChunks = 65536 // Point.Tree
)

// ValidPointID returns an error matching ErrBadPath unless id can name a
// restore point on the wire: the rules of ValidTransferID. "latest" passes.
func ValidPointID(id string) error {
	if err := ValidTransferID(id); err != nil {
		return fmt.Errorf("restore point ID: %w", err)
	}
	return nil
}

// ListPoints asks a repository mover for the IDs of its restore points.
type ListPoints struct{}

func (*ListPoints) Type() Type             { return TypeListPoints }
func (*ListPoints) Append(b []byte) []byte { return b }
func (*ListPoints) decode(*decoder)        {}
func (*ListPoints) check() error           { return nil }

// PointList answers ListPoints: every restore point's ID, oldest first.
type PointList struct {
	IDs []string // at most MaxPoints, each ValidPointID
}

func (*PointList) Type() Type { return TypePointList }

func (m *PointList) Append(b []byte) []byte {
	b = appendUvarint(b, uint64(len(m.IDs)))
	for _, id := range m.IDs {
		b = appendString(b, id)
	}
	return b
}

func (m *PointList) decode(d *decoder) {
	n := d.count("IDs", MaxPoints, 2)
	if n == 0 {
		return
	}
	m.IDs = make([]string, n)
	for i := range m.IDs {
		m.IDs[i] = d.string("restore point ID", MaxPointIDLen)
	}
}

func (m *PointList) check() error {
	if len(m.IDs) > MaxPoints {
		return violation("%d restore points above the limit %d", len(m.IDs), MaxPoints)
	}
	for _, id := range m.IDs {
		if err := ValidPointID(id); err != nil {
			return fmt.Errorf("%w: %w", ErrProtocol, err)
		}
	}
	return nil
}

// GetPoint asks for one restore point's metadata and tree chunk IDs.
type GetPoint struct {
	ID string // ValidPointID; "latest" names the newest
}

func (*GetPoint) Type() Type               { return TypeGetPoint }
func (m *GetPoint) Append(b []byte) []byte { return appendString(b, m.ID) }
func (m *GetPoint) decode(d *decoder)      { m.ID = d.string("restore point ID", MaxPointIDLen) }

func (m *GetPoint) check() error {
	if err := ValidPointID(m.ID); err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return nil
}

// PointDB is one database of a restore point.
type PointDB struct {
	Name string // at most MaxPointTextLen bytes; empty if unknown
	OID  uint32
	Size uint64
}

// Point answers GetPoint: the catalog entry of a restore point. Its tree is
// read with GetChunks of Tree, concatenated in order.
type Point struct {
	ID         string // ValidPointID, never "latest"
	Time       int64  // Unix nanoseconds
	PGVersion  string // at most MaxPointTextLen bytes, as SystemID and SourceHost
	SystemID   string
	SourceHost string
	Size       uint64
	StoredSize uint64
	Files      uint64
	Params     chunk.Params // Algorithm at most MaxAlgorithmLen bytes, sizes at most MaxChunkCeil
	Databases  []PointDB    // at most MaxPointDatabases
	Tree       []chunk.ID   // at most MaxPointTreeChunks
}

func (*Point) Type() Type { return TypePoint }

func (m *Point) Append(b []byte) []byte {
	b = appendString(b, m.ID)
	b = appendVarint(b, m.Time)
	b = appendString(b, m.PGVersion)
	b = appendString(b, m.SystemID)
	b = appendString(b, m.SourceHost)
	b = appendUvarint(b, m.Size)
	b = appendUvarint(b, m.StoredSize)
	b = appendUvarint(b, m.Files)
	b = appendString(b, m.Params.Algorithm)
	b = appendUvarint(b, uint64(m.Params.Min))
	b = appendUvarint(b, uint64(m.Params.Avg))
	b = appendUvarint(b, uint64(m.Params.Max))
	b = appendUvarint(b, uint64(len(m.Databases)))
	for _, db := range m.Databases {
		b = appendString(b, db.Name)
		b = appendUvarint(b, uint64(db.OID))
		b = appendUvarint(b, db.Size)
	}
	b = appendUvarint(b, uint64(len(m.Tree)))
	for i := range m.Tree {
		b = append(b, m.Tree[i][:]...)
	}
	return b
}

func (m *Point) decode(d *decoder) {
	m.ID = d.string("restore point ID", MaxPointIDLen)
	m.Time = d.varint("time")
	m.PGVersion = d.string("PostgreSQL version", MaxPointTextLen)
	m.SystemID = d.string("system ID", MaxPointTextLen)
	m.SourceHost = d.string("source host", MaxPointTextLen)
	m.Size = d.uint64("size")
	m.StoredSize = d.uint64("stored size")
	m.Files = d.uint64("files")
	m.Params.Algorithm = d.string("algorithm", MaxAlgorithmLen)
	m.Params.Min = int(d.uvarint("min", chunk.MaxChunkCeil))
	m.Params.Avg = int(d.uvarint("avg", chunk.MaxChunkCeil))
	m.Params.Max = int(d.uvarint("max", chunk.MaxChunkCeil))
	if n := d.count("databases", MaxPointDatabases, 3); n > 0 {
		m.Databases = make([]PointDB, n)
		for i := range m.Databases {
			m.Databases[i].Name = d.string("database name", MaxPointTextLen)
			m.Databases[i].OID = d.uint32("database OID")
			m.Databases[i].Size = d.uint64("database size")
		}
	}
	if n := d.count("tree chunks", MaxPointTreeChunks, chunk.IDSize); n > 0 {
		m.Tree = make([]chunk.ID, n)
		for i := range m.Tree {
			m.Tree[i] = d.hash("tree chunk ID")
		}
	}
}

func (m *Point) check() error {
	if err := ValidPointID(m.ID); err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if m.ID == "latest" {
		return violation(`restore point ID "latest" names no point`)
	}
	for _, s := range []string{m.PGVersion, m.SystemID, m.SourceHost} {
		if len(s) > MaxPointTextLen {
			return violation("restore point text of %d bytes above the limit %d", len(s), MaxPointTextLen)
		}
	}
	p := m.Params
	switch {
	case len(p.Algorithm) > MaxAlgorithmLen:
		return violation("algorithm: %d bytes above the limit %d", len(p.Algorithm), MaxAlgorithmLen)
	case p.Min < 0 || p.Avg < 0 || p.Max < 0 || p.Min > chunk.MaxChunkCeil || p.Avg > chunk.MaxChunkCeil || p.Max > chunk.MaxChunkCeil:
		return violation("chunk sizes %d/%d/%d outside [0, %d]", p.Min, p.Avg, p.Max, chunk.MaxChunkCeil)
	case len(m.Databases) > MaxPointDatabases:
		return violation("%d databases above the limit %d", len(m.Databases), MaxPointDatabases)
	case len(m.Tree) > MaxPointTreeChunks:
		return violation("%d tree chunks above the limit %d", len(m.Tree), MaxPointTreeChunks)
	}
	for _, db := range m.Databases {
		if len(db.Name) > MaxPointTextLen {
			return violation("database name of %d bytes above the limit %d", len(db.Name), MaxPointTextLen)
		}
	}
	return nil
}

// Check reports whether m is within the wire's limits: what a peer would
// refuse, found before sending (an error matching ErrBadPath for an ID the
// wire cannot carry, else a violation).
func (m *Point) Check() error { return m.check() }

var (
	_ message = (*ListPoints)(nil)
	_ message = (*PointList)(nil)
	_ message = (*GetPoint)(nil)
	_ message = (*Point)(nil)
)
