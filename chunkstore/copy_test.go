package chunkstore_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
)

// CopyRepo copies every restore point into an empty repository, each
// readable byte for byte there; a copy cancelled after its first point
// leaves that point only, and the rerun copies the rest, sending no chunk
// twice; a third run copies nothing.
func TestCopyRepo(t *testing.T) {
	ctx := context.Background()
	data := fakeDataDir(t)
	src := openRepo(t, filepath.Join(t.TempDir(), "src"))
	rp1, err := src.Backup(ctx, data, chunkstore.BackupOptions{})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(data, "base/5/16385"), []byte("a new relation"), 0o600))
	rp2, err := src.Backup(ctx, data, chunkstore.BackupOptions{})
	require.NoError(t, err)

	dstDir := filepath.Join(t.TempDir(), "dst")
	dst := openRepo(t, dstDir)
	cctx, cancel := context.WithCancel(ctx)
	st, err := chunkstore.CopyRepo(cctx, src, dst, func(chunkstore.CopyStats) { cancel() })
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, 1, st.Points)
	first := st.Chunks
	require.Positive(t, first)
	list, err := dst.List()
	require.NoError(t, err)
	require.Len(t, list, 1, "a point appears once its chunks are in")
	require.Equal(t, rp1.ID, list[0].ID)

	st, err = chunkstore.CopyRepo(ctx, src, dst, nil)
	require.NoError(t, err)
	require.Equal(t, chunkstore.CopyStats{Points: 1, PointsHeld: 1, Chunks: st.Chunks, ChunksHeld: st.ChunksHeld, Bytes: st.Bytes}, st)
	require.Positive(t, st.ChunksHeld, "the second point's unchanged chunks are not copied again")
	require.Less(t, st.Chunks, first)
	checkRestorePoint(t, dst, rp2, data)
	rep, err := dst.Check(ctx, chunkstore.CheckOptions{ReadData: true})
	require.NoError(t, err)
	require.Empty(t, rep.Problems)
	require.Equal(t, 2, rep.RestorePoints)

	st, err = chunkstore.CopyRepo(ctx, src, dst, nil)
	require.NoError(t, err)
	require.Equal(t, chunkstore.CopyStats{PointsHeld: 2}, st)
}
