package mover

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// TestSpareClosedOnCancelledJoin (from a review): join hands its spare
// connection to a join; if the join's context has ended (the jobs
// drained, a worker failed, the attempt was given up), take may see that
// before the spare's dial and return without it. Nothing closed it then:
// an open connection (its own UDP socket, heartbeats, one of the
// receiver's connections per peer) outlived the transfer. dialJoin now
// owns the spare and closes what it does not take.
func TestSpareClosedOnCancelledJoin(t *testing.T) {
	r := startReceiver(t, ServerOptions{Reserve: 1})
	s := newTestSender(t, r, PermSend)
	tr := &sendTransfer{s: s, addr: r.addr, peer: r.id.ID, tid: "spare-leak"}
	for range 20 { // take's select picks either ready case: about half take the ctx's
		p := tr.startPreDial(context.Background())
		<-p.done
		require.True(t, p.ready(), "the spare's dial: %v", p.err)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, _, err := tr.dialJoin(ctx, [protocol.JoinTokenLen]byte{}, fecDefaultK, p)
		require.Error(t, err)
		require.False(t, p.ready(), "a spare the join did not take is closed")
		require.Error(t, p.conn.Context().Err(), "its connection is closed")
		p.discard()
	}
}

// TestDialHelloCancelled (from a review): a dial whose context ends while
// it waits for the peer's Hello returns then, with the context's error,
// and closes its connection. It waited until the idle timeout before, and
// with it the discard of a spare connection dialled ahead, and so the
// transfer attempt that discarded it.
func TestDialHelloCancelled(t *testing.T) {
	srv, client := newTLSTestMover(t), newTLSTestMover(t)
	require.NoError(t, srv.trust.Trust(TrustedPeer{ID: client.id.ID, Name: "client", Perms: PermSend, Added: time.Now()}))
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	tr := &quic.Transport{Conn: udp}
	ln, err := tr.Listen(ServerTLSConfig(srv.id, srv.trust, slog.New(slog.DiscardHandler)), QUICConfig())
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close(); tr.Close(); udp.Close() })
	// A peer that reads the Hello and never answers it.
	heard := make(chan *quic.Conn, 1)
	go func() {
		conn, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		st, err := conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		var b [1]byte
		if _, err := st.Read(b[:]); err == nil {
			heard <- conn
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, _, _, err := dialMoverFEC(ctx, udp.LocalAddr().String(), client.id, srv.id.ID, time.Minute, PermSend, 0, nil)
		done <- err
	}()
	conn := <-heard
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(20 * time.Second): // a bound on a failure, well below the minute's idle timeout
		t.Fatal("the dial still waits for the Hello after its context ended")
	}
	<-conn.Context().Done() // the client closed the connection
}
