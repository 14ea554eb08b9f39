package mover

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestHostileDedupeAcrossPeers guards against issue 15's dedupe oracle: a
// sender learned which content other senders' committed trees hold, from
// the chunks the receiver did not ask it for. Dedupe now uses only trees
// the same peer sent.
func TestHostileDedupeAcrossPeers(t *testing.T) {
	ctx := context.Background()
	r := startReceiver(t, ServerOptions{Reserve: 1})
	secret := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(secret, "payroll.dat"), randomBytes(1<<20, 42), 0o600))

	victim := newTestSender(t, r, PermSend)
	_, err := victim.Send(ctx, r.addr, r.id.ID, SendOptions{Src: secret, Dest: filepath.Join(r.root, "victim")})
	require.NoError(t, err)

	// Another peer offers the same content, guessing it: every chunk is
	// asked for, so the answer reveals nothing.
	guess := t.TempDir()
	require.NoError(t, os.CopyFS(guess, os.DirFS(secret)))
	prober := newTestSender(t, r, PermSend)
	res, err := prober.Send(ctx, r.addr, r.id.ID, SendOptions{Src: guess, Dest: filepath.Join(r.root, "probe")})
	require.NoError(t, err)
	require.Positive(t, res.ChunksTotal)
	require.Equal(t, res.ChunksTotal, res.ChunksSent, "the prober sent every chunk: nothing deduped against another peer's tree")
	require.Zero(t, counterValue(t, r.srv, "pgporter_mover_chunks_deduped_total"))

	// The same peer still dedupes against its own trees.
	again := t.TempDir()
	require.NoError(t, os.CopyFS(again, os.DirFS(secret)))
	res, err = victim.Send(ctx, r.addr, r.id.ID, SendOptions{Src: again, Dest: filepath.Join(r.root, "victim-again")})
	require.NoError(t, err)
	require.Zero(t, res.ChunksSent, "a peer's own earlier tree is reused")
	require.Equal(t, float64(res.ChunksTotal), counterValue(t, r.srv, "pgporter_mover_chunks_deduped_total"))
}
