package mover

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// growingSend starts a Send of src fed by feed, and returns its result
// channel and a channel closed once the receiver reports durable bytes.
func growingSend(t *testing.T, r *testReceiver, s *Sender, src, dest string, feed *FileFeed) (<-chan error, <-chan struct{}, *SendResult) {
	t.Helper()
	durable := make(chan struct{})
	var once sync.Once
	o := SendOptions{Src: src, Dest: dest, Feed: feed, Progress: func(p SendProgress) {
		if p.Durable > 0 {
			once.Do(func() { close(durable) })
		}
	}}
	done := make(chan error, 1)
	res := new(SendResult)
	go func() {
		got, err := s.Send(context.Background(), r.addr, r.id.ID, o)
		if got != nil {
			*res = *got
		}
		done <- err
	}()
	return done, durable, res
}

// waitDurable waits until the receiver has made bytes durable; the deadline
// only keeps a broken build from hanging the test run.
func waitDurable(t *testing.T, durable <-chan struct{}, done <-chan error) {
	t.Helper()
	select {
	case <-durable:
	case err := <-done:
		t.Fatalf("send ended before the file was closed: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("no chunk of the growing file became durable before it was closed")
	}
}

// TestSendGrowingFile guards issue 16's step 2.4: a dump file announced while
// its writer appends to it is sent as it grows (its first chunks are durable
// on the receiver before the file is closed) and completely once closed.
func TestSendGrowingFile(t *testing.T) {
	r := startReceiver(t, ServerOptions{SyncInterval: 10 * time.Millisecond})
	s := newTestSender(t, r, PermSend)
	src := filepath.Join(t.TempDir(), "dump.partial")
	require.NoError(t, os.Mkdir(src, 0o700))
	dest := filepath.Join(r.root, "grown")
	data := pgbenchLike(12<<20, 7)
	w, err := os.OpenFile(filepath.Join(src, "3001.dat"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(t, err)
	defer w.Close()
	feed := NewFileFeed()
	// The writer's first append comes before the feed hears of the file,
	// as with inotify's IN_MODIFY.
	appendPart := func(b []byte) {
		_, err := w.Write(b)
		require.NoError(t, err)
		feed.AddGrowing("3001.dat")
	}
	appendPart(data[:3<<20])
	done, durable, res := growingSend(t, r, s, src, dest, feed)
	appendPart(data[3<<20 : 4<<20])
	waitDurable(t, durable, done)
	// A second file announced growing that is complete before its turn:
	// its header still says growing (regression: it gave its final size).
	small := pgbenchLike(300<<10, 8)
	require.NoError(t, os.WriteFile(filepath.Join(src, "3002.dat"), small, 0o600))
	feed.AddGrowing("3002.dat")
	for off := 4 << 20; off < len(data); off += 3 << 20 {
		appendPart(data[off:min(off+3<<20, len(data))])
	}
	require.NoError(t, w.Close())
	feed.Add("3001.dat")
	feed.Add("3002.dat")
	require.NoError(t, os.WriteFile(filepath.Join(src, "toc.dat"), randomBytes(10<<10, 3), 0o600))
	feed.Add("toc.dat")
	feed.Close(nil)
	require.NoError(t, <-done)
	require.Equal(t, 3, res.Files)
	require.Equal(t, int64(len(data)+len(small)+10<<10), res.Bytes)
	requireSameTree(t, src, dest)
	// The receiver's manifest holds the chunk-list hash the sender computed
	// at the close: verify cuts the received file again and agrees.
	_, err = Verify(context.Background(), dest)
	require.NoError(t, err)
	m, err := ReadManifest(dest)
	require.NoError(t, err)
	st, err := os.Stat(filepath.Join(src, "3001.dat"))
	require.NoError(t, err)
	for _, f := range m.Files {
		if f.Path == "3001.dat" {
			require.Equal(t, st.ModTime().UnixNano(), f.MTime.UnixNano(), "the mtime at the close, from FileEnd")
		}
	}
}

// TestSendGrowingFileShrinks: a growing file that gets shorter is not a dump
// file being appended to; the send fails and nothing is committed.
func TestSendGrowingFileShrinks(t *testing.T) {
	r := startReceiver(t, ServerOptions{SyncInterval: 10 * time.Millisecond})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	dest := filepath.Join(r.root, "shrunk")
	name := filepath.Join(src, "3001.dat")
	require.NoError(t, os.WriteFile(name, pgbenchLike(4<<20, 9), 0o600))
	feed := NewFileFeed()
	feed.AddGrowing("3001.dat")
	done, durable, _ := growingSend(t, r, s, src, dest, feed)
	waitDurable(t, durable, done)
	require.NoError(t, os.Truncate(name, 0))
	feed.AddGrowing("3001.dat")
	err := <-done
	require.ErrorIs(t, err, errSourceChanged)
	require.ErrorContains(t, err, "3001.dat shrank")
	require.NoDirExists(t, dest)
}
