package chunkstore_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
)

func sampleTree() []chunkstore.Node {
	id1, id2 := chunk.Sum([]byte("one")), chunk.Sum([]byte("two"))
	return []chunkstore.Node{
		{Path: "PG_VERSION", Type: chunkstore.NodeFile, Mode: 0o600, UID: 26, GID: 26, Size: 3, MTime: 1_700_000_000_123_456_789,
			Chunks: []chunkstore.ChunkRef{{ID: id1, Len: 3}}},
		{Path: "a", Type: chunkstore.NodeDir, Mode: 0o700, MTime: -5},
		{Path: "a-b", Type: chunkstore.NodeFile, Mode: 0o644},
		{Path: "a/b", Type: chunkstore.NodeFile, Mode: 0o600, Size: 70000,
			Chunks: []chunkstore.ChunkRef{{ID: id1, Len: 65536}, {ID: id2, Len: 4464}}},
		{Path: "pg_tblspc", Type: chunkstore.NodeDir, Mode: 0o700},
		{Path: "pg_tblspc/16384", Type: chunkstore.NodeSymlink, Mode: 0o777, Size: 8, Target: "/srv/ts1"},
	}
}

func TestTreeRoundTrip(t *testing.T) {
	nodes := sampleTree()
	enc, err := chunkstore.EncodeTree(nodes)
	require.NoError(t, err)
	got, err := chunkstore.DecodeTree(enc)
	require.NoError(t, err)
	require.Equal(t, nodes, got)

	empty, err := chunkstore.EncodeTree(nil)
	require.NoError(t, err)
	got, err = chunkstore.DecodeTree(empty)
	require.NoError(t, err)
	require.Empty(t, got)
}

func TestEncodeTreeRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func([]chunkstore.Node) []chunkstore.Node
	}{
		{"unsorted", func(n []chunkstore.Node) []chunkstore.Node { n[0], n[1] = n[1], n[0]; return n }},
		{"duplicate", func(n []chunkstore.Node) []chunkstore.Node { return append(n[:2], n[1:]...) }},
		{"dotdot", func(n []chunkstore.Node) []chunkstore.Node { n[1].Path = ".."; return n }},
		{"absolute", func(n []chunkstore.Node) []chunkstore.Node { n[0].Path = "/PG_VERSION"; return n }},
		{"no parent", func(n []chunkstore.Node) []chunkstore.Node { return append(n[:1], n[2:]...) }},
		{"short chunks", func(n []chunkstore.Node) []chunkstore.Node { n[3].Size++; return n }},
		{"zero chunk", func(n []chunkstore.Node) []chunkstore.Node { n[3].Chunks[1].Len = 0; n[3].Size = 65536; return n }},
		{"bad type", func(n []chunkstore.Node) []chunkstore.Node { n[2].Type = 9; return n }},
		{"symlink size", func(n []chunkstore.Node) []chunkstore.Node { n[5].Size = 1; return n }},
		{"mode", func(n []chunkstore.Node) []chunkstore.Node { n[1].Mode = 0o40000; return n }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := chunkstore.EncodeTree(tc.mutate(sampleTree()))
			require.ErrorIs(t, err, chunkstore.ErrBadTree)
		})
	}
}

func TestDecodeTreeTruncated(t *testing.T) {
	enc, err := chunkstore.EncodeTree(sampleTree())
	require.NoError(t, err)
	for i := range len(enc) {
		_, err := chunkstore.DecodeTree(enc[:i])
		require.ErrorIs(t, err, chunkstore.ErrBadTree, "prefix of %d bytes", i)
	}
	_, err = chunkstore.DecodeTree(append(enc, 0))
	require.ErrorIs(t, err, chunkstore.ErrBadTree)
}

// A huge node count in a tiny input must be refused before allocating.
func TestDecodeTreeHugeCount(t *testing.T) {
	b := append([]byte("PGPTREE\x01"), 0xff, 0xff, 0xff, 0x07)
	_, err := chunkstore.DecodeTree(b)
	require.ErrorIs(t, err, chunkstore.ErrBadTree)
}

func TestPutGetTree(t *testing.T) {
	ctx := context.Background()
	s, err := chunkstore.OpenLocal(t.TempDir(), chunkstore.LocalOptions{})
	require.NoError(t, err)
	defer s.Close()
	nodes := sampleTree()
	// Many nodes, so the encoding spans several chunks.
	for i := range 20000 {
		nodes = append(nodes, chunkstore.Node{Path: "z/" + string(rune('a'+i%26)) + "/" + strconv.Itoa(i), Type: chunkstore.NodeDir, Mode: 0o700})
	}
	nodes = append(nodes, chunkstore.Node{Path: "z", Type: chunkstore.NodeDir, Mode: 0o700})
	for l := 'a'; l <= 'z'; l++ {
		nodes = append(nodes, chunkstore.Node{Path: "z/" + string(l), Type: chunkstore.NodeDir, Mode: 0o700})
	}
	slices.SortFunc(nodes, func(a, b chunkstore.Node) int { return strings.Compare(a.Path, b.Path) })
	ids, err := chunkstore.PutTree(ctx, s, nodes, chunk.Params{})
	require.NoError(t, err)
	require.Greater(t, len(ids), 1)
	got, err := chunkstore.GetTree(ctx, s, ids)
	require.NoError(t, err)
	require.Equal(t, nodes, got)

	_, err = chunkstore.GetTree(ctx, s, []chunk.ID{chunk.Sum([]byte("missing"))})
	require.True(t, errors.Is(err, chunk.ErrNotFound), "%v", err)
}

func FuzzDecodeTree(f *testing.F) {
	enc, err := chunkstore.EncodeTree(sampleTree())
	require.NoError(f, err)
	f.Add(enc)
	empty, _ := chunkstore.EncodeTree(nil)
	f.Add(empty)
	f.Add([]byte("PGPTREE\x01\x01\x01a\x01\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		nodes, err := chunkstore.DecodeTree(data)
		if err != nil {
			return
		}
		enc, err := chunkstore.EncodeTree(nodes)
		if err != nil {
			t.Fatalf("decoded tree does not encode: %v", err)
		}
		again, err := chunkstore.DecodeTree(enc)
		if err != nil {
			t.Fatalf("re-encoded tree does not decode: %v", err)
		}
		require.Equal(t, nodes, again)
	})
}
