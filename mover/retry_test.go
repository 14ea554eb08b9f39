package mover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// TestRetryable guards against retrying for minutes what cannot succeed
// (issue 19: a missing port and a wrong peer ID were retried for 2 minutes)
// and against giving up on what may pass.
func TestRetryable(t *testing.T) {
	self, other, want := randomPeerID(t), randomPeerID(t), randomPeerID(t)
	const addr = "10.0.0.7:7448"
	alert := func(a quic.TransportErrorCode) error {
		return ExplainHandshakeError(&quic.TransportError{Remote: true, ErrorCode: 0x100 + a}, self, want, addr)
	}
	for _, c := range []struct {
		name      string
		err       error
		retryable bool
	}{
		{"missing port", ValidateAddr("127.0.0.1"), false},
		{"port out of range", ValidateAddr("127.0.0.1:99999"), false},
		{"host that does not exist", &AddrError{Addr: addr, Err: &net.DNSError{Err: "no such host", IsNotFound: true}}, false},
		{"DNS timeout", &AddrError{Addr: addr, Err: &net.DNSError{Err: "timeout", IsTimeout: true}, Temporary: true}, true},
		{"wrong peer", ExplainHandshakeError(&PeerMismatchError{Want: want, Got: other}, self, want, addr), false},
		{"untrusted", alert(quic.TransportErrorCode(alertCertificateUnknown)), false},
		{"another protocol (ALPN)", alert(quic.TransportErrorCode(alertNoApplicationProtocol)), false},
		{"no common version, found here", fmt.Errorf("hello: %w", protocol.ErrVersion), false},
		{"no common version, found there", &protocol.RemoteError{Code: protocol.CodeVersion}, false},
		{"no common version, explained", ExplainHandshakeError(&protocol.RemoteError{Code: protocol.CodeVersion}, self, want, addr), false},
		{"permission refused", &protocol.RemoteError{Code: protocol.CodePermission}, false},
		{"receiver busy", &protocol.RemoteError{Code: protocol.CodeBusy}, true},
		{"refused connection", &quic.ApplicationError{Remote: true, ErrorCode: quic.ApplicationErrorCode(protocol.CloseRefused)}, false},
		{"our own data", permanentError{errors.New("bad manifest")}, false},
		{"cancelled", fmt.Errorf("sending: %w", context.Canceled), false},
		{"no answer", &NoAnswerError{Addr: addr, After: time.Second, Err: &quic.IdleTimeoutError{}}, true},
		{"no answer, explained again", ExplainHandshakeError(&quic.HandshakeTimeoutError{}, self, want, addr), true},
		{"connection went silent", &quic.IdleTimeoutError{}, true},
		{"stateless reset", &quic.StatelessResetError{}, true},
		{"network unreachable", &net.OpError{Op: "write", Net: "udp", Err: syscall.ENETUNREACH}, true},
		{"stream cut", io.ErrUnexpectedEOF, true},
		{"receiver shut down", &quic.ApplicationError{Remote: true, ErrorCode: quic.ApplicationErrorCode(protocol.CloseShutdown)}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			require.Error(t, c.err)
			require.Equal(t, c.retryable, retryable(c.err), "%v", c.err)
		})
	}
}

// TestExplainHandshakeErrorHints: each connection failure that retrying
// cannot fix names the address and what to do.
func TestExplainHandshakeErrorHints(t *testing.T) {
	self, other, want := randomPeerID(t), randomPeerID(t), randomPeerID(t)
	const addr = "10.0.0.7:7448"
	for _, c := range []struct {
		name string
		err  error
		is   error
		hint string
	}{
		{"wrong peer", &PeerMismatchError{Want: want, Got: other}, ErrWrongPeer, "on that host run: pgporter mover id"},
		{"untrusted", &quic.TransportError{Remote: true, ErrorCode: 0x100 + quic.TransportErrorCode(alertCertificateRequired)}, ErrUntrusted, "on that host run: pgporter mover trust " + self.String()},
		{"another protocol", &quic.TransportError{Remote: true, ErrorCode: 0x100 + quic.TransportErrorCode(alertNoApplicationProtocol)}, protocol.ErrVersion, "incompatible pgporter version"},
		{"no common version", &protocol.RemoteError{Code: protocol.CodeVersion}, protocol.ErrVersion, "run the same pgporter release on both hosts"},
		{"handshake timeout", &quic.HandshakeTimeoutError{}, ErrNoAnswer, "is 'pgporter mover serve' running there"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := ExplainHandshakeError(c.err, self, want, addr)
			require.ErrorIs(t, err, c.is)
			require.ErrorContains(t, err, addr)
			require.ErrorContains(t, err, c.hint)
		})
	}
}

func TestValidateAddr(t *testing.T) {
	for _, c := range []struct {
		addr, wantErr string
	}{
		{"127.0.0.1:7448", ""},
		{"mover1.example:7448", ""},
		{"[::1]:7448", ""},
		{":7448", ""},
		{"127.0.0.1:domain", ""}, // a service name, as net.ResolveUDPAddr takes
		{"127.0.0.1", "missing port in address"},
		{"mover1", "missing port in address"},
		{"::1", "too many colons"},
		{"127.0.0.1:", "missing port"},
		{"127.0.0.1:0", "port 0"},
		{"127.0.0.1:99999", `port "99999" is not a number from 1 to 65535`},
		{"127.0.0.1:nope", `port "nope"`},
	} {
		t.Run(c.addr, func(t *testing.T) {
			err := ValidateAddr(c.addr)
			if c.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrBadAddr)
			require.ErrorContains(t, err, c.wantErr)
			require.ErrorContains(t, err, fmt.Sprintf("%q", c.addr), "the error names the address")
			require.ErrorContains(t, err, "HOST:PORT")
		})
	}
	_, _, err := ParsePeerAddr("127.0.0.1#" + randomPeerID(t).String())
	require.ErrorIs(t, err, ErrBadAddr)
}

// TestRetryPlan: a mover that never answered gets firstContactFor from the
// first attempt; once one answered, each run of failures gets RetryFor from
// its first failure, afresh after progress.
func TestRetryPlan(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	noAnswer := &NoAnswerError{Addr: "a:1", Err: &quic.IdleTimeoutError{}}
	lost := &quic.IdleTimeoutError{}

	p := retryPlan{retryFor: 2 * time.Minute, start: t0}
	d, first := p.fail(t0.Add(3*time.Second), noAnswer)
	require.True(t, first)
	require.Equal(t, t0.Add(firstContactFor), d)
	require.True(t, p.firstContact(noAnswer))
	d, first = p.fail(t0.Add(6*time.Second), noAnswer)
	require.False(t, first)
	require.Equal(t, t0.Add(firstContactFor), d)

	p = retryPlan{retryFor: 3 * time.Second, start: t0}
	d, _ = p.fail(t0.Add(time.Second), noAnswer)
	require.Equal(t, t0.Add(3*time.Second), d, "a shorter RetryFor wins")

	p = retryPlan{retryFor: 2 * time.Minute, start: t0, contacted: true}
	require.False(t, p.firstContact(noAnswer))
	d, first = p.fail(t0.Add(time.Minute), noAnswer)
	require.True(t, first)
	require.Equal(t, t0.Add(3*time.Minute), d, "a mover that answered before is restarting: all of RetryFor")
	d, first = p.fail(t0.Add(90*time.Second), lost)
	require.False(t, first)
	require.Equal(t, t0.Add(3*time.Minute), d)
	p.progress()
	d, first = p.fail(t0.Add(5*time.Minute), lost)
	require.True(t, first)
	require.Equal(t, t0.Add(7*time.Minute), d)
}

// TestSendWrongPeerFailsAtOnce: a valid but wrong peer ID ends Send at
// once with the hint, instead of being retried for RetryFor (issue 19).
func TestSendWrongPeerFailsAtOnce(t *testing.T) {
	t.Parallel()
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 1, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := s.Send(ctx, r.addr, randomPeerID(t), SendOptions{Src: src, Dest: filepath.Join(r.root, "x")})
	require.ErrorIs(t, err, ErrWrongPeer)
	require.ErrorContains(t, err, "pgporter mover id")
	require.ErrorContains(t, err, r.addr)
	require.Less(t, time.Since(start), 5*time.Second)
}

// TestSendBadAddrFailsAtOnce: an address without a port is not retried
// (issue 19: "missing port in address" for 2 minutes).
func TestSendBadAddrFailsAtOnce(t *testing.T) {
	t.Parallel()
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 1, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	host, _, err := net.SplitHostPort(r.addr)
	require.NoError(t, err)
	_, err = s.Send(ctx, host, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "x")})
	require.ErrorIs(t, err, ErrBadAddr)
	require.NoError(t, ctx.Err(), "Send retried")
}

// TestSendNoAnswer: a mover that never answers (nothing listens, or a
// firewall drops) is named with a hint at the first failed handshake, on
// the logger, and Send gives up after firstContactFor, not RetryFor.
func TestSendNoAnswer(t *testing.T) {
	t.Parallel()
	r := startReceiver(t, ServerOptions{})
	proxy := testsupport.NewUDPProxy(t, r.addr)
	proxy.Cut()
	m := newTLSTestMover(t)
	log := &testsupport.Buffer{}
	s, err := NewSender(m.home, slog.New(slog.NewTextHandler(log, nil)))
	require.NoError(t, err)
	defer s.Close()
	src := t.TempDir()
	makeTree(t, src, 1, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	_, err = s.Send(ctx, proxy.Addr(), r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "x")})
	took := time.Since(start)
	require.ErrorIs(t, err, ErrNoAnswer)
	require.ErrorContains(t, err, "no answer from mover at "+proxy.Addr())
	require.ErrorContains(t, err, "pgporter mover serve")
	require.Less(t, took, firstContactFor+handshakeIdleTimeout)
	requireOneRetryLine(t, log.String(), "no connection to the receiving mover yet; retrying", proxy.Addr())
}

// requireOneRetryLine checks that log has one line about retries, msg,
// at warn level, naming addr and until when.
func requireOneRetryLine(t *testing.T, log, msg, addr string) {
	t.Helper()
	var retries []string
	for l := range strings.Lines(log) {
		if strings.Contains(l, "retrying") || strings.Contains(l, "reconnecting") {
			retries = append(retries, l)
		}
	}
	require.Len(t, retries, 1, "one line when retrying starts:\n%s", log)
	require.Contains(t, retries[0], "level=WARN")
	require.Contains(t, retries[0], fmt.Sprintf("msg=%q", msg))
	require.Contains(t, retries[0], "addr="+addr)
	require.Regexp(t, `until=\d\d:\d\d:\d\d `, retries[0])
}

// TestSendFirstContactRetried: a mover that does not answer the first
// attempt but answers a later one (it was restarting) gets the transfer.
func TestSendFirstContactRetried(t *testing.T) {
	t.Parallel()
	r := startReceiver(t, ServerOptions{})
	proxy := testsupport.NewUDPProxy(t, r.addr)
	proxy.Cut()
	m := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "sender", Perms: PermSend, Added: time.Now()}))
	warned := make(chan struct{})
	// The first attempt has failed once the sender says it retries.
	s, err := NewSender(m.home, slog.New(slog.NewTextHandler(onWrite(sync.OnceFunc(func() { close(warned) })), nil)))
	require.NoError(t, err)
	defer s.Close()
	go func() {
		<-warned
		proxy.Restore()
	}()
	src := t.TempDir()
	makeTree(t, src, 2, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dest := filepath.Join(r.root, "x")
	res, err := s.Send(ctx, proxy.Addr(), r.id.ID, SendOptions{Src: src, Dest: dest})
	require.NoError(t, err)
	require.Equal(t, 1, res.Reconnects)
	requireSameTree(t, src, dest)
}

// onWrite is a writer that calls itself on each write.
type onWrite func()

func (f onWrite) Write(p []byte) (int, error) {
	f()
	return len(p), nil
}

// TestSendReconnectSaysUntilWhen: a transfer that loses its link after it
// started rides the outage out, and says once, at warn level, which
// address it reconnects to and until when.
func TestSendReconnectSaysUntilWhen(t *testing.T) {
	t.Parallel()
	r := startReceiver(t, ServerOptions{SyncInterval: 20 * time.Millisecond})
	proxy := testsupport.NewUDPProxy(t, r.addr)
	m := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "sender", Perms: PermSend, Added: time.Now()}))
	log := &testsupport.Buffer{}
	restore := sync.OnceFunc(proxy.Restore)
	// The link comes back once the sender says it reconnects.
	w := io.MultiWriter(log, onWrite(func() {
		if strings.Contains(log.String(), "reconnecting") {
			go restore()
		}
	}))
	s, err := NewSender(m.home, slog.New(slog.NewTextHandler(w, nil)))
	require.NoError(t, err)
	defer s.Close()
	src := t.TempDir()
	makeTree(t, src, 5, 2)
	dest := filepath.Join(r.root, "x")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var cut sync.Once
	o := SendOptions{Src: src, Dest: dest, BWLimit: 8 << 20, Compression: "none", IdleTimeout: time.Second}
	o.Progress = func(p SendProgress) {
		if p.Durable > p.Total/3 {
			cut.Do(proxy.Cut)
		}
	}
	res, err := s.Send(ctx, proxy.Addr(), r.id.ID, o)
	require.NoError(t, err)
	require.Positive(t, res.Reconnects)
	requireSameTree(t, src, dest)
	requireOneRetryLine(t, log.String(), "transfer interrupted; reconnecting", proxy.Addr())
}
