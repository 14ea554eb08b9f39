package mover

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// asVersion makes the servers started after it speak at most version v, as
// an older build would, until the test ends.
func asVersion(t *testing.T, v uint16) {
	t.Helper()
	testServerVersion.Store(uint32(v))
	t.Cleanup(func() { testServerVersion.Store(0) })
}

// autoStartingAt makes the auto ladder start at l, as CPU-busy windows would
// have led it there, until the test ends.
func autoStartingAt(t *testing.T, l chunk.Level) {
	t.Helper()
	testAutoStart.Store(int64(l))
	t.Cleanup(func() { testAutoStart.Store(0) })
}

// TestSendS2: a transfer at a forced s2 level, and one whose auto ladder
// is at s2, deliver the tree and count the chunks sent as S2.
func TestSendS2(t *testing.T) {
	for _, mode := range []string{"s2", "auto"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "auto" {
				autoStartingAt(t, chunk.LevelS2)
			}
			r := startReceiver(t, ServerOptions{})
			s := newTestSender(t, r, PermSend)
			src := t.TempDir()
			makeTree(t, src, 2, 1)
			dest := filepath.Join(r.root, "s2")
			res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, Compression: mode})
			require.NoError(t, err)
			requireSameTree(t, src, dest)
			require.Positive(t, res.Levels["s2"], "levels %v", res.Levels)
			require.Less(t, res.WireBytes, res.Bytes, "S2 shrinks compressible data")
			require.Contains(t, res.LevelsText(), "s2 ")
			if mode == "s2" {
				require.Equal(t, map[string]int64{"s2": res.ChunksSent}, res.Levels)
				require.Equal(t, "s2", res.Compression)
			}
		})
	}
}

// TestSendNoS2ToVersion5: a receiver speaking protocol 5 is never sent an
// S2 chunk: auto stays in zstd even when its ladder was at S2 (the
// receiver would refuse an S2 chunk and fail the transfer), and a forced s2
// level fails with a clear error before anything is sent.
func TestSendNoS2ToVersion5(t *testing.T) {
	asVersion(t, 5)
	autoStartingAt(t, chunk.LevelS2)
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 3, 1)

	dest := filepath.Join(r.root, "forced")
	_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, Compression: "s2", RetryFor: -1})
	require.ErrorIs(t, err, errNoS2)
	require.Contains(t, err.Error(), "protocol 5")
	require.NoDirExists(t, dest)
	require.NoDirExists(t, dest+".partial")

	dest = filepath.Join(r.root, "auto")
	res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest})
	require.NoError(t, err)
	requireSameTree(t, src, dest)
	require.Zero(t, res.Levels["s2"], "levels %v", res.Levels)
	require.Positive(t, res.Levels["fast4"], "levels %v", res.Levels)
}

// dialAsVersion connects to r as a trusted sender whose Hello says v.
func dialAsVersion(t *testing.T, r *testReceiver, v uint16) *rawSender {
	t.Helper()
	m := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "old", Perms: PermSend, Added: time.Now()}))
	conn, err := quic.DialAddr(context.Background(), r.addr, ClientTLSConfig(m.id, r.id.ID), QUICConfig())
	require.NoError(t, err)
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	st, err := conn.OpenStreamSync(context.Background())
	require.NoError(t, err)
	cs := newControlStream(st)
	_, err = st.Write([]byte{byte(protocol.StreamControl)})
	require.NoError(t, err)
	require.NoError(t, cs.write(&protocol.Hello{Version: v, MinVersion: protocol.MinVersion, Software: "pgporter old"}))
	h, err := cs.next()
	require.NoError(t, err)
	require.IsType(t, &protocol.Hello{}, h)
	return &rawSender{conn: conn, cs: cs}
}

// TestReceiverRefusesS2BelowVersion6: a sender that negotiated protocol 5
// and sends an S2 chunk anyway (a valid one, of the right content) breaks
// the protocol: the receiver refuses it rather than decode it.
func TestReceiverRefusesS2BelowVersion6(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := dialAsVersion(t, r, 5)
	dest := filepath.Join(r.root, "s2-at-5")
	content := bytes.Repeat([]byte("compressible content "), 200)
	s.open(t, dest, 1, uint64(len(content)))
	s.offer(t, "a.dat", content)

	m, err := s.cs.next()
	require.NoError(t, err)
	need, ok := m.(*protocol.Need)
	require.True(t, ok, "got %T", m)
	require.Equal(t, []uint32{0}, need.Chunks)

	packed, codec := chunk.Compress(nil, content, chunk.LevelS2)
	require.Equal(t, chunk.CodecS2, codec)
	st, err := s.conn.OpenStreamSync(context.Background())
	require.NoError(t, err)
	_, err = st.Write([]byte{byte(protocol.StreamData)})
	require.NoError(t, err)
	require.NoError(t, protocol.WriteMessage(st, &protocol.ChunkData{ID: chunk.Sum(content), Codec: codec, PlainLen: uint32(len(content)), Payload: packed}))

	// A receiver that took the chunk would wait for more: bound the wait.
	timer := time.AfterFunc(10*time.Second, func() { s.conn.CloseWithError(0, "test timed out") })
	defer timer.Stop()
	err = s.nextError(t)
	require.ErrorIs(t, err, protocol.ErrProtocol)
	require.Contains(t, err.Error(), "codec s2")
	require.NoDirExists(t, dest)
	got, err := os.ReadFile(filepath.Join(dest+".partial", "a.dat"))
	if err == nil {
		require.False(t, bytes.Contains(got, content[:20]), "the S2 chunk must not be decoded and written")
	}
}
