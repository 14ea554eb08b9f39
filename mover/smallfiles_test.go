package mover

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
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
	files, err := scanTree(dir)
	require.NoError(t, err)
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
