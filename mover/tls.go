package mover

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
)

// ALPN is the application protocol movers negotiate; a peer speaking another
// version of the protocol fails the handshake.
const ALPN = "pgporter/1"

// Errors of connection setup.
var (
	// ErrUntrusted matches the error of a client whose identity the server
	// refused (see [ExplainHandshakeError]).
	ErrUntrusted = errors.New("mover: refused by peer: our identity is not in its trust list")
	// ErrWrongPeer matches the error of a client that reached a mover other
	// than the one it expected.
	ErrWrongPeer = errors.New("mover: peer is not the expected mover")
)

// errNotTrusted is what the server's certificate check returns; the client
// never sees it (TLS sends only the alert).
var errNotTrusted = errors.New("peer not in the trust list")

// ServerTLSConfig returns the TLS configuration of a mover that accepts
// connections: TLS 1.3, ALPN [ALPN], a client certificate required, and only
// peers in trust admitted. A refused peer is logged at warn level with its
// full ID, its address and the command that would trust it. Permissions are
// not checked here but per request, with [TrustStore.Check].
//
// Session tickets are disabled: a resumed session skips the certificate
// check, which would let a peer removed from the trust list back in.
func ServerTLSConfig(id *Identity, trust *TrustStore, log *slog.Logger) *tls.Config {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	conf := func(remote string) *tls.Config {
		return &tls.Config{
			MinVersion:             tls.VersionTLS13,
			Certificates:           []tls.Certificate{id.Cert},
			ClientAuth:             tls.RequireAnyClientCert,
			NextProtos:             []string{ALPN},
			SessionTicketsDisabled: true,
			VerifyPeerCertificate:  verifyClient(trust, log, remote),
		}
	}
	c := conf("")
	// A per-connection configuration knows the client's address for the log.
	c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		remote := ""
		if hello.Conn != nil && hello.Conn.RemoteAddr() != nil {
			remote = hello.Conn.RemoteAddr().String()
		}
		return conf(remote), nil
	}
	return c
}

func verifyClient(trust *TrustStore, log *slog.Logger, remote string) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("no client certificate")
		}
		peer := PeerIDFromCert(raw[0])
		if _, ok, err := trust.lookup(peer); !ok {
			attrs := []any{"peer", peer.String(), "remote", remote, "hint", "trust it with: " + TrustCommand(peer, 0, trust.home)}
			if err != nil {
				log.Error("refused peer: trust list unreadable", append(attrs, "err", err)...)
			} else {
				log.Warn("refused untrusted peer", attrs...)
			}
			return fmt.Errorf("%w: %s", errNotTrusted, peer)
		}
		log.Debug("accepted peer", "peer", peer.String(), "remote", remote)
		return nil
	}
}

// ClientTLSConfig returns the TLS configuration to connect to the mover
// whose peer ID is expect, presenting id. The server's certificate is
// pinned by its hash instead of being checked against a CA: any other
// certificate fails the handshake with a [*PeerMismatchError].
func ClientTLSConfig(id *Identity, expect PeerID) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		NextProtos:   []string{ALPN},
		ServerName:   certCommonName,
		// Verification is VerifyPeerCertificate's pin, not a CA chain.
		InsecureSkipVerify:     true,
		SessionTicketsDisabled: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no server certificate")
			}
			if got := PeerIDFromCert(raw[0]); got != expect {
				return &PeerMismatchError{Want: expect, Got: got}
			}
			return nil
		},
	}
}

// PeerMismatchError is the client's refusal of a server whose certificate
// does not hash to the expected peer ID. It matches [ErrWrongPeer].
type PeerMismatchError struct {
	Want, Got PeerID
}

func (e *PeerMismatchError) Error() string {
	return fmt.Sprintf("%v: it is %s, we expected %s: check the peer ID (on that host run: pgporter mover id)", ErrWrongPeer, e.Got, e.Want)
}

// Is makes the error match [ErrWrongPeer].
func (e *PeerMismatchError) Is(target error) bool { return target == ErrWrongPeer }

// PeerFromState returns the peer ID of the other side of a finished
// handshake (quic.Conn.ConnectionState().TLS).
func PeerFromState(cs tls.ConnectionState) (PeerID, error) {
	if len(cs.PeerCertificates) == 0 {
		return PeerID{}, errors.New("mover: peer presented no certificate")
	}
	return PeerIDFromCert(cs.PeerCertificates[0].Raw), nil
}

// UntrustedError is a client's view of a server that refused its identity.
// It matches [ErrUntrusted] and wraps the transport error.
type UntrustedError struct {
	Self   PeerID // our identity, which the server does not trust
	Remote PeerID // the server's, zero if unknown
	Addr   string
	Need   Perm // permissions the caller wants, for the hint; 0 if unknown
	Err    error
}

func (e *UntrustedError) Error() string {
	who := "mover at " + e.Addr
	if !e.Remote.IsZero() {
		who += " (peer " + e.Remote.Short() + ")"
	}
	return fmt.Sprintf("%s refused our identity %s: it is not in its trust list; on that host run: %s",
		who, e.Self.Short(), TrustCommand(e.Self, e.Need, ""))
}

// Unwrap returns [ErrUntrusted] and the transport error.
func (e *UntrustedError) Unwrap() []error { return []error{ErrUntrusted, e.Err} }

// TLS alerts a server sends when it does not accept the client certificate.
const (
	alertBadCertificate         tls.AlertError = 42
	alertUnsupportedCertificate tls.AlertError = 43
	alertCertificateUnknown     tls.AlertError = 46
	alertUnknownCA              tls.AlertError = 48
	alertAccessDenied           tls.AlertError = 49
	alertCertificateRequired    tls.AlertError = 116
	alertNoApplicationProtocol  tls.AlertError = 120
)

// ExplainHandshakeError turns the error of a connection attempt from us
// (self) to the mover at addr (remote, if known) into one an operator can
// act on:
//   - the server refused our certificate: an [*UntrustedError] (matching
//     [ErrUntrusted]) that names the command to run on the server's host,
//     with need, if given, as the permissions to grant;
//   - the server is not the mover we expected: an error matching [ErrWrongPeer];
//   - the server speaks no compatible protocol ([protocol.ErrVersion]), or
//     never answered ([ErrNoAnswer]).
//
// Other errors are returned unchanged, as is nil.
//
// In TLS 1.3 the client finishes its handshake before the server has
// checked the client's certificate, so a refusal may surface from
// quic.Dial or only from the first stream operation; pass either here.
func ExplainHandshakeError(err error, self, remote PeerID, addr string, need ...Perm) error {
	if err == nil {
		return nil
	}
	var mismatch *PeerMismatchError
	if errors.As(err, &mismatch) {
		// %.0w keeps the transport error in the chain without its text.
		return fmt.Errorf("connecting to mover at %s: %w%.0w", addr, mismatch, err)
	}
	if te, ok := errors.AsType[*quic.TransportError](err); ok && te.Remote && te.ErrorCode.IsCryptoError() {
		switch tls.AlertError(te.ErrorCode - 0x100) {
		case alertBadCertificate, alertUnsupportedCertificate, alertCertificateUnknown,
			alertUnknownCA, alertAccessDenied, alertCertificateRequired:
			var p Perm
			for _, n := range need {
				p |= n
			}
			return &UntrustedError{Self: self, Remote: remote, Addr: addr, Need: p, Err: err}
		case alertNoApplicationProtocol:
			// Matches protocol.ErrVersion: retrying cannot help.
			return fmt.Errorf("mover at %s does not speak %s (another program, or an incompatible pgporter version)%.0w: %w", addr, ALPN, protocol.ErrVersion, err)
		}
	}
	if _, ok := errors.AsType[*NoAnswerError](err); ok {
		return err // names addr already
	}
	if errors.Is(err, protocol.ErrVersion) {
		return fmt.Errorf("mover at %s: %w: run the same pgporter release on both hosts", addr, err)
	}
	if _, ok := errors.AsType[*quic.HandshakeTimeoutError](err); ok {
		return &NoAnswerError{Addr: addr, After: QUICConfig().HandshakeIdleTimeout, Err: err}
	}
	return err
}

// Flow-control windows. The receive window must cover bandwidth × RTT:
// 128 MiB per connection keeps 1 Gbit/s busy across a 1 s round trip, or
// 10 Gbit/s across 100 ms. quic-go grows windows from the initial size up to
// the maximum as the application keeps up, so idle peers cost little. The
// maxima are ceilings: a mover serving transfers grows a connection's window
// only to twice the bandwidth-delay product it measures, within the peer's
// memory budget (window.go).
const (
	initialStreamWindow     = 4 << 20
	maxStreamWindow         = 32 << 20
	initialConnectionWindow = 8 << 20
	maxConnectionWindow     = 128 << 20
)

// handshakeIdleTimeout is how long a handshake waits for any packet from
// the other side. Over UDP a port where nothing listens, or a firewall that
// drops, answers nothing: this is how soon a client can say so (quic-go's
// default is 5 s). quic-go retransmits an unanswered Initial after 0.3, 0.9
// and 2.1 s, so four lost in a row on a lossy link fail an attempt, which
// the retry loops then repeat.
const handshakeIdleTimeout = 3 * time.Second

// QUICConfig returns the QUIC configuration of both sides of a mover
// connection, tuned for links with a high bandwidth × latency product.
func QUICConfig() *quic.Config {
	return &quic.Config{
		InitialStreamReceiveWindow:     initialStreamWindow,
		MaxStreamReceiveWindow:         maxStreamWindow,
		InitialConnectionReceiveWindow: initialConnectionWindow,
		MaxConnectionReceiveWindow:     maxConnectionWindow,
		MaxIncomingStreams:             64,
		KeepAlivePeriod:                5 * time.Second,
		HandshakeIdleTimeout:           handshakeIdleTimeout,
		MaxIdleTimeout:                 30 * time.Second,
		// Only for clients' heartbeats (see heartbeat); a server drops what
		// it receives, beyond quic-go's bounded queue, unread.
		EnableDatagrams: true,
		Tracer:          qlogTracer,
	}
}

// qlogTracer writes a qlog trace of every connection into the directory
// $QLOGDIR names (quic-go's convention; for diagnosing losses and
// congestion, e.g. with qvis), and does nothing when it is unset. It makes
// the directory itself, because quic-go's tracer ends the process when it
// cannot.
func qlogTracer(ctx context.Context, isClient bool, id quic.ConnectionID) qlogwriter.Trace {
	dir := os.Getenv("QLOGDIR")
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil
	}
	return qlog.DefaultConnectionTracer(ctx, isClient, id)
}
