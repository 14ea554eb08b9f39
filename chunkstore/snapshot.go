package chunkstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// NodeType is the kind of a tree entry.
type NodeType uint8

const (
	NodeDir     NodeType = 1
	NodeFile    NodeType = 2
	NodeSymlink NodeType = 3
)

func (t NodeType) String() string {
	switch t {
	case NodeDir:
		return "dir"
	case NodeFile:
		return "file"
	case NodeSymlink:
		return "symlink"
	}
	return fmt.Sprintf("nodetype(%d)", uint8(t))
}

// Node is one entry of a restore point's tree.
type Node struct {
	Path     string // canonical relative slash path; the root directory is implicit
	Type     NodeType
	Mode     uint32 // permission bits (fs.FileMode.Perm())
	UID, GID uint32
	Size     int64      // files: bytes; symlinks: len(Target); dirs: 0
	MTime    int64      // unix nanoseconds
	Target   string     // symlink target, as stored, not followed
	Chunks   []ChunkRef // files: consecutive chunks covering Size bytes
}

// ChunkRef is one chunk of a file: its ID and plain length. (protocol has a
// ChunkRef of its own for the wire; the two are kept apart on purpose.)
type ChunkRef struct {
	ID  chunk.ID
	Len uint32
}

// Tree encoding, version 1 (all integers are unsigned varints unless said):
//
//	magic "PGPTREE" | version byte (1) | node count
//	per node: path len, path | type byte | mode | uid | gid | size |
//	          mtime (signed varint) | target len, target |
//	          chunk count, then per chunk: 32-byte ID, len
//
// Nodes are strictly sorted by Path (byte order), which puts every parent
// before its children, and every parent is a NodeDir earlier in the list.
const (
	treeMagic   = "PGPTREE"
	treeVersion = 1

	// MaxTreeNodes bounds the nodes of one tree (a data directory of
	// 16M files is far beyond any PostgreSQL cluster we export).
	MaxTreeNodes = 1 << 24
	// MaxPathLen bounds a node's path and a symlink's target.
	MaxPathLen = 4096
	// MaxTreeBytes bounds the encoded size of one tree.
	MaxTreeBytes = 4 << 30

	minNodeBytes  = 10 // the smallest encoded node: 1-byte path and 9 one-byte fields
	chunkRefBytes = chunk.IDSize + 1
)

// ErrBadTree is matched by every error DecodeTree returns for malformed
// input.
var ErrBadTree = errors.New("chunkstore: malformed tree")

// ValidPath reports whether p is a canonical relative slash path: not empty,
// no leading or trailing slash, no empty, "." or ".." element, no NUL.
func ValidPath(p string) bool {
	if p == "" || len(p) > MaxPathLen || strings.IndexByte(p, 0) >= 0 {
		return false
	}
	for el := range strings.SplitSeq(p, "/") {
		if el == "" || el == "." || el == ".." {
			return false
		}
	}
	return true
}

// checkTree checks the invariants every stored tree holds.
func checkTree(nodes []Node) error {
	dirs := map[string]bool{}
	for i := range nodes {
		n := &nodes[i]
		if !ValidPath(n.Path) {
			return fmt.Errorf("%w: node %d: path %q is not canonical", ErrBadTree, i, n.Path)
		}
		if i > 0 && nodes[i-1].Path >= n.Path {
			return fmt.Errorf("%w: node %d: %q not sorted after %q", ErrBadTree, i, n.Path, nodes[i-1].Path)
		}
		if parent := path.Dir(n.Path); parent != "." && !dirs[parent] {
			return fmt.Errorf("%w: node %d: %q has no parent directory", ErrBadTree, i, n.Path)
		}
		if n.Mode&^0o7777 != 0 {
			return fmt.Errorf("%w: node %d: mode %o has more than permission bits", ErrBadTree, i, n.Mode)
		}
		if len(n.Target) > MaxPathLen {
			return fmt.Errorf("%w: node %d: symlink target too long", ErrBadTree, i)
		}
		switch n.Type {
		case NodeDir:
			dirs[n.Path] = true
			if n.Size != 0 || n.Target != "" || len(n.Chunks) != 0 {
				return fmt.Errorf("%w: node %d: directory with size, target or chunks", ErrBadTree, i)
			}
		case NodeSymlink:
			if n.Target == "" || n.Size != int64(len(n.Target)) || len(n.Chunks) != 0 {
				return fmt.Errorf("%w: node %d: symlink with bad target, size or chunks", ErrBadTree, i)
			}
		case NodeFile:
			if n.Target != "" {
				return fmt.Errorf("%w: node %d: file with a target", ErrBadTree, i)
			}
			var sum int64
			for _, c := range n.Chunks {
				if c.Len == 0 || c.Len > chunk.MaxChunkCeil {
					return fmt.Errorf("%w: node %d: chunk length %d", ErrBadTree, i, c.Len)
				}
				sum += int64(c.Len)
			}
			if sum != n.Size {
				return fmt.Errorf("%w: node %d: chunks cover %d bytes of %d", ErrBadTree, i, sum, n.Size)
			}
		default:
			return fmt.Errorf("%w: node %d: unknown type %d", ErrBadTree, i, n.Type)
		}
	}
	return nil
}

// EncodeTree encodes nodes, which must satisfy the tree invariants (sorted,
// canonical paths, parents present, file chunks covering their size).
func EncodeTree(nodes []Node) ([]byte, error) {
	if len(nodes) > MaxTreeNodes {
		return nil, fmt.Errorf("%w: %d nodes (max %d)", ErrBadTree, len(nodes), MaxTreeNodes)
	}
	if err := checkTree(nodes); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 64+len(nodes)*64)
	b = append(b, treeMagic...)
	b = append(b, treeVersion)
	b = binary.AppendUvarint(b, uint64(len(nodes)))
	for i := range nodes {
		n := &nodes[i]
		b = binary.AppendUvarint(b, uint64(len(n.Path)))
		b = append(b, n.Path...)
		b = append(b, byte(n.Type))
		b = binary.AppendUvarint(b, uint64(n.Mode))
		b = binary.AppendUvarint(b, uint64(n.UID))
		b = binary.AppendUvarint(b, uint64(n.GID))
		b = binary.AppendUvarint(b, uint64(n.Size))
		b = binary.AppendVarint(b, n.MTime)
		b = binary.AppendUvarint(b, uint64(len(n.Target)))
		b = append(b, n.Target...)
		b = binary.AppendUvarint(b, uint64(len(n.Chunks)))
		for _, c := range n.Chunks {
			b = append(b, c.ID[:]...)
			b = binary.AppendUvarint(b, uint64(c.Len))
		}
		if len(b) > MaxTreeBytes {
			return nil, fmt.Errorf("%w: encoded tree above %d bytes", ErrBadTree, MaxTreeBytes)
		}
	}
	return b, nil
}

// treeReader reads the fields of an encoded tree, checking every length
// against what is left before allocating.
type treeReader struct {
	b   []byte
	err error
}

func (r *treeReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: "+format, append([]any{ErrBadTree}, args...)...)
	}
}

func (r *treeReader) uvarint(max uint64, what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("reading %s", what)
		return 0
	}
	r.b = r.b[n:]
	if v > max {
		r.fail("%s %d above %d", what, v, max)
		return 0
	}
	return v
}

func (r *treeReader) varint(what string) int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("reading %s", what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *treeReader) bytes(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.fail("%s: %d bytes, %d left", what, n, len(r.b))
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *treeReader) byte(what string) byte {
	v := r.bytes(1, what)
	if v == nil {
		return 0
	}
	return v[0]
}

// DecodeTree decodes what EncodeTree produced. Every error matches
// ErrBadTree; the result satisfies the tree invariants.
func DecodeTree(data []byte) ([]Node, error) {
	if len(data) > MaxTreeBytes {
		return nil, fmt.Errorf("%w: %d bytes (max %d)", ErrBadTree, len(data), MaxTreeBytes)
	}
	if !bytes.HasPrefix(data, []byte(treeMagic)) {
		return nil, fmt.Errorf("%w: bad magic", ErrBadTree)
	}
	r := &treeReader{b: data[len(treeMagic):]}
	if v := r.byte("version"); r.err == nil && v != treeVersion {
		return nil, fmt.Errorf("%w: version %d, this build reads %d", ErrBadTree, v, treeVersion)
	}
	count := r.uvarint(MaxTreeNodes, "node count")
	if r.err == nil && count > uint64(len(r.b)/minNodeBytes) {
		r.fail("%d nodes cannot fit in %d bytes", count, len(r.b))
	}
	if r.err != nil {
		return nil, r.err
	}
	nodes := make([]Node, count)
	for i := range nodes {
		n := &nodes[i]
		n.Path = string(r.bytes(int(r.uvarint(MaxPathLen, "path length")), "path"))
		n.Type = NodeType(r.byte("type"))
		n.Mode = uint32(r.uvarint(0o7777, "mode"))
		n.UID = uint32(r.uvarint(1<<32-1, "uid"))
		n.GID = uint32(r.uvarint(1<<32-1, "gid"))
		n.Size = int64(r.uvarint(1<<62, "size"))
		n.MTime = r.varint("mtime")
		n.Target = string(r.bytes(int(r.uvarint(MaxPathLen, "target length")), "target"))
		nc := r.uvarint(uint64(len(r.b)/chunkRefBytes), "chunk count")
		if r.err != nil {
			return nil, fmt.Errorf("node %d: %w", i, r.err)
		}
		if nc > 0 {
			n.Chunks = make([]ChunkRef, nc)
		}
		for j := range n.Chunks {
			copy(n.Chunks[j].ID[:], r.bytes(chunk.IDSize, "chunk ID"))
			n.Chunks[j].Len = uint32(r.uvarint(chunk.MaxChunkCeil, "chunk length"))
		}
		if r.err != nil {
			return nil, fmt.Errorf("node %d: %w", i, r.err)
		}
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last node", ErrBadTree, len(r.b))
	}
	if err := checkTree(nodes); err != nil {
		return nil, err
	}
	return nodes, nil
}

// PutTree encodes nodes, cuts the encoding into content-defined chunks and
// puts them into s; it returns their IDs in order. Unchanged stretches of a
// tree cut to the same chunks, so successive restore points share most of
// their tree chunks. The store compresses each chunk.
func PutTree(ctx context.Context, s Store, nodes []Node, p chunk.Params) ([]chunk.ID, error) {
	enc, err := EncodeTree(nodes)
	if err != nil {
		return nil, err
	}
	var ids []chunk.ID
	err = chunk.Split(enc, p, func(c chunk.Chunk) error {
		id := chunk.Sum(c.Data)
		ids = append(ids, id)
		return s.Put(ctx, id, c.Data)
	})
	if err != nil {
		return nil, fmt.Errorf("storing tree: %w", err)
	}
	return ids, nil
}

// GetTree reads back and decodes a tree stored by PutTree.
func GetTree(ctx context.Context, r Reader, ids []chunk.ID) ([]Node, error) {
	var enc []byte
	for _, id := range ids {
		var err error
		if enc, err = r.Get(ctx, id, enc); err != nil {
			return nil, fmt.Errorf("reading tree chunk %s: %w", id.Short(), err)
		}
		if len(enc) > MaxTreeBytes {
			return nil, fmt.Errorf("%w: above %d bytes", ErrBadTree, MaxTreeBytes)
		}
	}
	return DecodeTree(enc)
}
