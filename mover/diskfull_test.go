package mover

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// TestDiskFullTargetRoot: the target root's file system fills up (another
// writer takes all but 2 MiB of it) while a transfer writes there. The
// transfer fails saying which destination is full, nothing is committed,
// DEST.partial keeps what was durable, and once space is freed the rerun
// completes sending only the chunks that were not durable.
func TestDiskFullTargetRoot(t *testing.T) {
	small := mountTmpfs(t, "24m")
	filler := filepath.Join(small, "filler")
	var (
		once    sync.Once
		fillErr error
	)
	fill := func(string, int64) { once.Do(func() { fillErr = testsupport.FillBut(filler, 2<<20) }) }
	r := startReceiver(t, ServerOptions{Roots: []string{small}, Reserve: 1, SyncBytes: 1 << 20, SyncInterval: 10 * time.Millisecond, OnDurable: fill})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "a.dat"), randomBytes(6<<20, 21), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(src, "b.dat"), randomBytes(6<<20, 22), 0o600))
	dest := filepath.Join(small, "d")
	o := SendOptions{Src: src, Dest: dest, BWLimit: 16 << 20, Compression: "none", RetryFor: -1}

	_, err := s.Send(context.Background(), r.addr, r.id.ID, o)
	require.NoError(t, fillErr)
	require.ErrorIs(t, err, protocol.ErrNoSpace)
	t.Logf("the user reads: %v", err)
	require.ErrorContains(t, err, "no space left on "+dest)
	require.NoDirExists(t, dest, "nothing is committed")
	require.DirExists(t, dest+".partial", "what was written is kept for the rerun")

	require.NoError(t, os.Remove(filler))
	res, err := s.Send(context.Background(), r.addr, r.id.ID, o)
	require.NoError(t, err)
	require.Positive(t, res.ResumedChunks, "what was durable before the disk filled is kept")
	require.Equal(t, res.ChunksTotal, res.ResumedChunks+res.ChunksSent, "the rerun sends only the chunks not durable")
	require.Less(t, res.ChunksSent, res.ChunksTotal)
	requireSameTree(t, src, dest)
	require.NoDirExists(t, dest+".partial")
}
