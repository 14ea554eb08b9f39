package mover

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// TestHostileUntrustIsImmediate guards against issue 15's "untrust is not
// immediate": a peer removed from the trust list kept its open
// connections, transfers and jobs. The trust list is changed through
// another TrustStore of the same home, as 'pgporter mover untrust' in
// another process does; the server closes every connection of the peer.
func TestHostileUntrustIsImmediate(t *testing.T) {
	r := startReceiver(t, ServerOptions{TrustRecheck: 20 * time.Millisecond})
	p := newRawPeer(t, r)
	busy := p.dial()
	require.NoError(t, busy.openWith("t-untrust", filepath.Join(r.root, "untrust"), chunk.DefaultParams, 1, 5))
	idle := p.dial()
	other := newRawPeer(t, r).dial()

	require.NoError(t, r.trust.Untrust(p.id.ID))
	for name, s := range map[string]*rawSender{"in a transfer": busy, "idle": idle} {
		select {
		case <-s.conn.Context().Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("connection %s still open after untrust", name)
		}
		var ae *quic.ApplicationError
		require.True(t, errors.As(context.Cause(s.conn.Context()), &ae), name)
		require.Equal(t, quic.ApplicationErrorCode(protocol.CloseRefused), ae.ErrorCode, name)
		require.Contains(t, ae.ErrorMessage, "no longer trusted", name)
	}
	require.NoError(t, other.openWith("t-other", filepath.Join(r.root, "other"), chunk.DefaultParams, 1, 5), "another peer is not affected")
	_, _, err := dialMover(context.Background(), r.addr, p.id, r.id.ID, 0)
	require.ErrorIs(t, err, ErrUntrusted)
}

// TestHostileFetchRecheckedPerRequest: a fetch stream checked read only on
// its first request, so a peer whose read permission was taken away went
// on reading the repository on a stream it had open.
func TestHostileFetchRecheckedPerRequest(t *testing.T) {
	f := startRepoServer(t, 0, nil)
	p := newRawPeer(t, f.testReceiver)
	require.NoError(t, f.trust.Trust(TrustedPeer{ID: p.id.ID, Name: "reader", Perms: PermRead | PermSend, Added: time.Now()}))
	s := p.dial()
	st, err := s.conn.OpenStreamSync(context.Background())
	require.NoError(t, err)
	_, err = st.Write([]byte{byte(protocol.StreamFetch)})
	require.NoError(t, err)
	rd := protocol.NewReader(st, 0)
	ask := func() error {
		require.NoError(t, protocol.WriteMessage(st, &protocol.GetChunks{IDs: []chunk.ID{chunk.Sum([]byte("absent"))}}))
		m, err := rd.Next()
		require.NoError(t, err)
		e, ok := m.(*protocol.Error)
		require.True(t, ok, "got %T", m)
		return e.Err()
	}
	require.ErrorIs(t, ask(), protocol.ErrNotFound, "with read: the chunk is looked up")
	// Still trusted (the connection stays), but no longer with read.
	require.NoError(t, f.trust.Trust(TrustedPeer{ID: p.id.ID, Perms: PermSend}))
	err = ask()
	require.ErrorIs(t, err, protocol.ErrPermission)
	require.ErrorContains(t, err, "lacks permission read")
}
