package protocol

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
)

func TestPointFromRepoRoundTrip(t *testing.T) {
	rp := &chunkstore.RestorePoint{
		ID: "rp-20261125T231500Z-ab12cd", Time: time.Date(2026, 11, 25, 23, 15, 0, 123456789, time.UTC),
		PGVersion: "15", SystemID: "7441234567890123456", SourceHost: "db1",
		Databases: []chunkstore.DBInfo{{Name: "app", OID: 16384, Size: 1 << 30}, {OID: 1, Size: 7}},
		Size:      1 << 34, StoredSize: 1 << 32, Files: 1500, Tree: []chunkstore.ID{testID(1), testID(2)},
		Params: chunkstore.DefaultParams,
	}
	m, err := PointFromRepo(rp)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(TypePoint, m.Append(nil))
	if err != nil {
		t.Fatal(err)
	}
	back := got.(*Point).RestorePoint()
	if !reflect.DeepEqual(back, rp) {
		t.Fatalf("round trip: %+v, want %+v", back, rp)
	}
}

// A restore point beyond the wire's limits is refused with too-large, not
// sent as a frame the peer would reject.
func TestPointFromRepoRefusesOversized(t *testing.T) {
	rp := &chunkstore.RestorePoint{ID: "rp-x", Tree: make([]chunkstore.ID, MaxPointTreeChunks+1)}
	_, err := PointFromRepo(rp)
	if !errors.Is(err, ErrTooLarge) || ToWire(err).Code != CodeTooLarge {
		t.Fatalf("PointFromRepo = %v", err)
	}
	if _, err := PointFromRepo(&chunkstore.RestorePoint{ID: "a/b"}); err == nil {
		t.Fatal("accepted a restore point ID with a slash")
	}
}

// Every version this build speaks knows the codecs a repository stores, so
// repository movers send chunks as stored; a codec no version knows is
// never sent as is.
func TestKnowsCodec(t *testing.T) {
	for v := MinVersion; v <= Version; v++ {
		for _, c := range []chunkstore.Codec{chunkstore.CodecNone, chunkstore.CodecZstd} {
			if !KnowsCodec(v, c) {
				t.Errorf("version %d does not know codec %s", v, c)
			}
		}
		if KnowsCodec(v, chunkstore.Codec(200)) {
			t.Errorf("version %d knows codec 200", v)
		}
	}
	if KnowsCodec(0, chunkstore.CodecNone) {
		t.Error("version 0 knows a codec")
	}
}

// TestKnowsCodecS2: S2 is codec 2 from protocol 6 on; a peer below 6 is
// never sent an S2 chunk as is. Version 4, once reserved for it, does not
// know it: no build ever spoke 4 with S2.
func TestKnowsCodecS2(t *testing.T) {
	if S2Version != 6 || S2Version > Version {
		t.Fatalf("S2Version = %d, Version = %d", S2Version, Version)
	}
	for v := uint16(0); v <= Version+1; v++ {
		want := v >= 6
		if got := KnowsCodec(v, chunkstore.CodecS2); got != want {
			t.Errorf("KnowsCodec(%d, s2) = %v, want %v", v, got, want)
		}
	}
	if KnowsCodec(Version, chunkstore.Codec(3)) {
		t.Error("version 6 knows codec 3")
	}
}
