package staging

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// memChunks splits data with the default chunker and returns its chunk list
// and a source serving those chunks from memory.
func memChunks(t *testing.T, data []byte) ([]chunkstore.ChunkRef, chunkSource, *int) {
	t.Helper()
	held := map[chunk.ID][]byte{}
	var refs []chunkstore.ChunkRef
	require.NoError(t, chunk.Split(data, chunk.DefaultParams, func(c chunk.Chunk) error {
		id := chunk.Sum(c.Data)
		held[id] = bytes.Clone(c.Data)
		refs = append(refs, chunkstore.ChunkRef{ID: id, Len: uint32(len(c.Data))})
		return nil
	}))
	fetches := new(int)
	get := func(ctx context.Context, c chunkstore.ChunkRef) ([]byte, error) {
		*fetches++
		return held[c.ID], nil
	}
	return refs, get, fetches
}

// TestFileDataModel runs random writes, truncates and reads against a plain
// byte slice and checks the CoW overlay always reads the same.
func TestFileDataModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	orig := make([]byte, 3<<20)
	for i := range orig {
		orig[i] = byte(rng.Uint32())
	}
	refs, get, _ := memChunks(t, orig)
	d := newFileData(refs, t.TempDir()+"/cow")
	t.Cleanup(func() { _ = d.close() })
	want := bytes.Clone(orig)
	ctx := context.Background()

	for step := range 400 {
		switch op := rng.IntN(10); {
		case op < 5:
			off := rng.Int64N(int64(len(want)) + 100<<10)
			p := make([]byte, 1+rng.IntN(300<<10))
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			require.NoError(t, d.writeAt(ctx, get, p, off))
			if end := off + int64(len(p)); end > int64(len(want)) {
				want = append(want, make([]byte, end-int64(len(want)))...)
			}
			copy(want[off:], p)
		case op < 7:
			size := rng.Int64N(int64(len(want)) + 200<<10)
			require.NoError(t, d.truncate(size))
			if size < int64(len(want)) {
				want = want[:size]
			} else {
				want = append(want, make([]byte, size-int64(len(want)))...)
			}
		default:
			off := rng.Int64N(int64(len(want)) + 1)
			p := make([]byte, rng.IntN(500<<10))
			n, err := d.readAt(ctx, get, p, off)
			require.NoError(t, err)
			require.Equal(t, min(len(p), len(want)-int(off)), n, "step %d", step)
			require.True(t, bytes.Equal(want[off:off+int64(n)], p[:n]), "step %d: read at %d", step, off)
		}
		require.Equal(t, int64(len(want)), d.size)
	}
	got := make([]byte, len(want))
	n, err := d.readAt(ctx, get, got, 0)
	require.NoError(t, err)
	require.Equal(t, len(want), n)
	require.True(t, bytes.Equal(want, got))
}

// TestFileDataCopiesOnlyTouchedChunks guards against a write copying the
// whole file into the CoW layer.
func TestFileDataCopiesOnlyTouchedChunks(t *testing.T) {
	orig := make([]byte, 8<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range orig {
		orig[i] = byte(rng.Uint32())
	}
	refs, get, fetches := memChunks(t, orig)
	d := newFileData(refs, t.TempDir()+"/cow")
	t.Cleanup(func() { _ = d.close() })
	require.NoError(t, d.writeAt(context.Background(), get, []byte("hello"), 4<<20))
	require.Equal(t, 1, d.localChunks())
	require.Equal(t, 1, *fetches, "only the partly written chunk is filled")
}

func TestPlanTreeRefusesBadTrees(t *testing.T) {
	for _, tc := range []struct {
		name string
		tree []chunkstore.Node
	}{
		{"absolute", []chunkstore.Node{{Path: "/etc", Type: chunkstore.NodeDir}}},
		{"dotdot", []chunkstore.Node{{Path: "../x", Type: chunkstore.NodeDir}}},
		{"unclean", []chunkstore.Node{{Path: "a//b", Type: chunkstore.NodeDir}}},
		{"duplicate", []chunkstore.Node{{Path: "a", Type: chunkstore.NodeDir}, {Path: "a", Type: chunkstore.NodeDir}}},
		{"inside a file", []chunkstore.Node{{Path: "a", Type: chunkstore.NodeFile}, {Path: "a/b", Type: chunkstore.NodeFile}}},
		{"size mismatch", []chunkstore.Node{{Path: "a", Type: chunkstore.NodeFile, Size: 5, Chunks: []chunkstore.ChunkRef{{Len: 4}}}}},
		{"unknown type", []chunkstore.Node{{Path: "a", Type: 9}}},
		{"root not a dir", []chunkstore.Node{{Path: "", Type: chunkstore.NodeFile}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := planTree(tc.tree)
			require.Error(t, err)
		})
	}
	plan, _, err := planTree([]chunkstore.Node{{Path: "a/b/c", Type: chunkstore.NodeFile}, {Path: "a", Type: chunkstore.NodeDir, Mode: 0o750}})
	require.NoError(t, err)
	var paths []string
	for _, n := range plan {
		paths = append(paths, n.Path)
	}
	require.Equal(t, []string{"a", "a/b", "a/b/c"}, paths, "parents first, missing ones added")
}

func TestMountRefusesBadOptions(t *testing.T) {
	ctx := context.Background()
	_, err := Mount(ctx, t.TempDir(), nil, nil, MountOptions{})
	require.ErrorContains(t, err, "CowDir")
	cow := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(cow, "stale"), nil, 0o600))
	_, err = Mount(ctx, t.TempDir(), nil, nil, MountOptions{CowDir: cow, Owner: "root"})
	require.ErrorContains(t, err, "not empty")
}
