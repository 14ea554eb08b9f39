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

// CopyRepo copies the WAL archive too, each record with the time its file
// was pushed, fetchable byte for byte from the copy; a rerun copies none
// again; a destination that archives a name with other content stops the
// copy with ErrWALConflict, and keeps its own record.
func TestCopyRepoWAL(t *testing.T) {
	ctx := context.Background()
	walDir := t.TempDir()
	src := openRepo(t, filepath.Join(t.TempDir(), "src"))
	names := []string{"000000010000000000000001", "000000010000000000000002", "00000002.history"}
	for i, name := range names[:2] {
		_, err := src.PushWAL(ctx, walSegment(t, walDir, name, uint64(i+1)))
		require.NoError(t, err)
	}
	hist := filepath.Join(walDir, names[2])
	require.NoError(t, os.WriteFile(hist, []byte("1\t0/3000000\tno recovery target specified\n"), 0o600))
	_, err := src.PushWAL(ctx, hist)
	require.NoError(t, err)

	dst := openRepo(t, filepath.Join(t.TempDir(), "dst"))
	st, err := chunkstore.CopyRepo(ctx, src, dst, nil)
	require.NoError(t, err)
	require.Equal(t, 3, st.WAL)
	require.Positive(t, st.Chunks)
	for _, name := range names {
		want, err := src.WALRecord(name)
		require.NoError(t, err)
		got, err := dst.WALRecord(name)
		require.NoError(t, err)
		require.Equal(t, want.Hash, got.Hash)
		require.True(t, want.Pushed.Equal(got.Pushed), "%s: pushed %v in the copy, %v in the source", name, got.Pushed, want.Pushed)
		out := filepath.Join(t.TempDir(), name)
		require.NoError(t, dst.FetchWAL(ctx, name, out))
		b, err := os.ReadFile(out)
		require.NoError(t, err)
		orig, err := os.ReadFile(filepath.Join(walDir, name))
		require.NoError(t, err)
		require.Equal(t, orig, b, name)
	}
	rep, err := dst.Check(ctx, chunkstore.CheckOptions{ReadData: true})
	require.NoError(t, err)
	require.Empty(t, rep.Problems)

	st, err = chunkstore.CopyRepo(ctx, src, dst, nil)
	require.NoError(t, err)
	require.Equal(t, chunkstore.CopyStats{WALHeld: 3}, st)

	other := openRepo(t, filepath.Join(t.TempDir(), "other"))
	_, err = other.PushWAL(ctx, walSegment(t, t.TempDir(), names[1], 99))
	require.NoError(t, err)
	theirs, err := other.WALRecord(names[1])
	require.NoError(t, err)
	_, err = chunkstore.CopyRepo(ctx, src, other, nil)
	require.ErrorIs(t, err, chunkstore.ErrWALConflict)
	kept, err := other.WALRecord(names[1])
	require.NoError(t, err)
	require.Equal(t, theirs.Hash, kept.Hash)
}
