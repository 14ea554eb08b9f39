package mover

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// smallTree writes n small files as pg_dump -Fd writes for a database of
// many small tables (docs/design/0005, issue 16's 5,000 tables): a toc.dat
// and one data file of a few rows per table.
func smallTree(tb testing.TB, dir string, n int) {
	tb.Helper()
	if err := os.WriteFile(filepath.Join(dir, "toc.dat"), randomBytes(64<<10, 9), 0o600); err != nil {
		tb.Fatal(err)
	}
	for i := range n {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%d.dat", 4000+i)), pgbenchLike(1800, uint64(i)), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkSendManySmall measures a cold transfer of 5,000 small files over
// loopback QUIC, with fsync and pebble state on the receiver: per-file
// costs (syncs, control messages, state writes), not bytes. It reports the
// control-stream messages and writes per file of each side.
func BenchmarkSendManySmall(b *testing.B) {
	const files = 5000
	src := b.TempDir()
	smallTree(b, src, files)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		r := startReceiver(b, ServerOptions{})
		s := newTestSender(b, r, PermSend)
		b.StartTimer()
		res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "d")})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		r.stop() // the receiver counts its messages when its transfer ends
		n := float64(res.Files)
		b.ReportMetric(float64(res.ControlMessages)/n, "sent-msgs/file")
		b.ReportMetric(float64(res.ControlWrites)/n, "sent-writes/file")
		b.ReportMetric(metricOf(b, r.srv, "pgporter_mover_control_messages_sent_total")/n, "recv-msgs/file")
		b.ReportMetric(metricOf(b, r.srv, "pgporter_mover_control_writes_total")/n, "recv-writes/file")
		b.StartTimer()
	}
}

// metricOf is counterValue for benchmarks.
func metricOf(tb testing.TB, srv *Server, name string) float64 {
	tb.Helper()
	mfs, err := srv.metrics.reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	tb.Fatalf("no metric %s", name)
	return 0
}

// TestSenderHandleNotClosedWhileRead guards against the sender's bounded
// table of open source files closing a file a data worker was reading
// ("file already closed" in a send of thousands of small files): a handle
// in use is never evicted.
func TestSenderHandleNotClosedWhileRead(t *testing.T) {
	dir := t.TempDir()
	smallTree(t, dir, 1000)
	tree, err := scanTree(dir)
	require.NoError(t, err)
	files := tree.files
	root, err := os.OpenRoot(dir)
	require.NoError(t, err)
	defer root.Close()
	tr := &sendTransfer{src: newSource(root, files), handles: map[uint32]*srcHandle{}, unchecked: map[uint32]bool{}}
	defer tr.closeHandles()
	for i, f := range files {
		f.Index = uint32(i)
	}
	busy, release, err := tr.handle(files[0])
	require.NoError(t, err)
	for _, f := range files[1:] {
		_, rel, err := tr.handle(f)
		require.NoError(t, err)
		rel()
	}
	buf := make([]byte, 16)
	_, err = busy.ReadAt(buf, 0)
	require.NoError(t, err, "the busy handle was closed under its reader")
	release()
	tr.handlesMu.Lock()
	n := len(tr.handles)
	tr.handlesMu.Unlock()
	require.LessOrEqual(t, n, 65, "idle handles are evicted down to the bound")
}

// countSyncfs counts the syncfs calls of the test, passing them on to
// fail (nil: the real syncfs).
func countSyncfs(t *testing.T, fail error) *atomic.Int64 {
	t.Helper()
	if !syncfsReports() {
		t.Skip("syncfs does not report errors on this kernel: barriers fsync each file")
	}
	var n atomic.Int64
	old := syncfs
	syncfs = func(fd int) error {
		n.Add(1)
		if fail != nil {
			return fail
		}
		return old(fd)
	}
	t.Cleanup(func() { syncfs = old })
	return &n
}

// TestBarrierSyncfs: a barrier over many files is one syncfs of the partial
// root (and the commit one more, for modes and times), a barrier over a few
// files fsyncs them; either way the tree arrives whole.
func TestBarrierSyncfs(t *testing.T) {
	for _, tc := range []struct {
		files   int
		syncfss int64 // at least
	}{{files: 3 * syncfsMin, syncfss: 2}, {files: syncfsMin / 2, syncfss: 0}} {
		t.Run(fmt.Sprint(tc.files, " files"), func(t *testing.T) {
			calls := countSyncfs(t, nil)
			r := startReceiver(t, ServerOptions{})
			s := newTestSender(t, r, PermSend)
			src := t.TempDir()
			smallTree(t, src, tc.files)
			dest := filepath.Join(r.root, "d")
			_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest})
			require.NoError(t, err)
			requireSameTree(t, src, dest)
			if tc.syncfss == 0 {
				require.Zero(t, calls.Load(), "a few files are fsynced one by one")
			} else {
				require.GreaterOrEqual(t, calls.Load(), tc.syncfss, "the last barrier and the commit each syncfs once")
			}
		})
	}
}

// TestSyncfsErrors: a barrier's syncfs that fails keeps the error mapping of
// the per-file fsync it replaces (TestNoSpaceMidTransfer,
// TestDiskFullTargetRoot): no space names the destination that is full,
// an I/O error is reported as it is, nothing is committed, and the rerun
// completes.
func TestSyncfsErrors(t *testing.T) {
	for _, tc := range []struct {
		err     error
		noSpace bool
	}{{unix.ENOSPC, true}, {unix.EDQUOT, true}, {unix.EIO, false}} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			r := startReceiver(t, ServerOptions{})
			s := newTestSender(t, r, PermSend)
			src := t.TempDir()
			smallTree(t, src, 3*syncfsMin)
			dest := filepath.Join(r.root, "d")
			o := SendOptions{Src: src, Dest: dest, RetryFor: -1}
			calls := countSyncfs(t, tc.err)
			_, err := s.Send(context.Background(), r.addr, r.id.ID, o)
			require.Error(t, err)
			require.Positive(t, calls.Load())
			t.Logf("the user reads: %v", err)
			if tc.noSpace {
				require.ErrorIs(t, err, protocol.ErrNoSpace)
				require.ErrorContains(t, err, "no space left on "+dest)
			} else {
				require.NotErrorIs(t, err, protocol.ErrNoSpace)
				require.ErrorContains(t, err, "input/output error")
			}
			require.NoDirExists(t, dest, "nothing is committed")

			syncfs = unix.Syncfs
			_, err = s.Send(context.Background(), r.addr, r.id.ID, o)
			require.NoError(t, err)
			requireSameTree(t, src, dest)
		})
	}
}

func TestKernelAtLeast(t *testing.T) {
	for _, tc := range []struct {
		release string
		want    bool
	}{
		{"5.8.0", true}, {"5.7.19", false}, {"6.1.0-13-amd64", true}, {"4.19.0", false},
		{"5.10.0-custom", true}, {"5.8-rc1", true}, {"10.0", true}, {"5", false}, {"", false}, {"x.y", false},
	} {
		require.Equal(t, tc.want, kernelAtLeast(tc.release, 5, 8), tc.release)
	}
}

// TestSmallFilesCoalesced: a send of many small files writes its manifest,
// and the receiver its Needs, in far fewer control-stream writes than
// messages (docs/design/0005 step 2.3); each message is still a whole frame,
// which the tree arriving whole shows. With the read-ahead too: it must not
// make the chunker wait for Needs every few small files (as when each file
// took a slab of its own), or few files are ready at once.
func TestSmallFilesCoalesced(t *testing.T) {
	for _, tc := range []struct {
		name      string
		readAhead int64
		perWrite  int64 // messages per write, at least, on each side
	}{{"no read-ahead", -1, 10}, {"default read-ahead", 0, 10}} {
		t.Run(tc.name, func(t *testing.T) {
			const files = 400
			r := startReceiver(t, ServerOptions{})
			s := newTestSender(t, r, PermSend)
			src := t.TempDir()
			smallTree(t, src, files)
			dest := filepath.Join(r.root, "d")
			res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, ReadAhead: tc.readAhead})
			require.NoError(t, err)
			requireSameTree(t, src, dest)
			r.stop() // the receiver counts its messages when its transfer ends
			rm, rw := counterValue(t, r.srv, "pgporter_mover_control_messages_sent_total"), counterValue(t, r.srv, "pgporter_mover_control_writes_total")
			t.Logf("sender: %d messages in %d writes; receiver: %v messages in %v writes", res.ControlMessages, res.ControlWrites, rm, rw)
			require.GreaterOrEqual(t, res.ControlMessages, int64(3*files), "FileHeader, FileChunks and FileEnd per file")
			require.GreaterOrEqual(t, res.ControlMessages, tc.perWrite*res.ControlWrites, "the sender's messages are coalesced")
			require.GreaterOrEqual(t, rm, float64(files), "a Need per file")
			require.GreaterOrEqual(t, rm, float64(tc.perWrite)*rw, "the receiver's Needs are coalesced")
		})
	}
}

// TestReserveFlushesQueuedNeeds guards against a deadlock of coalesced
// Needs: a receiver out of positions budget waits for chunks it asked for,
// so the Needs it queued must reach the sender before it waits.
func TestReserveFlushesQueuedNeeds(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	positions := newMemBudget("chunk positions", 1000, 1000)
	var peer PeerID
	require.True(t, positions.tryAcquire(peer, 1000), "held by positions waiting for their chunks")
	r := &receiver{s: &Server{positions: positions}, cs: newControlStream(a), peer: peer, pendingPos: 1, ctx: context.Background()}
	require.NoError(t, r.cs.queue(&protocol.Need{Index: 0, Chunks: []uint32{0}}))
	done := make(chan error, 1)
	go func() { done <- r.reservePositions(context.Background(), 100) }()
	require.NoError(t, b.SetReadDeadline(time.Now().Add(10*time.Second))) // a failure, not a wait
	m, err := protocol.NewReader(b, 0).Next()
	require.NoError(t, err, "the queued Need must be written before the receiver waits for its chunk")
	require.IsType(t, &protocol.Need{}, m)
	positions.release(peer, 100) // its chunk arrived
	require.NoError(t, <-done)
}

// TestQueuedManifestLeavesBeforeSourceWaits guards against a stall of the
// coalesced manifest: with a growing tree, the sender writes what it queued
// before it waits for the next file, or for the first chunks of a file just
// announced, so the first file moves while the producer is still busy (and
// the receiver's Needs can free the sender's read-ahead).
func TestQueuedManifestLeavesBeforeSourceWaits(t *testing.T) {
	for _, next := range []string{"next file", "first chunks of the next file"} {
		t.Run(next, func(t *testing.T) { testQueuedManifestLeaves(t, next != "next file") })
	}
}

func testQueuedManifestLeaves(t *testing.T, announceNext bool) {
	r := startReceiver(t, ServerOptions{SyncInterval: 10 * time.Millisecond})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	feed := NewFileFeed()
	durable := make(chan struct{})
	var once sync.Once
	o := SendOptions{Src: src, Dest: filepath.Join(r.root, "d"), Feed: feed, Progress: func(p SendProgress) {
		if p.Durable > 0 {
			once.Do(func() { close(durable) })
		}
	}}
	done := make(chan error, 1)
	go func() {
		_, err := s.Send(context.Background(), r.addr, r.id.ID, o)
		done <- err
	}()
	require.NoError(t, os.WriteFile(filepath.Join(src, "4000.dat"), pgbenchLike(1800, 1), 0o600))
	feed.Add("4000.dat")
	if announceNext { // its writer has not written yet
		require.NoError(t, os.WriteFile(filepath.Join(src, "4001.dat"), nil, 0o600))
		feed.AddGrowing("4001.dat")
	}
	timer := time.NewTimer(30 * time.Second) // a failure, not a wait
	defer timer.Stop()
	select {
	case <-durable:
	case err := <-done:
		t.Fatalf("send ended before the feed closed: %v", err)
	case <-timer.C:
		t.Fatal("the first file's manifest stayed queued while the sender waited for the next file")
	}
	if announceNext {
		require.NoError(t, os.WriteFile(filepath.Join(src, "4001.dat"), pgbenchLike(1800, 2), 0o600))
		feed.Add("4001.dat")
	}
	feed.Close(nil)
	require.NoError(t, <-done)
}

// fakeStream reads from in and records each write.
type fakeStream struct {
	in     io.Reader
	writes [][]byte
}

func (f *fakeStream) Read(p []byte) (int, error) { return f.in.Read(p) }
func (f *fakeStream) Write(p []byte) (int, error) {
	f.writes = append(f.writes, bytes.Clone(p))
	return len(p), nil
}

// TestControlStreamQueue: queued messages leave in one write of whole
// frames, at flush, at a write, when the queue is full, or when the next
// read may wait (no whole frame buffered), not before.
func TestControlStreamQueue(t *testing.T) {
	var in bytes.Buffer
	require.NoError(t, protocol.WriteMessage(&in, &protocol.Progress{DurableChunks: 1}))
	require.NoError(t, protocol.WriteMessage(&in, &protocol.Progress{DurableChunks: 2}))
	fs := &fakeStream{in: &in}
	cs := newControlStream(fs)
	need := func(i uint32) *protocol.Need { return &protocol.Need{Index: i, Chunks: []uint32{i}} }

	require.NoError(t, cs.queue(need(0)))
	m, err := cs.nextFlushing() // nothing buffered yet: flushes, then reads both frames in one read
	require.NoError(t, err)
	require.Equal(t, uint64(1), m.(*protocol.Progress).DurableChunks)
	require.Len(t, fs.writes, 1)

	require.NoError(t, cs.queue(need(1)))
	require.NoError(t, cs.queue(need(2)))
	m, err = cs.nextFlushing() // the second frame is buffered: no flush
	require.NoError(t, err)
	require.Equal(t, uint64(2), m.(*protocol.Progress).DurableChunks)
	require.Len(t, fs.writes, 1, "queued while a frame was buffered")

	require.NoError(t, cs.write(&protocol.NeedEnd{}))
	require.Len(t, fs.writes, 2, "a write takes the queued messages with it")
	rd := protocol.NewReader(bytes.NewReader(fs.writes[1]), 0)
	for _, want := range []protocol.Message{need(1), need(2), &protocol.NeedEnd{}} {
		got, err := rd.Next()
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	_, err = rd.Next()
	require.ErrorIs(t, err, io.EOF, "whole frames only")
	require.Equal(t, controlCounts{Msgs: 4, Writes: 2}, cs.counts())

	big := make([]uint32, maxQueued) // at least a byte each
	require.NoError(t, cs.queue(&protocol.Need{Index: 3, Chunks: big}))
	require.Len(t, fs.writes, 3, "a full queue is written at once")
}

// TestFrameHeaderSize pins the frame header readBuffer parses to the
// protocol's.
func TestFrameHeaderSize(t *testing.T) {
	require.Len(t, protocol.AppendFrame(nil, &protocol.NeedEnd{}), frameHeaderSize)
}
