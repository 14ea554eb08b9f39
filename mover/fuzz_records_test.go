package mover

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
)

// FuzzMoverRecords fuzzes every on-disk record of the mover, chosen by
// kind: the receiver's pebble records (chunk positions, dedupe locations,
// transfer meta and done), the sender's chunk-list cache, the committed
// tree's manifest and the trust list. Each checks no panic, and that what
// decodes encodes back to the same. One target for all keeps the fuzz
// time of 'make test' short. Seeds stay small: the fuzzer minimizes what
// it derives from them, and the file kinds write a file per run.
func FuzzMoverRecords(f *testing.F) {
	sf := srcFile{Size: 70000, MTime: 5, Ino: 7, CTime: -3, Hash: [32]byte(chunk.Sum([]byte("x"))),
		Chunks: []protocol.ChunkRef{{ID: chunk.Sum([]byte("a")), Len: 65536}, {ID: chunk.Sum([]byte("b")), Len: 70000 - 65536}}}
	params := chunk.DefaultParams.String()
	meta, _ := json.Marshal(transferMeta{Dest: "/srv/d", Params: chunk.DefaultParams, Files: 3, Bytes: 9, Started: time.Unix(1, 0).UTC()})
	done, _ := json.Marshal(transferDone{Dest: "/srv/d", Files: 3, Bytes: 9, Committed: time.Unix(2, 0).UTC()})
	const id = "IDJOMGY-XOWZ6NK-DMOTZ2L-JSHGN7P-SX2XRUO-5BGSHKA-EJBTTLA-LJ7QFQF"
	for _, seed := range []struct {
		kind byte
		b    []byte
	}{
		{recPos, encodePos(posRecord{id: chunk.Sum([]byte("a")), off: 1 << 40, n: 65536})},
		{recPos, make([]byte, 43)},
		{recDedupe, encodeDedupe("/srv/dumps/shop/toc.dat", 4096, 65536)},
		{recDedupe, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{recTransfer, meta},
		{recTransfer, done},
		{recCache, encodeCached(&sf, params)},
		{recCache, encodeCached(&srcFile{}, params)},
		{recManifest, []byte(`{"format":"` + ManifestFormat + `","files":[{"path":"a.dat","size":5,"mode":"0644"}],"bytes":5}`)},
		{recManifest, []byte(`{"format":"` + ManifestFormat + `","files":[{"path":"../outside","size":6}]}`)},
		{recTrust, []byte(`{"version":1,"peers":[{"id":"` + id + `","allow":["send","read"]}]}`)},
		{recTrust, []byte(`{"version":1,"peers":[{"id":"x","allow":["everything"]}]}`)},
	} {
		f.Add(seed.kind, seed.b)
	}
	dir := f.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "a.dat"), []byte("hello"), 0o644); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "outside"), []byte("secret"), 0o644); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, kind byte, b []byte) {
		switch kind % recKinds {
		case recPos:
			fuzzPos(t, b)
		case recDedupe:
			fuzzDedupe(t, b)
		case recTransfer:
			fuzzTransfer(t, b)
		case recCache:
			fuzzCache(t, b, &sf, params)
		case recManifest:
			fuzzManifest(t, b, tree)
		case recTrust:
			fuzzTrust(t, b, filepath.Join(dir, "trust.json"))
		}
	})
}

const (
	recPos byte = iota
	recDedupe
	recTransfer
	recCache
	recManifest
	recTrust
	recKinds
)

func fuzzPos(t *testing.T, b []byte) {
	r, ok := decodePos(b)
	if !ok {
		return
	}
	if enc := encodePos(r); !bytes.Equal(enc, b) {
		t.Fatalf("re-encoding differs: %x != %x", enc, b)
	}
}

func fuzzDedupe(t *testing.T, b []byte) {
	abs, off, n, ok := decodeDedupe(b)
	if !ok {
		return
	}
	// A uvarint has several encodings: compare decoded values.
	a2, o2, n2, ok := decodeDedupe(encodeDedupe(abs, off, n))
	if !ok || a2 != abs || o2 != off || n2 != n {
		t.Fatalf("decode→encode→decode: %q %d %d != %q %d %d", a2, o2, n2, abs, off, n)
	}
}

func fuzzTransfer(t *testing.T, b []byte) {
	var m transferMeta
	if json.Unmarshal(b, &m) == nil {
		enc, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", m, err)
		}
		var m2 transferMeta
		if err := json.Unmarshal(enc, &m2); err != nil || m2.Dest != m.Dest || m2.Peer != m.Peer || m2.Params != m.Params ||
			m2.Files != m.Files || m2.Bytes != m.Bytes || !m2.Started.Equal(m.Started) {
			t.Fatalf("decode→encode→decode: %+v != %+v (%v)", m2, m, err)
		}
	}
	var d transferDone
	if json.Unmarshal(b, &d) == nil {
		enc, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", d, err)
		}
		var d2 transferDone
		if err := json.Unmarshal(enc, &d2); err != nil || d2.ManifestHash != d.ManifestHash || d2.Files != d.Files || d2.Dest != d.Dest {
			t.Fatalf("decode→encode→decode: %+v != %+v (%v)", d2, d, err)
		}
	}
}

// fuzzCache decodes b as the cached chunk list of an empty file and of sf
// (a record matches only the file it describes).
func fuzzCache(t *testing.T, b []byte, sf *srcFile, params string) {
	for _, probe := range []srcFile{{}, {Size: sf.Size, MTime: sf.MTime, Ino: sf.Ino, CTime: sf.CTime}} {
		got := probe
		if !decodeCached(b, &got, params) {
			continue
		}
		again := probe
		if !decodeCached(encodeCached(&got, params), &again, params) || !reflect.DeepEqual(again.Chunks, got.Chunks) || again.Hash != got.Hash {
			t.Fatalf("decode→encode→decode differs: %+v != %+v", again, got)
		}
		var total int64
		for _, c := range got.Chunks {
			total += int64(c.Len)
		}
		if total != got.Size {
			t.Fatalf("chunks cover %d bytes of a %d-byte file", total, got.Size)
		}
	}
}

// fuzzManifest writes b as tree's manifest, reads it and verifies the tree
// against it: whatever the manifest names, nothing outside the tree is read.
func fuzzManifest(t *testing.T, b []byte, tree string) {
	if err := os.WriteFile(filepath.Join(tree, ManifestName), b, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := ReadManifest(tree)
	if err != nil {
		return
	}
	if rep, _ := Verify(context.Background(), tree); rep != nil && rep.Bytes > 5*int64(len(m.Files)) {
		t.Fatalf("Verify read %d bytes: more than the tree holds", rep.Bytes)
	}
	enc, err := json.Marshal(m)
	if err != nil {
		t.Fatalf("re-encoding: %v", err)
	}
	if err := os.WriteFile(filepath.Join(tree, ManifestName), enc, 0o644); err != nil {
		t.Fatal(err)
	}
	m2, err := ReadManifest(tree)
	if err != nil || len(m2.Files) != len(m.Files) || m2.Bytes != m.Bytes {
		t.Fatalf("decode→encode→decode: %+v != %+v (%v)", m2, m, err)
	}
}

// fuzzTrust reads b as trust.json: no peer is admitted with a zero ID,
// under another ID, or with unknown permissions.
func fuzzTrust(t *testing.T, b []byte, p string) {
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	peers, _, err := readTrustFile(p)
	if err != nil {
		return
	}
	for pid, tp := range peers {
		if pid.IsZero() || tp.ID != pid {
			t.Fatalf("peer %v listed under %v", tp.ID, pid)
		}
		if tp.Perms&^PermAll != 0 {
			t.Fatalf("unknown permission bits %b accepted", tp.Perms)
		}
	}
}
