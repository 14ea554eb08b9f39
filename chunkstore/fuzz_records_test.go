package chunkstore

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// FuzzRepoRecords fuzzes the repository records no other target covers,
// chosen by kind: index run files (0) and restore point files (1). (The
// tree, pack records and old index locations have targets of their own.)
// One target for both keeps the fuzz time of 'make test' short.
func FuzzRepoRecords(f *testing.F) {
	dir := f.TempDir()
	entries := []runEntry{
		{chunk.Sum([]byte("a")), chunkLoc{Pack: 1 << 63, Offset: 0, StoredLen: 5, PlainLen: 5}},
		{chunk.Sum([]byte("b")), chunkLoc{Pack: 3, Offset: 54, StoredLen: 10, PlainLen: 100, Codec: chunk.CodecZstd}},
	}
	slices.SortFunc(entries, func(a, b runEntry) int { return bytes.Compare(a.id[:], b.id[:]) })
	r, err := writeRun(dir, entries, owner{}, nil)
	if err != nil {
		f.Fatal(err)
	}
	r.release()
	good, err := os.ReadFile(filepath.Join(dir, r.name))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(byte(0), good)
	f.Add(byte(0), good[:len(good)-1])
	f.Add(byte(0), []byte(runMagic))
	f.Add(byte(1), []byte(`{"id":"rp-1","format":1,"tree":["`+chunk.Sum([]byte("t")).String()+`"],"params":{"min":64}}`))
	f.Add(byte(1), []byte(`{"id":"../x","format":1,"databases":[{"name":"a","oid":5}]}`))
	f.Add(byte(1), []byte(`{"format":2}`))
	p := filepath.Join(f.TempDir(), "rp.json")
	f.Fuzz(func(t *testing.T, kind byte, b []byte) {
		if kind%2 == 0 {
			fuzzRun(t, b, filepath.Join(dir, "fuzz.idx"))
		} else {
			fuzzRestorePoint(t, b, p)
		}
	})
}

// fuzzRun opens b as an index run: what is accepted finds each of its IDs
// and writes back to the same bytes.
func fuzzRun(t *testing.T, b []byte, p string) {
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := openRun(p, nil)
	if err != nil {
		return
	}
	defer r.release()
	var entries []runEntry
	for i := range r.n {
		id := chunk.ID(r.id(i))
		if r.search(id) != i {
			t.Fatalf("entry %d: search finds %d", i, r.search(id))
		}
		loc, ok, err := r.find(id)
		if !ok {
			t.Fatalf("entry %d not found", i)
		}
		if err != nil {
			return // a damaged location: reported as corrupt, never re-encoded
		}
		entries = append(entries, runEntry{id, loc})
	}
	dir := filepath.Dir(p)
	w, err := writeRun(dir, entries, owner{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.release()
	defer os.Remove(filepath.Join(dir, w.name))
	again, err := os.ReadFile(filepath.Join(dir, w.name))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, b) {
		t.Fatalf("run re-encodes differently")
	}
}

// fuzzRestorePoint reads b as a restore point file: what is accepted has
// this build's format and survives a round trip.
func fuzzRestorePoint(t *testing.T, b []byte, p string) {
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	rp, err := readPoint(nil, p)
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
	rp2, err := readPoint(nil, p)
	if err != nil || rp2.ID != rp.ID || len(rp2.Tree) != len(rp.Tree) || rp2.Params != rp.Params || !rp2.Time.Equal(rp.Time) {
		t.Fatalf("decode→encode→decode: %+v != %+v (%v)", rp2, rp, err)
	}
}
