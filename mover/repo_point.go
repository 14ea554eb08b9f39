package mover

import (
	"errors"
	"fmt"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/protocol"
)

// pointToWire converts a repository's restore point to its wire form. It
// fails with an error matching protocol.ErrTooLarge when rp exceeds a wire
// limit (protocol.ErrBadPath for an ID the wire cannot carry).
func pointToWire(rp *chunkstore.RestorePoint) (*protocol.Point, error) {
	m := &protocol.Point{
		ID: rp.ID, Time: rp.Time.UnixNano(), PGVersion: rp.PGVersion, SystemID: rp.SystemID, SourceHost: rp.SourceHost,
		Size: uint64(max(rp.Size, 0)), StoredSize: uint64(max(rp.StoredSize, 0)), Files: uint64(max(rp.Files, 0)),
		Params: rp.Params, Tree: rp.Tree,
	}
	for _, db := range rp.Databases {
		m.Databases = append(m.Databases, protocol.PointDB{Name: db.Name, OID: db.OID, Size: uint64(max(db.Size, 0))})
	}
	if err := m.Check(); err != nil {
		if !errors.Is(err, protocol.ErrBadPath) {
			err = fmt.Errorf("%w: %w", protocol.ErrTooLarge, err)
		}
		return nil, fmt.Errorf("restore point %s: %w", rp.ID, err)
	}
	return m, nil
}

// pointFromWire converts m back to the repository's form.
func pointFromWire(m *protocol.Point) *chunkstore.RestorePoint {
	rp := &chunkstore.RestorePoint{
		ID: m.ID, Time: time.Unix(0, m.Time).UTC(), PGVersion: m.PGVersion, SystemID: m.SystemID, SourceHost: m.SourceHost,
		Size: int64(m.Size), StoredSize: int64(m.StoredSize), Files: int(m.Files), Params: m.Params, Tree: m.Tree,
	}
	for _, db := range m.Databases {
		rp.Databases = append(rp.Databases, chunkstore.DBInfo{Name: db.Name, OID: db.OID, Size: int64(db.Size)})
	}
	return rp
}
