package chunkstore

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// FuzzIndexKeys checks the index's key parsers (chunk and pack keys): no
// panic, and what parses encodes back to the same key.
func FuzzIndexKeys(f *testing.F) {
	f.Add(appendChunkKey(nil, Sum([]byte("a"))))
	f.Add(packKey(7))
	f.Add([]byte{keyPack, 0, 0})
	f.Fuzz(func(t *testing.T, k []byte) {
		if id, ok := parseChunkKey(k); ok && !bytes.Equal(appendChunkKey(nil, id), k) {
			t.Fatalf("chunk key %x re-encodes as %x", k, appendChunkKey(nil, id))
		}
		if n, ok := parsePackKey(k); ok && !bytes.Equal(packKey(n), k) {
			t.Fatalf("pack key %x re-encodes as %x", k, packKey(n))
		}
	})
}

// FuzzRestorePoint reads its input as a restore point file: no panic, and
// what is accepted has this build's format and survives a round trip.
func FuzzRestorePoint(f *testing.F) {
	f.Add([]byte(`{"id":"rp-1","format":1,"tree":["` + Sum([]byte("t")).String() + `"],"params":{"min":64}}`))
	f.Add([]byte(`{"id":"../x","format":1,"databases":[{"name":"a","oid":5}]}`))
	f.Add([]byte(`{"format":2}`))
	p := filepath.Join(f.TempDir(), "rp.json")
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		rp, err := readPoint(p)
		if err != nil {
			return
		}
		if rp.Format != pointFormat {
			t.Fatalf("accepted format %d", rp.Format)
		}
		enc, err := json.Marshal(rp)
		if err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		if err := os.WriteFile(p, enc, 0o600); err != nil {
			t.Fatal(err)
		}
		rp2, err := readPoint(p)
		if err != nil || rp2.ID != rp.ID || len(rp2.Tree) != len(rp.Tree) || rp2.Params != rp.Params || !rp2.Time.Equal(rp.Time) {
			t.Fatalf("decode→encode→decode: %+v != %+v (%v)", rp2, rp, err)
		}
	})
}
