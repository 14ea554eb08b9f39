package protocol

import (
	"testing"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// Every version this build speaks knows the codecs a repository stores, so
// repository movers send chunks as stored; a codec no version knows is
// never sent as is.
func TestKnowsCodec(t *testing.T) {
	for v := MinVersion; v <= Version; v++ {
		for _, c := range []chunk.Codec{chunk.CodecNone, chunk.CodecZstd} {
			if !KnowsCodec(v, c) {
				t.Errorf("version %d does not know codec %s", v, c)
			}
		}
		if KnowsCodec(v, chunk.Codec(200)) {
			t.Errorf("version %d knows codec 200", v)
		}
	}
	if KnowsCodec(0, chunk.CodecNone) {
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
		if got := KnowsCodec(v, chunk.CodecS2); got != want {
			t.Errorf("KnowsCodec(%d, s2) = %v, want %v", v, got, want)
		}
	}
	if KnowsCodec(Version, chunk.Codec(3)) {
		t.Error("version 6 knows codec 3")
	}
}
