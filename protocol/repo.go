package protocol

import (
	"errors"
	"fmt"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
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
	Params     chunkstore.Params // Algorithm at most MaxAlgorithmLen bytes, sizes at most MaxChunkCeil
	Databases  []PointDB         // at most MaxPointDatabases
	Tree       []chunkstore.ID   // at most MaxPointTreeChunks
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
	m.Params.Min = int(d.uvarint("min", chunkstore.MaxChunkCeil))
	m.Params.Avg = int(d.uvarint("avg", chunkstore.MaxChunkCeil))
	m.Params.Max = int(d.uvarint("max", chunkstore.MaxChunkCeil))
	if n := d.count("databases", MaxPointDatabases, 3); n > 0 {
		m.Databases = make([]PointDB, n)
		for i := range m.Databases {
			m.Databases[i].Name = d.string("database name", MaxPointTextLen)
			m.Databases[i].OID = d.uint32("database OID")
			m.Databases[i].Size = d.uint64("database size")
		}
	}
	if n := d.count("tree chunks", MaxPointTreeChunks, chunkstore.IDSize); n > 0 {
		m.Tree = make([]chunkstore.ID, n)
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
	case p.Min < 0 || p.Avg < 0 || p.Max < 0 || p.Min > chunkstore.MaxChunkCeil || p.Avg > chunkstore.MaxChunkCeil || p.Max > chunkstore.MaxChunkCeil:
		return violation("chunk sizes %d/%d/%d outside [0, %d]", p.Min, p.Avg, p.Max, chunkstore.MaxChunkCeil)
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

// PointFromRepo converts a repository's restore point to its wire form. It
// fails with an error matching ErrTooLarge when rp exceeds a wire limit
// (ErrBadPath for an ID the wire cannot carry).
func PointFromRepo(rp *chunkstore.RestorePoint) (*Point, error) {
	m := &Point{
		ID: rp.ID, Time: rp.Time.UnixNano(), PGVersion: rp.PGVersion, SystemID: rp.SystemID, SourceHost: rp.SourceHost,
		Size: uint64(max(rp.Size, 0)), StoredSize: uint64(max(rp.StoredSize, 0)), Files: uint64(max(rp.Files, 0)),
		Params: rp.Params, Tree: rp.Tree,
	}
	for _, db := range rp.Databases {
		m.Databases = append(m.Databases, PointDB{Name: db.Name, OID: db.OID, Size: uint64(max(db.Size, 0))})
	}
	if err := m.check(); err != nil {
		if !errors.Is(err, ErrBadPath) {
			err = fmt.Errorf("%w: %w", ErrTooLarge, err)
		}
		return nil, fmt.Errorf("restore point %s: %w", rp.ID, err)
	}
	return m, nil
}

// RestorePoint converts m back to the repository's form.
func (m *Point) RestorePoint() *chunkstore.RestorePoint {
	rp := &chunkstore.RestorePoint{
		ID: m.ID, Time: time.Unix(0, m.Time).UTC(), PGVersion: m.PGVersion, SystemID: m.SystemID, SourceHost: m.SourceHost,
		Size: int64(m.Size), StoredSize: int64(m.StoredSize), Files: int(m.Files), Params: m.Params, Tree: m.Tree,
	}
	for _, db := range m.Databases {
		rp.Databases = append(rp.Databases, chunkstore.DBInfo{Name: db.Name, OID: db.OID, Size: int64(db.Size)})
	}
	return rp
}

var (
	_ message = (*ListPoints)(nil)
	_ message = (*PointList)(nil)
	_ message = (*GetPoint)(nil)
	_ message = (*Point)(nil)
)
