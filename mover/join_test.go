package mover

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// TestSendJoinedConnections: a send spread over three connections
// (protocol 5) delivers the tree as one.
func TestSendJoinedConnections(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 21, 4)
	dest := filepath.Join(r.root, "joined")
	res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, Connections: 3})
	require.NoError(t, err)
	requireSameTree(t, src, dest)
	require.NotNil(t, res.Path)
	require.Equal(t, 3, res.Path.Connections)
	require.Contains(t, r.log.String(), "connection joined a transfer")
}

// joinPeer is one connection of a hand-driven sender.
type joinPeer struct {
	conn *quic.Conn
	cs   *controlStream
}

func dialJoinPeer(t *testing.T, r *testReceiver, m *tlsTestMover) *joinPeer {
	t.Helper()
	conn, cs, err := dialMover(context.Background(), r.addr, m.id, r.id.ID, 0)
	require.NoError(t, err)
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return &joinPeer{conn: conn, cs: cs}
}

func (p *joinPeer) open(t *testing.T, tid, dest string) *protocol.TransferState {
	t.Helper()
	require.NoError(t, p.cs.write(&protocol.OpenTransfer{TransferID: tid, Dest: dest, Params: chunk.DefaultParams, Files: 1, Bytes: 5}))
	m, err := p.cs.next()
	require.NoError(t, err)
	require.IsType(t, &protocol.TransferState{}, m)
	return m.(*protocol.TransferState)
}

func (p *joinPeer) join(tid string, token [protocol.JoinTokenLen]byte) error {
	if err := p.cs.write(&protocol.JoinTransfer{TransferID: tid, Token: token}); err != nil {
		return err
	}
	m, err := p.cs.next()
	if err != nil {
		return err
	}
	if _, ok := m.(*protocol.TransferState); !ok {
		return protocol.ErrProtocol
	}
	return nil
}

func trustedMover(t *testing.T, r *testReceiver) *tlsTestMover {
	t.Helper()
	m := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "joiner", Perms: PermSend, Added: time.Now()}))
	return m
}

// TestJoinedConnectionSuperseded: a reconnecting sender supersedes every
// connection of its old attempt, joined ones included, before its new one
// is answered; the old token joins nothing after. Guards against a joined
// connection of a dead attempt writing into DEST.partial beside its
// successor.
func TestJoinedConnectionSuperseded(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	m := trustedMover(t, r)
	dest := filepath.Join(r.root, "sup")
	a := dialJoinPeer(t, r, m)
	ts := a.open(t, "t-sup", dest)
	require.NotZero(t, ts.JoinToken, "a protocol 5 receiver gives a join token")
	b := dialJoinPeer(t, r, m)
	require.NoError(t, b.join("t-sup", ts.JoinToken))
	// A data stream held open on the joined connection.
	st, err := b.conn.OpenStreamSync(context.Background())
	require.NoError(t, err)
	_, err = st.Write([]byte{byte(protocol.StreamData)})
	require.NoError(t, err)

	// The receiver serves that stream: it counts against the transfer.
	r.srv.mu.Lock()
	old := r.srv.active["t-sup"]
	r.srv.mu.Unlock()
	require.NotNil(t, old)
	require.Eventually(t, func() bool {
		r.srv.mu.Lock()
		defer r.srv.mu.Unlock()
		return old.rcv != nil && old.rcv.streams.Load() == 1
	}, 10*time.Second, time.Millisecond)

	c := dialJoinPeer(t, r, m)
	ts2 := c.open(t, "t-sup", dest)
	require.NotEqual(t, ts.JoinToken, ts2.JoinToken)
	// By the time the successor is answered, the old attempt is released
	// and no stream of its joined connection is being served.
	select {
	case <-old.done:
	default:
		t.Fatal("the successor was answered before the old attempt was released")
	}
	require.Zero(t, old.rcv.streams.Load(), "a joined connection's data stream was still served when the successor was answered")
	for name, p := range map[string]*joinPeer{"first": a, "joined": b} {
		select {
		case <-p.conn.Context().Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("the %s connection of the superseded attempt is still open", name)
		}
	}
	require.Contains(t, r.log.String(), "connection joined a transfer")

	d := dialJoinPeer(t, r, m)
	require.ErrorIs(t, d.join("t-sup", ts.JoinToken), protocol.ErrPermission, "the old attempt's token joined the new one")
	e := dialJoinPeer(t, r, m)
	require.NoError(t, e.join("t-sup", ts2.JoinToken))
}

// TestHostileJoin: joining takes the same peer and the token its
// transfer was given; anything else is refused and carries no data.
func TestHostileJoin(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	owner := trustedMover(t, r)
	a := dialJoinPeer(t, r, owner)
	ts := a.open(t, "t-own", filepath.Join(r.root, "own"))
	wrong := ts.JoinToken
	wrong[0] ^= 1

	for _, c := range []struct {
		name  string
		m     *tlsTestMover
		tid   string
		token [protocol.JoinTokenLen]byte
	}{
		{"wrong token", owner, "t-own", wrong},
		{"zero token", owner, "t-own", [protocol.JoinTokenLen]byte{}},
		{"another peer with the token", trustedMover(t, r), "t-own", ts.JoinToken},
		{"unknown transfer", owner, "t-none", ts.JoinToken},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := dialJoinPeer(t, r, c.m)
			require.ErrorIs(t, p.join(c.tid, c.token), protocol.ErrPermission)
		})
	}
	// The owner's transfer is still open to its own joins.
	require.NoError(t, dialJoinPeer(t, r, owner).join("t-own", ts.JoinToken))
}

// TestJoinNeedsProtocol5: a sender that speaks protocol 3 gets a
// TransferState a protocol 3 decoder reads (no token), and cannot join.
func TestJoinNeedsProtocol5(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	m := trustedMover(t, r)
	dial := func() *joinPeer {
		conn, err := quic.DialAddr(context.Background(), r.addr, ClientTLSConfig(m.id, r.id.ID), QUICConfig())
		require.NoError(t, err)
		t.Cleanup(func() { conn.CloseWithError(0, "") })
		st, err := conn.OpenStreamSync(context.Background())
		require.NoError(t, err)
		cs := newControlStream(st)
		_, err = st.Write([]byte{byte(protocol.StreamControl)})
		require.NoError(t, err)
		require.NoError(t, cs.write(&protocol.Hello{Version: 3, MinVersion: 3, Software: "pgporter v3"}))
		h, err := cs.next()
		require.NoError(t, err)
		require.IsType(t, &protocol.Hello{}, h)
		return &joinPeer{conn: conn, cs: cs}
	}
	ts := dial().open(t, "t-v3", filepath.Join(r.root, "v3"))
	require.Zero(t, ts.JoinToken)
	require.ErrorIs(t, dial().join("t-v3", [protocol.JoinTokenLen]byte{1}), protocol.ErrProtocol)
}
