package mover

import (
	"context"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// trickle writes b to w one byte every gap, as a slow-loris peer does, until
// b is written, a write fails, or the returned stop is called (which waits
// for the writer).
func trickle(w io.Writer, b []byte, gap time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(gap)
		defer t.Stop()
		for i := range b {
			if _, err := w.Write(b[i : i+1]); err != nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C: // the slowness is the attack, not a synchronisation
			}
		}
	})
	return func() { cancel(); wg.Wait() }
}

// TestHostileSlowLoris: a peer that trickles a frame (here a byte every
// 250 ms, a frame that would take about 10 s) is dropped once the frame
// timeout has passed, before its Hello, on the control stream and on a data
// stream; a peer that connects and opens no stream is dropped too.
func TestHostileSlowLoris(t *testing.T) {
	const timeout = time.Second
	const gap = 250 * time.Millisecond
	r := startReceiver(t, ServerOptions{FrameTimeout: timeout})
	// Padding makes each frame long enough to need ~10 s at the trickle rate.
	longPath := "a-rather-long-name-that-takes-a-while-to-trickle.dat"
	header := protocol.AppendFrame(nil, &protocol.FileHeader{Index: 0, Path: longPath, Mode: 0o644, Size: 5, NumChunks: 1})
	require.Greater(t, time.Duration(len(header))*gap, 8*timeout)

	rawConn := func(t *testing.T) *quic.Conn {
		m := newTLSTestMover(t)
		require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "loris", Perms: PermSend, Added: time.Now()}))
		conn, err := quic.DialAddr(context.Background(), r.addr, ClientTLSConfig(m.id, r.id.ID), QUICConfig())
		require.NoError(t, err)
		t.Cleanup(func() { conn.CloseWithError(0, "") })
		return conn
	}
	requireDropped := func(t *testing.T, conn *quic.Conn, start time.Time) {
		select {
		case <-conn.Context().Done():
		case <-time.After(8 * timeout):
			t.Fatal("the server still holds the connection")
		}
		var ae *quic.ApplicationError
		require.ErrorAs(t, context.Cause(conn.Context()), &ae)
		require.Equal(t, quic.ApplicationErrorCode(protocol.CloseProtocolError), ae.ErrorCode)
		require.GreaterOrEqual(t, time.Since(start), timeout)
	}

	t.Run("no stream", func(t *testing.T) {
		start := time.Now()
		conn := rawConn(t)
		requireDropped(t, conn, start)
	})
	t.Run("hello", func(t *testing.T) {
		conn := rawConn(t)
		st, err := conn.OpenStreamSync(context.Background())
		require.NoError(t, err)
		start := time.Now()
		stop := trickle(st, append([]byte{byte(protocol.StreamControl)}, protocol.AppendFrame(nil, &protocol.Hello{Version: protocol.Version, MinVersion: protocol.MinVersion, Software: longPath})...), gap)
		defer stop()
		requireDropped(t, conn, start)
	})
	t.Run("control stream", func(t *testing.T) {
		s := dialRaw(t, r)
		s.open(t, filepath.Join(r.root, "loris-ctl"), 1, 5)
		start := time.Now()
		stop := trickle(s.cs.rw, header, gap)
		defer stop()
		err := s.nextError(t)
		require.ErrorIs(t, err, protocol.ErrProtocol)
		require.ErrorContains(t, err, "not complete")
		require.Less(t, time.Since(start), 8*timeout)
		require.NoDirExists(t, filepath.Join(r.root, "loris-ctl"))
	})
	t.Run("data stream", func(t *testing.T) {
		s := dialRaw(t, r)
		s.open(t, filepath.Join(r.root, "loris-data"), 1, 5)
		content := []byte("hello")
		s.offer(t, "a.dat", content)
		m, err := s.cs.next()
		require.NoError(t, err)
		require.IsType(t, &protocol.Need{}, m)
		st, err := s.conn.OpenStreamSync(context.Background())
		require.NoError(t, err)
		_, err = st.Write([]byte{byte(protocol.StreamData)})
		require.NoError(t, err)
		start := time.Now()
		// A big frame, announced in full but sent a byte at a time.
		frame := protocol.AppendFrame(nil, &protocol.ChunkData{ID: chunk.Sum(content), Codec: chunk.CodecNone, PlainLen: 5, Payload: content})
		stop := trickle(st, append(frame, make([]byte, 64)...), gap)
		defer stop()
		err = s.nextError(t)
		require.ErrorIs(t, err, protocol.ErrProtocol)
		require.ErrorContains(t, err, "not complete")
		require.Less(t, time.Since(start), 8*timeout)
	})
}
