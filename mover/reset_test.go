package mover

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// TestRestartedMoverResetsOldConnections: a mover that crashed (its socket
// gone without a CONNECTION_CLOSE) and was restarted on the same address
// answers its predecessor's connections with a stateless reset, which the
// peer takes at once, instead of waiting out the 30 s idle timeout.
func TestRestartedMoverResetsOldConnections(t *testing.T) {
	m, client := trustingPair(t)
	log := slog.New(slog.DiscardHandler)

	// The predecessor: a transport keyed as Server keys it.
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	addr := udp.LocalAddr().String()
	tr := &quic.Transport{Conn: udp, StatelessResetKey: m.id.StatelessResetKey()}
	ln, err := tr.Listen(ServerTLSConfig(m.id, m.trust, log), QUICConfig())
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := quic.DialAddr(ctx, addr, ClientTLSConfig(client.id, m.id.ID), QUICConfig())
	require.NoError(t, err)
	defer conn.CloseWithError(0, "")
	sc, err := ln.Accept(ctx)
	require.NoError(t, err)
	// A round trip confirms the handshake on both sides: until then the
	// client may still send handshake packets, which no reset answers.
	go func() {
		if st, err := sc.AcceptStream(ctx); err == nil {
			_, _ = io.Copy(st, st)
		}
	}()
	echo, err := conn.OpenStreamSync(ctx)
	require.NoError(t, err)
	_, err = echo.Write([]byte("ping"))
	require.NoError(t, err)
	_, err = io.ReadFull(echo, make([]byte, 4))
	require.NoError(t, err)
	// The crash: the socket goes, and no CONNECTION_CLOSE with it.
	require.NoError(t, udp.Close())
	defer tr.Close()

	srv, err := NewServer(ServerOptions{Home: m.home, Listen: addr, Roots: []string{t.TempDir()}, Log: log})
	require.NoError(t, err)
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx) }()
	defer func() { stop(); <-served }()

	// Any packet of the old connection now reaches the new mover; one
	// smaller than the smallest stateless reset (42 bytes) gets no answer.
	st, err := conn.OpenStream()
	require.NoError(t, err)
	_, err = st.Write(make([]byte, 1024))
	require.NoError(t, err)
	select {
	case <-conn.Context().Done():
	case <-ctx.Done():
		t.Fatal("the old connection is still open")
	}
	var reset *quic.StatelessResetError
	require.ErrorAs(t, context.Cause(conn.Context()), &reset, "the connection ended by a stateless reset, not a timeout")

	// The same identity gives the same key; another gives another.
	require.Equal(t, m.id.StatelessResetKey(), srv.id.StatelessResetKey())
	require.NotEqual(t, m.id.StatelessResetKey(), client.id.StatelessResetKey())
}

// TestIdleClientLearnsOfRestart: a client that only waits on a mover (for
// a commit, or a job's next event) sends nothing but QUIC's keep-alive
// PINGs; they must draw a stateless reset from a restarted mover, so that
// the client notices within a keep-alive period, not at the 30 s idle
// timeout.
func TestIdleClientLearnsOfRestart(t *testing.T) {
	a, client := trustingPair(t)
	log := slog.New(slog.DiscardHandler)
	first, err := NewServer(ServerOptions{Home: a.home, Listen: "127.0.0.1:0", Roots: []string{t.TempDir()}, Log: log})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- first.Serve(ctx) }()
	addr := first.Addr().String()

	conn, _, err := dialMover(ctx, addr, client.id, a.id.ID, 0)
	require.NoError(t, err)
	defer conn.CloseWithError(0, "")
	// The crash: the socket goes, and no CONNECTION_CLOSE with it.
	require.NoError(t, first.tr.Conn.Close())
	<-served

	// The restarted mover: the same identity (so the same reset key) at the
	// same address; another home, since the crashed one still holds its own.
	home := t.TempDir()
	require.NoError(t, os.CopyFS(filepath.Join(home, identityDir), os.DirFS(filepath.Join(a.home, identityDir))))
	require.NoError(t, os.Chmod(filepath.Join(home, identityDir, keyFileName), 0o600)) // CopyFS makes it 0644
	second, err := NewServer(ServerOptions{Home: home, Listen: addr, Roots: []string{t.TempDir()}, Log: log})
	require.NoError(t, err)
	require.Equal(t, first.ID(), second.ID())
	go func() { served <- second.Serve(ctx) }()
	defer func() { cancel(); <-served }()

	start := time.Now()
	select {
	case <-conn.Context().Done():
	case <-time.After(20 * time.Second): // under the 30 s idle timeout
		t.Fatal("the client did not notice the restart")
	}
	var reset *quic.StatelessResetError
	require.ErrorAs(t, context.Cause(conn.Context()), &reset, "the connection ended by a stateless reset, not a timeout")
	t.Logf("noticed %.1fs after the restart (keep-alive every %v)", time.Since(start).Seconds(), QUICConfig().KeepAlivePeriod)
}

// TestHeartbeatDrawsReset: once path MTU discovery is over, an idle QUIC
// client sends only keep-alive PINGs, smaller than any stateless reset, so
// a restarted mover cannot answer them; the heartbeat's datagrams are big
// enough. With MTU discovery off (its probes would draw a reset too), the
// connection without a heartbeat runs into its idle timeout, the one with a
// heartbeat is reset.
func TestHeartbeatDrawsReset(t *testing.T) {
	for _, beat := range []bool{false, true} {
		t.Run(fmt.Sprintf("heartbeat=%v", beat), func(t *testing.T) {
			m, client := trustingPair(t)
			log := slog.New(slog.DiscardHandler)
			qc := QUICConfig()
			qc.DisablePathMTUDiscovery = true
			qc.MaxIdleTimeout, qc.KeepAlivePeriod = 3*time.Second, time.Second

			udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			require.NoError(t, err)
			addr := udp.LocalAddr().String()
			tr := &quic.Transport{Conn: udp, StatelessResetKey: m.id.StatelessResetKey()}
			defer tr.Close()
			ln, err := tr.Listen(ServerTLSConfig(m.id, m.trust, log), qc)
			require.NoError(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			conn, err := quic.DialAddr(ctx, addr, ClientTLSConfig(client.id, m.id.ID), qc)
			require.NoError(t, err)
			defer conn.CloseWithError(0, "")
			_, err = ln.Accept(ctx)
			require.NoError(t, err)
			if beat {
				go heartbeat(conn, qc.KeepAlivePeriod)
			}
			require.NoError(t, udp.Close()) // the crash

			udp2, err := net.ListenUDP("udp", udp.LocalAddr().(*net.UDPAddr))
			require.NoError(t, err)
			tr2 := &quic.Transport{Conn: udp2, StatelessResetKey: m.id.StatelessResetKey()}
			defer tr2.Close()
			_, err = tr2.Listen(ServerTLSConfig(m.id, m.trust, log), qc)
			require.NoError(t, err)

			<-conn.Context().Done() // bounded by the 3 s idle timeout
			var reset *quic.StatelessResetError
			var idle *quic.IdleTimeoutError
			if beat {
				require.ErrorAs(t, context.Cause(conn.Context()), &reset)
			} else {
				require.ErrorAs(t, context.Cause(conn.Context()), &idle, "PINGs alone drew a reset: the heartbeat may be needless")
			}
		})
	}
}

// trustingPair is a mover and a client it trusts with send.
func trustingPair(t *testing.T) (m, client *tlsTestMover) {
	t.Helper()
	m, client = newTLSTestMover(t), newTLSTestMover(t)
	require.NoError(t, m.trust.Trust(TrustedPeer{ID: client.id.ID, Name: "client", Perms: PermSend, Added: time.Now()}))
	return m, client
}
