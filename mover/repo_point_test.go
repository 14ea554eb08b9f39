package mover

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
)

func TestPointWireRoundTrip(t *testing.T) {
	rp := &chunkstore.RestorePoint{
		ID: "rp-20261125T231500Z-ab12cd", Time: time.Date(2026, 11, 25, 23, 15, 0, 123456789, time.UTC),
		PGVersion: "15", SystemID: "7441234567890123456", SourceHost: "db1",
		Databases: []chunkstore.DBInfo{{Name: "app", OID: 16384, Size: 1 << 30}, {OID: 1, Size: 7}},
		Size:      1 << 34, StoredSize: 1 << 32, Files: 1500, Tree: []chunk.ID{chunk.Sum([]byte{1}), chunk.Sum([]byte{2})},
		Params: chunk.DefaultParams,
	}
	m, err := pointToWire(rp)
	if err != nil {
		t.Fatal(err)
	}
	got, err := protocol.Decode(protocol.TypePoint, m.Append(nil))
	if err != nil {
		t.Fatal(err)
	}
	back := pointFromWire(got.(*protocol.Point))
	if !reflect.DeepEqual(back, rp) {
		t.Fatalf("round trip: %+v, want %+v", back, rp)
	}
}

// A restore point beyond the wire's limits is refused with too-large, not
// sent as a frame the peer would reject.
func TestPointToWireRefusesOversized(t *testing.T) {
	rp := &chunkstore.RestorePoint{ID: "rp-x", Tree: make([]chunk.ID, protocol.MaxPointTreeChunks+1)}
	_, err := pointToWire(rp)
	if !errors.Is(err, protocol.ErrTooLarge) || protocol.ToWire(err).Code != protocol.CodeTooLarge {
		t.Fatalf("pointToWire = %v", err)
	}
	if _, err := pointToWire(&chunkstore.RestorePoint{ID: "a/b"}); err == nil {
		t.Fatal("accepted a restore point ID with a slash")
	}
}
