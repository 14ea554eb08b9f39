package mover

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pgporter/pgporter/internal/s3test"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestMain checks that no test of the package leaves a goroutine behind
// (QUIC transports, accept loops). No path counts as long (repairRTT)
// unless a test says so: on loopback under the race detector a
// handshake's round trip can pass 10 ms, and the long path's floor and
// early join would change what tests of the level ladder and of the
// connections count.
func TestMain(m *testing.M) {
	repairRTT.Store(int64(time.Hour))
	// The bucket tests' shared S3 server is stopped before the check.
	goleak.VerifyTestMain(s3test.Wrap(m))
}

// longPathsFrom makes paths of rtt or more long for the test.
func longPathsFrom(t *testing.T, rtt time.Duration) {
	old := repairRTT.Swap(int64(rtt))
	t.Cleanup(func() { repairRTT.Store(old) })
}

// noJoinsForLoss stops auto mode from adding connections for loss until t
// ends, for a test that counts its connections exactly: under -race on a
// loaded machine, loopback itself drops datagrams.
func noJoinsForLoss(t *testing.T) {
	noLossJoins.Store(true)
	t.Cleanup(func() { noLossJoins.Store(false) })
}

// tlsTestMover is a mover's identity and trust list in a temporary home.
type tlsTestMover struct {
	home  string
	id    *Identity
	trust *TrustStore
}

func newTLSTestMover(t testing.TB) *tlsTestMover {
	t.Helper()
	home := t.TempDir()
	id, _, err := InitIdentity(home)
	require.NoError(t, err)
	ts, err := OpenTrust(home)
	require.NoError(t, err)
	return &tlsTestMover{home: home, id: id, trust: ts}
}

// echoServer is a real QUIC listener on loopback that echoes one stream per
// accepted connection and reports the peer of every connection it accepts.
type echoServer struct {
	addr     string
	log      *testsupport.Buffer
	accepted chan PeerID
}

func startEchoServer(t *testing.T, m *tlsTestMover) *echoServer {
	t.Helper()
	logs := &testsupport.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	tr := &quic.Transport{Conn: udp}
	ln, err := tr.Listen(ServerTLSConfig(m.id, m.trust, log), QUICConfig())
	require.NoError(t, err)

	s := &echoServer{addr: udp.LocalAddr().String(), log: logs, accepted: make(chan PeerID, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			peer, err := PeerFromState(conn.ConnectionState().TLS)
			if err != nil {
				conn.CloseWithError(1, err.Error())
				continue
			}
			s.accepted <- peer
			wg.Go(func() { serveEcho(ctx, conn) })
		}
	})
	t.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
		tr.Close()
		udp.Close()
	})
	return s
}

func serveEcho(ctx context.Context, conn *quic.Conn) {
	defer conn.CloseWithError(0, "")
	str, err := conn.AcceptStream(ctx)
	if err != nil {
		return
	}
	_, _ = io.Copy(str, str)
	str.Close()
	// Wait for the client to close, so that its last read sees our data.
	select {
	case <-conn.Context().Done():
	case <-ctx.Done():
	}
}

// dial connects from m to the server expecting expect, and waits until the
// server has accepted or refused the connection: in TLS 1.3 the client's
// handshake completes before the server checks the client's certificate,
// so a refusal shows on the first stream operation.
func dialEcho(t *testing.T, m *tlsTestMover, addr string, expect PeerID, tlsConf *tls.Config) (*quic.Conn, error) {
	t.Helper()
	if tlsConf == nil {
		tlsConf = ClientTLSConfig(m.id, expect)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, addr, tlsConf, QUICConfig())
	if err != nil {
		return nil, err
	}
	str, err := conn.OpenStreamSync(ctx)
	if err == nil {
		_, err = str.Write([]byte("ping"))
	}
	if err == nil {
		err = str.Close()
	}
	var got []byte
	if err == nil {
		got, err = io.ReadAll(str)
	}
	if err == nil && string(got) != "ping" {
		err = errors.New("echo mismatch: " + string(got))
	}
	if err != nil {
		conn.CloseWithError(0, "")
		return nil, err
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return conn, nil
}

func TestHandshakeTrusted(t *testing.T) {
	server, client := newTLSTestMover(t), newTLSTestMover(t)
	require.NoError(t, server.trust.Trust(TrustedPeer{ID: client.id.ID, Name: "client", Perms: PermSend}))
	srv := startEchoServer(t, server)

	conn, err := dialEcho(t, client, srv.addr, server.id.ID, nil)
	require.NoError(t, err)
	cs := conn.ConnectionState()
	require.Equal(t, ALPN, cs.TLS.NegotiatedProtocol)
	require.Equal(t, uint16(tls.VersionTLS13), cs.TLS.Version)
	seen, err := PeerFromState(cs.TLS)
	require.NoError(t, err)
	require.Equal(t, server.id.ID, seen, "the client sees the server's ID")
	require.Equal(t, client.id.ID, <-srv.accepted, "the server sees the client's ID")

	require.NoError(t, server.trust.Check(client.id.ID, PermSend))
	err = server.trust.Check(client.id.ID, PermRead)
	require.ErrorIs(t, err, ErrPermission)
	require.ErrorContains(t, err, "--allow send,read")
}

func TestHandshakeLoopbackSelf(t *testing.T) {
	// One mover trusting itself, as the embedded single-machine mode does.
	m := newTLSTestMover(t)
	require.NoError(t, m.trust.Trust(TrustedPeer{ID: m.id.ID, Perms: PermAll}))
	srv := startEchoServer(t, m)
	_, err := dialEcho(t, m, srv.addr, m.id.ID, nil)
	require.NoError(t, err)
	require.Equal(t, m.id.ID, <-srv.accepted)
}

func TestHandshakeUntrustedClient(t *testing.T) {
	server, client := newTLSTestMover(t), newTLSTestMover(t)
	srv := startEchoServer(t, server)

	_, err := dialEcho(t, client, srv.addr, server.id.ID, nil)
	require.Error(t, err)
	var te *quic.TransportError
	require.ErrorAs(t, err, &te, "refused in the handshake, with a TLS alert")
	require.True(t, te.Remote)

	explained := ExplainHandshakeError(err, client.id.ID, server.id.ID, srv.addr, PermSend)
	require.ErrorIs(t, explained, ErrUntrusted)
	require.ErrorAs(t, explained, &te, "the transport error stays in the chain")
	msg := explained.Error()
	require.Contains(t, msg, "mover at "+srv.addr+" (peer "+server.id.ID.Short()+") refused our identity")
	require.Contains(t, msg, "on that host run: pgporter mover trust "+client.id.ID.String()+" --allow send")
	t.Logf("client error: %v", explained)

	logs := srv.log.String()
	t.Logf("server log: %s", logs)
	require.Contains(t, logs, "level=WARN")
	require.Contains(t, logs, `msg="refused untrusted peer"`)
	require.Contains(t, logs, "peer="+client.id.ID.String())
	require.Contains(t, logs, "remote=127.0.0.1:")
	require.Contains(t, logs, "pgporter mover trust "+client.id.ID.String())
	select {
	case p := <-srv.accepted:
		t.Fatalf("refused peer %s was accepted", p)
	default:
	}

	// Trusting the client takes effect on the running server.
	other, err := OpenTrust(server.home)
	require.NoError(t, err)
	require.NoError(t, other.Trust(TrustedPeer{ID: client.id.ID, Perms: PermSend}))
	_, err = dialEcho(t, client, srv.addr, server.id.ID, nil)
	require.NoError(t, err)
	require.Equal(t, client.id.ID, <-srv.accepted)

	// And untrusting it too, for new connections.
	require.NoError(t, other.Untrust(client.id.ID))
	_, err = dialEcho(t, client, srv.addr, server.id.ID, nil)
	require.ErrorIs(t, ExplainHandshakeError(err, client.id.ID, server.id.ID, srv.addr), ErrUntrusted)
}

func TestHandshakeWrongServer(t *testing.T) {
	server, client := newTLSTestMover(t), newTLSTestMover(t)
	require.NoError(t, server.trust.Trust(TrustedPeer{ID: client.id.ID, Perms: PermSend}))
	srv := startEchoServer(t, server)

	expected := randomPeerID(t)
	_, err := dialEcho(t, client, srv.addr, expected, nil)
	require.Error(t, err)
	var mismatch *PeerMismatchError
	require.ErrorAs(t, err, &mismatch)
	require.Equal(t, server.id.ID, mismatch.Got)

	explained := ExplainHandshakeError(err, client.id.ID, expected, srv.addr)
	require.ErrorIs(t, explained, ErrWrongPeer)
	require.NotErrorIs(t, explained, ErrUntrusted)
	require.ErrorContains(t, explained, server.id.ID.String())
	require.ErrorContains(t, explained, expected.String())
	require.ErrorContains(t, explained, srv.addr)
	var te *quic.TransportError
	require.ErrorAs(t, explained, &te)
	t.Logf("client error: %v", explained)
}

func TestHandshakeWrongProtocol(t *testing.T) {
	server, client := newTLSTestMover(t), newTLSTestMover(t)
	require.NoError(t, server.trust.Trust(TrustedPeer{ID: client.id.ID, Perms: PermSend}))
	srv := startEchoServer(t, server)

	conf := ClientTLSConfig(client.id, server.id.ID)
	conf.NextProtos = []string{"pgporter/0"}
	_, err := dialEcho(t, client, srv.addr, server.id.ID, conf)
	explained := ExplainHandshakeError(err, client.id.ID, server.id.ID, srv.addr)
	require.ErrorContains(t, explained, "does not speak pgporter/1")
	require.NotErrorIs(t, explained, ErrUntrusted)
}

func TestExplainHandshakeErrorPassesOthers(t *testing.T) {
	require.NoError(t, ExplainHandshakeError(nil, PeerID{}, PeerID{}, ""))
	other := errors.New("boom")
	require.Equal(t, other, ExplainHandshakeError(other, PeerID{}, PeerID{}, "x"))
	local := &quic.TransportError{ErrorCode: quic.TransportErrorCode(0x100 + 42)}
	require.Equal(t, error(local), ExplainHandshakeError(local, PeerID{}, PeerID{}, "x"), "a local alert is not a refusal by the peer")
}

func TestQUICConfig(t *testing.T) {
	c := QUICConfig()
	require.Equal(t, uint64(32<<20), c.MaxStreamReceiveWindow)
	require.Equal(t, uint64(128<<20), c.MaxConnectionReceiveWindow)
	require.Equal(t, int64(64), c.MaxIncomingStreams)
	require.Equal(t, 5*time.Second, c.KeepAlivePeriod)
	require.Equal(t, 30*time.Second, c.MaxIdleTimeout)
	require.True(t, c.EnableDatagrams, "clients' heartbeats")
	require.NotSame(t, c, QUICConfig(), "callers may modify their copy")
}
