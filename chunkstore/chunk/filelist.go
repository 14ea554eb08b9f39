package chunk

import (
	"encoding/binary"

	"github.com/zeebo/blake3"
)

// FileListContext is the BLAKE3 derive-key context of FileListHash: it keeps
// a chunk-list hash from ever equalling a content hash.
const FileListContext = "pgporter file chunk list v1"

// FileListHash hashes a file as the ordered list of its chunks, what a
// manifest of format 2 and protocol 3 call a file's hash: BLAKE3-256 in
// derive-key mode (FileListContext) of uvarint(size), then ID(32) ‖
// uint32-be(length) for each chunk in order. It costs 36 bytes of hashing per
// chunk, so a file's bytes are hashed once, for their chunk IDs. The zero
// value is not usable; call NewFileListHash. Not safe for concurrent use.
type FileListHash struct {
	h   *blake3.Hasher
	buf [IDSize + 4]byte
}

// NewFileListHash starts the hash of a file of size bytes.
func NewFileListHash(size uint64) *FileListHash {
	l := &FileListHash{h: blake3.NewDeriveKey(FileListContext)}
	l.h.Write(binary.AppendUvarint(l.buf[:0], size))
	return l
}

// Add appends the next chunk of the file.
func (l *FileListHash) Add(id ID, n uint32) {
	copy(l.buf[:], id[:])
	binary.BigEndian.PutUint32(l.buf[IDSize:], n)
	l.h.Write(l.buf[:])
}

// Sum returns the hash of the chunks added so far. More may be added after.
func (l *FileListHash) Sum() [32]byte {
	var out [32]byte
	l.h.Sum(out[:0])
	return out
}
