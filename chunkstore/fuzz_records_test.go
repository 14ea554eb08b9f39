package chunkstore

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// FuzzRepoRecords fuzzes the repository records no other target covers,
// chosen by kind: the index's keys (0) and restore point files (1). (The
// tree, pack records, index locations and pack lengths have targets of
// their own.) One target for both keeps the fuzz time of 'make test' short.
func FuzzRepoRecords(f *testing.F) {
	f.Add(byte(0), appendChunkKey(nil, chunk.Sum([]byte("a"))))
	f.Add(byte(0), packKey(7))
	f.Add(byte(0), []byte{keyPack, 0, 0})
	f.Add(byte(1), []byte(`{"id":"rp-1","format":1,"tree":["`+chunk.Sum([]byte("t")).String()+`"],"params":{"min":64}}`))
	f.Add(byte(1), []byte(`{"id":"../x","format":1,"databases":[{"name":"a","oid":5}]}`))
	f.Add(byte(1), []byte(`{"format":2}`))
	p := filepath.Join(f.TempDir(), "rp.json")
	f.Fuzz(func(t *testing.T, kind byte, b []byte) {
		if kind%2 == 0 {
			fuzzIndexKey(t, b)
		} else {
			fuzzRestorePoint(t, b, p)
		}
	})
}

// fuzzIndexKey: what parses as a key encodes back to the same key.
func fuzzIndexKey(t *testing.T, k []byte) {
	if id, ok := parseChunkKey(k); ok && !bytes.Equal(appendChunkKey(nil, id), k) {
		t.Fatalf("chunk key %x re-encodes as %x", k, appendChunkKey(nil, id))
	}
	if n, ok := parsePackKey(k); ok && !bytes.Equal(packKey(n), k) {
		t.Fatalf("pack key %x re-encodes as %x", k, packKey(n))
	}
}

// fuzzRestorePoint reads b as a restore point file: what is accepted has
// this build's format and survives a round trip.
func fuzzRestorePoint(t *testing.T, b []byte, p string) {
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
}
