package mover

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
)

// startWALServer serves a new, empty repository; it returns the server and
// the repository's directory.
func startWALServer(t *testing.T) (*testReceiver, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	repo, err := chunkstore.OpenRepo(context.Background(), dir, nil)
	require.NoError(t, err)
	require.NoError(t, repo.Close())
	return startReceiver(t, ServerOptions{Repo: dir}), dir
}

// dialWALRepo dials r as a new mover that r trusts with perms.
func dialWALRepo(t *testing.T, r *testReceiver, perms Perm) *RemoteRepo {
	t.Helper()
	m := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "archiver", Perms: perms, Added: time.Now()}))
	rr, err := DialRepo(context.Background(), m.home, r.addr, r.srv.ID(), RemoteRepoOptions{Conns: 1})
	require.NoError(t, err)
	t.Cleanup(func() { rr.Close() })
	return rr
}

// walSegmentFile writes a 16 MiB segment of WAL-like content under name:
// 3 MiB of records, then zeros, as a switched segment has.
func walSegmentFile(t *testing.T, dir, name string, seed uint64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, append(randomBytes(3<<20, seed), make([]byte, 13<<20)...), 0o600))
	return p
}

// chunksReceived returns what the server logged as the chunks its last
// push of name received.
func chunksReceived(t *testing.T, r *testReceiver, name string) int {
	t.Helper()
	ms := regexp.MustCompile(`WAL file archived.* file=`+name+` already=false chunks_received=(\d+)`).FindAllStringSubmatch(r.log.String(), -1)
	require.NotEmpty(t, ms, r.log.String())
	n, err := strconv.Atoi(ms[len(ms)-1][1])
	require.NoError(t, err)
	return n
}

// TestRepoWALPushFetch: wal-push and wal-fetch through a repository mover
// over loopback. A segment pushed by a peer trusted with archive is
// durable in the repository when PushWAL returns (another handle on the
// directory reads it back), fetches back byte for byte through a peer
// trusted with read, and a retried push is "already" and sends nothing.
// A second segment sends only the chunks the repository lacks (its zero
// tail is there), a different content under a pushed name is a conflict
// that changes nothing, a name not archived is not-found, and a .history
// file keeps its text in its record. Each side is refused what its
// permission does not grant.
func TestRepoWALPushFetch(t *testing.T) {
	r, dir := startWALServer(t)
	pusher := dialWALRepo(t, r, PermArchive)
	reader := dialWALRepo(t, r, PermRead)
	ctx := context.Background()
	src := t.TempDir()

	const name = "000000010000000000000003"
	seg := walSegmentFile(t, src, name, 1)
	want, err := os.ReadFile(seg)
	require.NoError(t, err)
	already, err := pusher.PushWAL(ctx, seg)
	require.NoError(t, err)
	require.False(t, already)
	first := chunksReceived(t, r, name)

	// Durable and visible to any other process once PushWAL returned.
	local, err := chunkstore.OpenRepo(context.Background(), dir, nil)
	require.NoError(t, err)
	defer local.Close()
	dst := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	require.NoError(t, local.FetchWAL(ctx, name, dst))
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "segment differs, read locally")

	require.NoError(t, os.Remove(dst))
	require.NoError(t, reader.FetchWAL(ctx, name, dst))
	got, err = os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "segment differs, fetched through the mover")

	already, err = pusher.PushWAL(ctx, seg)
	require.NoError(t, err)
	require.True(t, already, "a retried push of the same content")

	// The next segment repeats the first's first 2 MiB: only the chunks
	// past them are sent (the zero tail's were sent once, with the first).
	const name2 = "000000010000000000000004"
	seg2 := filepath.Join(src, name2)
	require.NoError(t, os.WriteFile(seg2, append(append(want[:2<<20:2<<20], randomBytes(1<<20, 2)...), make([]byte, 13<<20)...), 0o600))
	_, err = pusher.PushWAL(ctx, seg2)
	require.NoError(t, err)
	require.Less(t, chunksReceived(t, r, name2), first/2, "chunks the repository holds are not sent again")

	other := walSegmentFile(t, t.TempDir(), name, 3)
	_, err = pusher.PushWAL(ctx, other)
	require.ErrorIs(t, err, chunkstore.ErrWALConflict)
	require.ErrorIs(t, err, protocol.ErrConflict)
	require.NoError(t, reader.FetchWAL(ctx, name, dst))
	got, err = os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "a refused push changes nothing")

	err = reader.FetchWAL(ctx, "000000010000000000000009", filepath.Join(t.TempDir(), "x"))
	require.ErrorIs(t, err, chunkstore.ErrWALNotFound)
	require.ErrorIs(t, err, protocol.ErrNotFound)

	const text = "1\t0/3000000\tno recovery target specified\n"
	hist := filepath.Join(src, "00000002.history")
	require.NoError(t, os.WriteFile(hist, []byte(text), 0o600))
	_, err = pusher.PushWAL(ctx, hist)
	require.NoError(t, err)
	rec, err := local.WALRecord("00000002.history")
	require.NoError(t, err)
	require.Equal(t, text, rec.History)
	require.NoError(t, reader.FetchWAL(ctx, "00000002.history", dst))
	got, err = os.ReadFile(dst)
	require.NoError(t, err)
	require.Equal(t, text, string(got))

	t.Run("read is not archive", func(t *testing.T) {
		_, err := reader.PushWAL(ctx, walSegmentFile(t, t.TempDir(), "000000010000000000000005", 4))
		require.ErrorIs(t, err, protocol.ErrPermission)
		require.ErrorContains(t, err, "lacks permission archive")
		_, err = local.WALRecord("000000010000000000000005")
		require.ErrorIs(t, err, chunkstore.ErrWALNotFound)
	})
	t.Run("archive is not read", func(t *testing.T) {
		err := pusher.FetchWAL(ctx, name, filepath.Join(t.TempDir(), "x"))
		require.ErrorIs(t, err, protocol.ErrPermission)
		require.ErrorContains(t, err, "lacks permission read")
	})
	t.Run("not a WAL file name", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "postmaster.pid")
		require.NoError(t, os.WriteFile(p, []byte("1\n"), 0o600))
		_, err := pusher.PushWAL(ctx, p)
		require.ErrorIs(t, err, chunkstore.ErrBadWALName)
		err = reader.FetchWAL(ctx, "../x", filepath.Join(t.TempDir(), "x"))
		require.ErrorIs(t, err, chunkstore.ErrBadWALName)
	})
}

// TestRepoWALOldMover: a repository mover of protocol 8 knows no WAL
// archive: PushWAL and FetchWAL say so, naming the version, and send it
// nothing it would take for a protocol violation.
func TestRepoWALOldMover(t *testing.T) {
	asVersion(t, protocol.WALVersion-1)
	r, _ := startWALServer(t)
	rr := dialWALRepo(t, r, PermRead|PermArchive)
	ctx := context.Background()
	_, err := rr.PushWAL(ctx, walSegmentFile(t, t.TempDir(), "000000010000000000000001", 1))
	require.ErrorIs(t, err, protocol.ErrVersion)
	require.ErrorContains(t, err, "wal-push needs protocol 9")
	err = rr.FetchWAL(ctx, "000000010000000000000001", filepath.Join(t.TempDir(), "x"))
	require.ErrorIs(t, err, protocol.ErrVersion)
	// The connection is still good for what protocol 8 has.
	_, err = rr.List(ctx)
	require.NoError(t, err)
}

// TestRepoWALFetchCorrupt: a chunk that arrives damaged in the middle of a
// WAL file fails the fetch as corrupt, writes nothing at the destination
// (no file, no temporary file), and the fetches read ahead of it stop: no
// goroutine is left once the client closes.
func TestRepoWALFetchCorrupt(t *testing.T) {
	r, dir := startWALServer(t)
	ctx := context.Background()
	const name = "000000010000000000000007"
	pusher := dialWALRepo(t, r, PermArchive)
	_, err := pusher.PushWAL(ctx, walSegmentFile(t, t.TempDir(), name, 7))
	require.NoError(t, err)
	local, err := chunkstore.OpenRepo(context.Background(), dir, nil)
	require.NoError(t, err)
	rec, err := local.WALRecord(name)
	require.NoError(t, err)
	require.NoError(t, local.Close())
	require.Greater(t, len(rec.Chunks), 10)
	bad := rec.Chunks[5].ID
	tamper := func(id chunk.ID, p []byte) []byte {
		if id == bad {
			p = bytes.Clone(p)
			p[len(p)/2] ^= 0x40
		}
		return p
	}
	tamperFetch.Store(&tamper)
	defer tamperFetch.Store(nil)

	opt := goleak.IgnoreCurrent()
	reader := dialWALRepo(t, r, PermRead)
	out := t.TempDir()
	err = reader.FetchWAL(ctx, name, filepath.Join(out, "RECOVERYXLOG"))
	var ce *chunk.CorruptChunkError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, bad, ce.ID)
	left, err := os.ReadDir(out)
	require.NoError(t, err)
	require.Empty(t, left, "nothing written at the destination")
	require.NoError(t, reader.Close())
	goleak.VerifyNone(t, opt, goleak.IgnoreTopFunction("github.com/pgporter/pgporter/mover.(*Server).watchTrust"))
}

// TestRepoWALConcurrentPushes: a primary and its standby (archive_mode =
// always) push the same segment at once through one repository mover:
// both succeed, the record is linked once (exactly one push finds it new),
// and the segment reads back. Two clusters pushing different contents
// under one name at once: one wins, the other is a conflict.
func TestRepoWALConcurrentPushes(t *testing.T) {
	r, dir := startWALServer(t)
	ctx := context.Background()
	a, b := dialWALRepo(t, r, PermArchive), dialWALRepo(t, r, PermArchive)

	const name = "000000010000000000000011"
	seg := walSegmentFile(t, t.TempDir(), name, 11)
	var errs [2]error
	var already [2]bool
	var wg sync.WaitGroup
	for i, rr := range []*RemoteRepo{a, b} {
		wg.Go(func() { already[i], errs[i] = rr.PushWAL(ctx, seg) })
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	require.True(t, already[0] != already[1], "exactly one push linked the record: %v", already)
	local, err := chunkstore.OpenRepo(context.Background(), dir, nil)
	require.NoError(t, err)
	defer local.Close()
	dst := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	require.NoError(t, local.FetchWAL(ctx, name, dst))
	want, err := os.ReadFile(seg)
	require.NoError(t, err)
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))

	const name2 = "000000010000000000000012"
	segs := []string{walSegmentFile(t, t.TempDir(), name2, 12), walSegmentFile(t, t.TempDir(), name2, 13)}
	for i, rr := range []*RemoteRepo{a, b} {
		wg.Go(func() { _, errs[i] = rr.PushWAL(ctx, segs[i]) })
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		if err == nil {
			won = i
			continue
		}
		require.ErrorIs(t, err, chunkstore.ErrWALConflict)
	}
	require.True(t, (errs[0] == nil) != (errs[1] == nil), "one wins, one conflicts: %v", errs)
	require.NoError(t, local.FetchWAL(ctx, name2, dst))
	want, err = os.ReadFile(segs[won])
	require.NoError(t, err)
	got, err = os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "the winner's content is archived")
}
