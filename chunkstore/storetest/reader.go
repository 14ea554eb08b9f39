package storetest

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// Reader is a repository that restore points are read from: the local
// repository (through orchestrator.Source) or a repository mover
// (mover.RemoteRepo).
type Reader interface {
	Resolve(ctx context.Context, id string) (*chunkstore.RestorePoint, error)
	Tree(ctx context.Context, rp *chunkstore.RestorePoint) ([]chunkstore.Node, error)
	Get(ctx context.Context, id chunk.ID, dst []byte) ([]byte, error)
}

// Want is what a Reader must read: the repository's restore points, the
// newest last, the tree of each by ID, and the content of the newest one's
// files by path (some or all of them; nil checks none).
type Want struct {
	Points []chunkstore.RestorePoint
	Trees  map[string][]chunkstore.Node
	Files  map[string][]byte
}

// RunReader is the conformance suite for a Reader: "latest" and each
// restore point's ID resolve to the point want has, trees are want's, every
// chunk of every file reads back with the bytes of its ID (appended to
// dst) and files read as want's, and what is not there fails with
// chunkstore.ErrNoRestorePoint and chunk.ErrNotFound.
func RunReader(t *testing.T, r Reader, want Want) {
	t.Helper()
	ctx := t.Context()
	points, files := want.Points, want.Files
	require.NotEmpty(t, points, "the repository under test holds no restore point")

	t.Run("Resolve", func(t *testing.T) {
		latest, err := r.Resolve(ctx, "latest")
		require.NoError(t, err)
		require.Equal(t, points[len(points)-1].ID, latest.ID)
		for _, p := range points {
			got, err := r.Resolve(ctx, p.ID)
			require.NoError(t, err)
			require.Equal(t, p.ID, got.ID)
			require.Equal(t, p.Tree, got.Tree)
			require.Equal(t, p.Size, got.Size)
		}
		_, err = r.Resolve(ctx, "rp-19700101T000000Z-0000")
		require.ErrorIs(t, err, chunkstore.ErrNoRestorePoint)
	})

	t.Run("TreeAndChunks", func(t *testing.T) {
		rp, err := r.Resolve(ctx, "latest")
		require.NoError(t, err)
		tree, err := r.Tree(ctx, rp)
		require.NoError(t, err)
		require.Equal(t, want.Trees[rp.ID], tree)
		prefix := []byte("prefix")
		seen := map[string]bool{}
		for _, n := range tree {
			if n.Type != chunkstore.NodeFile {
				continue
			}
			var content []byte
			for _, c := range n.Chunks {
				got, err := r.Get(ctx, c.ID, bytes.Clone(prefix))
				require.NoError(t, err, "%s", n.Path)
				require.Equal(t, prefix, got[:len(prefix)], "Get appends to dst")
				require.Len(t, got, len(prefix)+int(c.Len), "%s", n.Path)
				require.Equal(t, c.ID, chunk.Sum(got[len(prefix):]), "%s", n.Path)
				content = append(content, got[len(prefix):]...)
			}
			require.EqualValues(t, n.Size, len(content), "%s", n.Path)
			if b, ok := files[n.Path]; ok {
				require.True(t, bytes.Equal(b, content), "%s reads as it was backed up", n.Path)
				seen[n.Path] = true
			}
		}
		for p := range files {
			require.True(t, seen[p], "%s is in the tree", p)
		}
	})

	t.Run("GetMissing", func(t *testing.T) {
		_, err := r.Get(ctx, chunk.Sum([]byte("no such chunk in any repository")), nil)
		require.ErrorIs(t, err, chunk.ErrNotFound)
	})
}
