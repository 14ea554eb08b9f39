package mover

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/protocol"
)

// TestRepoWALEncryptedFailures guards wal-fetch through a mover serving an
// encrypted repository against taking the mover's failures for the end of
// the archive (ErrWALNotFound, on which PostgreSQL ends recovery early):
// a passphrase file gone when the mover reopens the repository matched
// fs.ErrNotExist, and went on the wire as not-found. A WAL record that does
// not open under the key is corrupt, not an internal error.
func TestRepoWALEncryptedFailures(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	pass := filepath.Join(t.TempDir(), "pass")
	require.NoError(t, os.WriteFile(pass, []byte("pass\n"), 0o600))
	_, err := chunkstore.InitRepo(context.Background(), dir, chunkstore.InitOptions{Passphrase: []byte("pass"), Key: crypt.KeyOptions{KDF: crypt.MinKDF}})
	require.NoError(t, err)
	r := startReceiver(t, ServerOptions{Repo: dir, RepoPasswordFile: pass, RepoLinger: -1})
	ctx := context.Background()
	const a, b = "000000010000000000000007", "000000010000000000000008"
	pusher := dialWALRepo(t, r, PermArchive)
	for i, name := range []string{a, b} {
		_, err = pusher.PushWAL(ctx, walSegmentFile(t, t.TempDir(), name, uint64(i)))
		require.NoError(t, err)
	}
	reader := dialWALRepo(t, r, PermRead)
	_, err = reader.WALRecord(ctx, a)
	require.NoError(t, err)

	// Records swapped: each is tampered.
	ra, rb := filepath.Join(dir, "wal", a[:16], a+".json"), filepath.Join(dir, "wal", b[:16], b+".json")
	ab, err := os.ReadFile(ra)
	require.NoError(t, err)
	bb, err := os.ReadFile(rb)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(ra, bb, 0o644))
	_, err = reader.WALRecord(ctx, a)
	require.ErrorIs(t, err, protocol.ErrCorrupt)
	require.NotErrorIs(t, err, chunkstore.ErrWALNotFound)
	require.NoError(t, os.WriteFile(ra, ab, 0o644))

	// The repository is closed when no peer holds it, and reopened
	// for the next.
	require.NoError(t, reader.Close())
	require.NoError(t, pusher.Close())
	require.Eventually(t, func() bool {
		h := r.srv.repos
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.r == nil
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, os.Remove(pass))
	_, err = dialWALRepo(t, r, PermRead).WALRecord(ctx, a)
	require.Error(t, err)
	require.NotErrorIs(t, err, chunkstore.ErrWALNotFound, "the mover's missing passphrase file is not the end of the archive")
	require.NotErrorIs(t, err, protocol.ErrNotFound)
}
