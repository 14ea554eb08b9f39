package chunk

import (
	"encoding/binary"
	"encoding/hex"
	"testing"

	"github.com/zeebo/blake3"
)

func TestFileListHash(t *testing.T) {
	a, b := Sum([]byte("a")), Sum([]byte("b"))
	sum := func(size uint64, ids []ID, lens []uint32) [32]byte {
		l := NewFileListHash(size)
		for i := range ids {
			l.Add(ids[i], lens[i])
		}
		return l.Sum()
	}
	// The definition, spelled out: derive-key BLAKE3 of uvarint(size), then
	// ID ‖ uint32-be(len) per chunk.
	var msg []byte
	msg = binary.AppendUvarint(msg, 300)
	msg = append(msg, a[:]...)
	msg = binary.BigEndian.AppendUint32(msg, 100)
	msg = append(msg, b[:]...)
	msg = binary.BigEndian.AppendUint32(msg, 200)
	var want [32]byte
	blake3.DeriveKey(FileListContext, msg, want[:])
	got := sum(300, []ID{a, b}, []uint32{100, 200})
	if got != want {
		t.Fatalf("FileListHash = %x, want %x", got, want)
	}
	// Pinned, so that a change of definition cannot go unnoticed: protocol 3
	// and manifest format 2 depend on it.
	if h := hex.EncodeToString(got[:]); h != pinnedFileListHash {
		t.Fatalf("FileListHash changed: %s", h)
	}
	for name, other := range map[string][32]byte{
		"order":  sum(300, []ID{b, a}, []uint32{100, 200}),
		"length": sum(300, []ID{a, b}, []uint32{101, 199}),
		"size":   sum(301, []ID{a, b}, []uint32{100, 200}),
		"fewer":  sum(300, []ID{a}, []uint32{100}),
	} {
		if other == got {
			t.Errorf("%s: hash does not change", name)
		}
	}
	// An empty file hashes its size only, and never equals a content hash.
	empty := sum(0, nil, nil)
	if empty == blake3.Sum256(nil) || empty == blake3.Sum256([]byte{0}) {
		t.Fatal("empty file list hash equals a plain BLAKE3")
	}
	// Sum does not end the hash.
	l := NewFileListHash(300)
	l.Add(a, 100)
	_ = l.Sum()
	l.Add(b, 200)
	if l.Sum() != got {
		t.Fatal("Sum changed the running hash")
	}
}

const pinnedFileListHash = "41d344c28c2ee1682cc1505e8f70346f853ea70e9fc942b267bdefc3a2e5c02f"
