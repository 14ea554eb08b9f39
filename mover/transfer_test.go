package mover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgporter/pgporter/internal/synth"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// testReceiver is a mover daemon serving one root on loopback.
type testReceiver struct {
	*tlsTestMover
	root   string
	srv    *Server
	addr   string
	log    *testsupport.Buffer
	cancel context.CancelFunc
	done   chan error
}

func startReceiver(t testing.TB, o ServerOptions) *testReceiver {
	t.Helper()
	m := newTLSTestMover(t)
	r := &testReceiver{tlsTestMover: m, root: t.TempDir(), log: &testsupport.Buffer{}}
	if o.Roots == nil {
		o.Roots = []string{r.root}
	} else {
		r.root = o.Roots[0]
	}
	o.Home, o.Listen = m.home, "127.0.0.1:0"
	o.Log = slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := NewServer(o)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	r.srv, r.addr, r.cancel, r.done = srv, srv.Addr().String(), cancel, make(chan error, 1)
	go func() { r.done <- srv.Serve(ctx) }()
	t.Cleanup(r.stop)
	return r
}

func (r *testReceiver) stop() {
	r.cancel()
	<-r.done
	r.done <- nil // stop is idempotent
}

// newTestSender makes a sender whose identity r trusts with perms.
func newTestSender(t testing.TB, r *testReceiver, perms Perm) *Sender {
	t.Helper()
	m := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "sender", Perms: perms, Added: time.Now()}))
	s, err := NewSender(m.home, nil)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// pgbenchLike returns n bytes of COPY-style rows, compressible like a dump.
func pgbenchLike(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	var b bytes.Buffer
	b.Grow(n + 256)
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%d\t%d\t%d\t%s\n", i, rng.IntN(50)+1, rng.IntN(100000)-50000, strings.Repeat(" ", 84))
	}
	return b.Bytes()[:n]
}

// randomBytes returns n bytes that do not compress (synth.Random).
func randomBytes(n int, seed uint64) []byte { return synth.Random(seed, n) }

// makeTree writes a dump-like tree: compressible and random files, an empty
// file, a nested directory, and a file with internal repeats.
func makeTree(t *testing.T, dir string, seed uint64, scale int) {
	t.Helper()
	rep := randomBytes(300<<10, seed+7)
	files := map[string][]byte{
		"toc.dat":        randomBytes(20<<10, seed),
		"3001.dat":       pgbenchLike(scale*(3<<20), seed),
		"3002.dat":       randomBytes(scale*(1<<20), seed+1),
		"3003.dat":       {},
		"blobs/b1.dat":   pgbenchLike(100<<10, seed+2),
		"3004.dat":       bytes.Join([][]byte{rep, rep, rep}, []byte("x")),
		"restore.sql.gz": []byte("not really"),
	}
	testsupport.WriteFiles(t, dir, files, 0o640)
}

// requireSameTree checks that dst holds exactly src's files (plus the
// manifest) with the same content and modes.
func requireSameTree(t *testing.T, src, dst string) {
	t.Helper()
	testsupport.RequireSameFiles(t, src, dst, maxFileMode, ManifestName)
}

func TestSendRoundTrip(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 1, 1)
	dest := filepath.Join(r.root, "dumps", "db1")
	ctx := context.Background()

	res, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest})
	require.NoError(t, err)
	requireSameTree(t, src, dest)
	require.Equal(t, 7, res.Files)
	require.False(t, res.AlreadyComplete)
	require.Positive(t, res.ChunksSent)
	require.Less(t, res.WireBytes, res.Bytes, "compressible data should shrink on the wire")
	// The steps in the order they happen, each within the send.
	tm := res.Timing
	steps := []float64{tm.Connected, tm.Opened, tm.FirstChunk, tm.LastChunk, tm.Done}
	require.Positive(t, tm.Connected, "%+v", tm)
	require.IsIncreasing(t, steps, "%+v", tm)
	require.InDelta(t, res.Seconds*1000, tm.Done, 5, "%+v", tm)
	require.NoDirExists(t, dest+".partial")

	// A rerun is a no-op that says so.
	again, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest})
	require.NoError(t, err)
	require.True(t, again.AlreadyComplete)
	require.Zero(t, again.ChunksSent)
	requireSameTree(t, src, dest)
}

func TestSendDedupeAcrossTransfers(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	ctx := context.Background()
	a := t.TempDir()
	makeTree(t, a, 2, 2)
	first, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: a, Dest: filepath.Join(r.root, "a")})
	require.NoError(t, err)

	// Tree b: the same data plus a small new file and an edit in the middle
	// of the big file.
	b := t.TempDir()
	makeTree(t, b, 2, 2)
	require.NoError(t, os.WriteFile(filepath.Join(b, "3010.dat"), randomBytes(50<<10, 99), 0o600))
	big := filepath.Join(b, "3001.dat")
	data, err := os.ReadFile(big)
	require.NoError(t, err)
	copy(data[len(data)/2:], "an edited row in the middle")
	require.NoError(t, os.WriteFile(big, data, 0o640))

	second, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: b, Dest: filepath.Join(r.root, "b")})
	require.NoError(t, err)
	requireSameTree(t, b, filepath.Join(r.root, "b"))
	require.LessOrEqual(t, second.ChunksSent, int64(6), "only chunks around the edit and the new file should be sent (first run sent %d)", first.ChunksSent)
	require.Less(t, second.WireBytes*10, first.WireBytes)
}

func TestSendRefusals(t *testing.T) {
	ctx := context.Background()
	r := startReceiver(t, ServerOptions{})
	src := t.TempDir()
	makeTree(t, src, 3, 1)

	t.Run("read permission is not send permission", func(t *testing.T) {
		s := newTestSender(t, r, PermRead)
		_, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "x")})
		require.ErrorIs(t, err, protocol.ErrPermission)
		require.Contains(t, err.Error(), "send")
		require.NoDirExists(t, filepath.Join(r.root, "x.partial"))
	})
	s := newTestSender(t, r, PermSend)
	t.Run("destination outside the roots", func(t *testing.T) {
		outside := t.TempDir()
		_, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(outside, "x")})
		require.ErrorIs(t, err, protocol.ErrPermission)
		require.NoDirExists(t, filepath.Join(outside, "x.partial"))
	})
	t.Run("destination through a symlink out of the root", func(t *testing.T) {
		outside := t.TempDir()
		require.NoError(t, os.Symlink(outside, filepath.Join(r.root, "escape")))
		_, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "escape", "x")})
		require.Error(t, err)
		entries, _ := os.ReadDir(outside)
		require.Empty(t, entries, "nothing may be written outside the root")
	})
	t.Run("existing destination", func(t *testing.T) {
		dest := filepath.Join(r.root, "exists")
		require.NoError(t, os.Mkdir(dest, 0o755))
		_, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest})
		require.ErrorIs(t, err, protocol.ErrConflict)
	})
	t.Run("symlink in the source", func(t *testing.T) {
		bad := t.TempDir()
		require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(bad, "link")))
		_, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: bad, Dest: filepath.Join(r.root, "y")})
		require.ErrorIs(t, err, ErrUnsupportedFile)
	})
	t.Run("untrusted sender", func(t *testing.T) {
		m := newTLSTestMover(t)
		u, err := NewSender(m.home, nil)
		require.NoError(t, err)
		defer u.Close()
		_, err = u.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "z")})
		require.ErrorIs(t, err, ErrUntrusted)
		require.Contains(t, r.log.String(), "refused untrusted peer")
	})
}

// TestResumeAfterNetworkCut cuts the link mid-transfer long enough for the
// sender to give up, then reruns the same send: it completes with a
// byte-identical tree and sends no chunk the receiver held durably.
func TestResumeAfterNetworkCut(t *testing.T) {
	r := startReceiver(t, ServerOptions{SyncInterval: 20 * time.Millisecond})
	s := newTestSender(t, r, PermSend)
	proxy := testsupport.NewUDPProxy(t, r.addr)
	src := t.TempDir()
	makeTree(t, src, 4, 4)
	dest := filepath.Join(r.root, "cut")
	ctx := context.Background()

	var once sync.Once
	o := SendOptions{Src: src, Dest: dest, BWLimit: 8 << 20, Compression: "none", RetryFor: -1, IdleTimeout: time.Second}
	o.Progress = func(p SendProgress) {
		if p.Durable > p.Total/3 {
			once.Do(proxy.Cut)
		}
	}
	_, err := s.Send(ctx, proxy.Addr(), r.id.ID, o)
	require.Error(t, err, "the cut should end the first run")
	proxy.Restore()

	o.Progress, o.RetryFor = nil, 0
	res, err := s.Send(ctx, proxy.Addr(), r.id.ID, o)
	require.NoError(t, err)
	requireSameTree(t, src, dest)
	require.Positive(t, res.ResumedChunks)
	require.LessOrEqual(t, res.ChunksSent, res.ChunksTotal-res.ResumedChunks)
}

// TestRideOutShortCut drops every packet for a moment in the middle of a
// transfer: one Send call completes without help.
func TestRideOutShortCut(t *testing.T) {
	r := startReceiver(t, ServerOptions{SyncInterval: 20 * time.Millisecond})
	s := newTestSender(t, r, PermSend)
	proxy := testsupport.NewUDPProxy(t, r.addr)
	src := t.TempDir()
	makeTree(t, src, 5, 3)
	dest := filepath.Join(r.root, "ride")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var once sync.Once
	restored := make(chan error, 1)
	o := SendOptions{Src: src, Dest: dest, BWLimit: 8 << 20, Compression: "none", IdleTimeout: 2 * time.Second}
	o.Progress = func(p SendProgress) {
		if p.Durable > p.Total/3 {
			once.Do(func() {
				proxy.Cut()
				go func() {
					// Restore once the sender has visibly been cut off for a while.
					err := proxy.Wait(ctx, func(st testsupport.ProxyStats) bool { return st.DroppedToTarget >= 30 })
					proxy.Restore()
					restored <- err
				}()
			})
		}
	}
	_, err := s.Send(ctx, proxy.Addr(), r.id.ID, o)
	require.NoError(t, err)
	require.NoError(t, <-restored)
	requireSameTree(t, src, dest)
	require.Positive(t, proxy.Stats().DroppedToTarget)
}

func TestMetricsAfterTransfer(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 9, 1)
	_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "m")})
	require.NoError(t, err)

	rec := httptest.NewRecorder()
	r.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	require.Contains(t, body, "pgporter_mover_transfers_committed_total 1")
	require.Regexp(t, `pgporter_mover_chunks_received_total [1-9]`, body)
	require.Regexp(t, `pgporter_mover_durable_bytes_total [1-9]`, body)
}

// TestCommitPrunesLeftovers: files left in DEST.partial that the manifest
// does not list (an older source, an abandoned transfer) are not committed.
func TestCommitPrunesLeftovers(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 21, 1)
	// A source file named like a temporary file of the receiver's own.
	require.NoError(t, os.WriteFile(filepath.Join(src, ManifestName+".tmp"), []byte("user data"), 0o600))
	dest := filepath.Join(r.root, "pruned")
	// An abandoned transfer of another sender made DEST.partial.
	abandoned := dialRaw(t, r)
	abandoned.open(t, dest, 1, 5)
	abandoned.conn.CloseWithError(0, "") // the send below retries while the server lets it go
	require.DirExists(t, dest+".partial")
	require.NoError(t, os.MkdirAll(filepath.Join(dest+".partial", "old", "deep"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dest+".partial", "old", "deep", "stale.dat"), []byte("stale"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dest+".partial", "9999.dat"), []byte("stale"), 0o600))

	_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest})
	require.NoError(t, err)
	requireSameTree(t, src, dest)
	require.NoFileExists(t, filepath.Join(dest, "9999.dat"))
	require.NoDirExists(t, filepath.Join(dest, "old"))
	man, err := ReadManifest(dest)
	require.NoError(t, err)
	require.Len(t, man.Files, 8)
	rep, err := Verify(context.Background(), dest)
	require.NoError(t, err)
	require.Empty(t, rep.Problems)
}

// TestRerunAfterSourceChangeRefused: a finished transfer rerun with a
// different source is not reported as complete.
func TestRerunAfterSourceChangeRefused(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 22, 1)
	dest := filepath.Join(r.root, "changed")
	ctx := context.Background()
	_, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(src, "new.dat"), []byte("new"), 0o600))
	_, err = s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest})
	require.ErrorIs(t, err, protocol.ErrConflict)
	require.Contains(t, err.Error(), "source now has 8 files")
}

// TestConcurrentTransfersOneDest: of two transfers racing for one
// destination, exactly one writes it; the other is told it is busy.
func TestConcurrentTransfersOneDest(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	dest := filepath.Join(r.root, "race")
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	srcs := make([]string, 2)
	for i := range 2 {
		srcs[i] = t.TempDir()
		makeTree(t, srcs[i], 30+uint64(i), 1)
	}
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: srcs[i], Dest: dest, RetryFor: -1})
		}()
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		if err == nil {
			ok++
			requireSameTree(t, srcs[i], dest)
			continue
		}
		// The loser either found the destination busy or, if it came after
		// the commit, already there.
		if !errors.Is(err, protocol.ErrBusy) {
			require.ErrorIs(t, err, protocol.ErrConflict)
		}
	}
	require.Equal(t, 1, ok, "errors: %v", errs)
}

// TestRemovedPartialResendsInOneRerun: if DEST.partial is deleted between
// runs, the next run resends everything (not one file per rerun).
func TestRemovedPartialResendsInOneRerun(t *testing.T) {
	r := startReceiver(t, ServerOptions{SyncInterval: 20 * time.Millisecond})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 23, 2)
	dest := filepath.Join(r.root, "removed")
	o := interruptedSend(t, r, s, src, dest)
	require.NoError(t, os.RemoveAll(dest+".partial"))
	res, err := s.Send(context.Background(), r.addr, r.id.ID, o)
	require.NoError(t, err)
	require.Zero(t, res.ResumedChunks)
	requireSameTree(t, src, dest)
}

func TestSpaceQuery(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	ctx := context.Background()
	free, total, err := s.Space(ctx, r.addr, r.id.ID, filepath.Join(r.root, "x"))
	require.NoError(t, err)
	_, _, err = s.Space(ctx, r.addr, r.id.ID, r.root)
	require.NoError(t, err, "the root itself")
	require.Positive(t, total)
	require.LessOrEqual(t, free, total)
	_, _, err = s.Space(ctx, r.addr, r.id.ID, "/etc")
	require.ErrorIs(t, err, protocol.ErrBadPath)
}

// TestSendGrowingTree sends a tree while it is being written: files are
// offered as the feed announces them (chunks flow before the tree is
// complete), the source directory may be renamed meanwhile, and the
// transfer commits once the feed closes.
func TestSendGrowingTree(t *testing.T) {
	r := startReceiver(t, ServerOptions{SyncInterval: 10 * time.Millisecond})
	s := newTestSender(t, r, PermSend)
	work := t.TempDir()
	src := filepath.Join(work, "dump.partial")
	require.NoError(t, os.Mkdir(src, 0o700))
	dest := filepath.Join(r.root, "grown")
	feed := NewFileFeed()
	durable := make(chan struct{})
	var once sync.Once
	o := SendOptions{Src: src, Dest: dest, Feed: feed, Progress: func(p SendProgress) {
		if p.Durable > 0 {
			once.Do(func() { close(durable) })
		}
	}}
	type result struct {
		res *SendResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := s.Send(context.Background(), r.addr, r.id.ID, o)
		done <- result{res, err}
	}()
	require.NoError(t, os.WriteFile(filepath.Join(src, "3001.dat"), pgbenchLike(2<<20, 1), 0o600))
	feed.Add("3001.dat")
	select {
	case <-durable: // the first file moved before the tree was complete
	case res := <-done:
		t.Fatalf("send ended before the feed closed: %v", res.err)
	}
	final := filepath.Join(work, "dump")
	require.NoError(t, os.Rename(src, final), "the producer renames its directory when done")
	require.NoError(t, os.MkdirAll(filepath.Join(final, "blobs"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(final, "blobs", "b.dat"), randomBytes(300<<10, 2), 0o600))
	feed.Add("blobs/b.dat")
	require.NoError(t, os.WriteFile(filepath.Join(final, "toc.dat"), randomBytes(10<<10, 3), 0o600))
	feed.Add("toc.dat")
	feed.Close(nil)
	res := <-done
	require.NoError(t, res.err)
	require.Equal(t, 3, res.res.Files)
	requireSameTree(t, final, dest)

	// Rerun after a crash that lost the record of the commit: complete.
	again := NewFileFeed()
	for _, p := range []string{"3001.dat", "blobs/b.dat", "toc.dat"} {
		again.Add(p)
	}
	again.Close(nil)
	res2, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: final, Dest: dest, Feed: again, TransferID: res.res.TransferID})
	require.NoError(t, err)
	require.True(t, res2.AlreadyComplete)
}

// TestSendGrowingTreeFails: a producer that fails closes the feed with its
// error; nothing is committed.
func TestSendGrowingTreeFails(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "a.dat"), pgbenchLike(100<<10, 1), 0o600))
	feed := NewFileFeed()
	feed.Add("a.dat")
	boom := errors.New("pg_dump failed")
	feed.Close(boom)
	dest := filepath.Join(r.root, "failed")
	_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, Feed: feed})
	require.ErrorIs(t, err, boom)
	require.NoDirExists(t, dest)
}
