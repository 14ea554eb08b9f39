package mover

import (
	"context"
	"fmt"
	"time"

	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
)

// dialMover connects to a mover and exchanges Hello on a new control stream.
func dialMover(ctx context.Context, addr string, id *Identity, peer PeerID, idle time.Duration) (*quic.Conn, *controlStream, error) {
	return dialMoverFor(ctx, addr, id, peer, idle, PermSend)
}

// dialMoverFor is dialMover for a connection that needs the permission
// need: a refusal names it.
func dialMoverFor(ctx context.Context, addr string, id *Identity, peer PeerID, idle time.Duration, need Perm) (*quic.Conn, *controlStream, error) {
	conn, cs, _, err := dialMoverBuffers(ctx, addr, id, peer, idle, need)
	return conn, cs, err
}

// dialMoverBuffers is dialMoverFor that also returns the UDP socket's
// buffer sizes, for the caller to warn about.
func dialMoverBuffers(ctx context.Context, addr string, id *Identity, peer PeerID, idle time.Duration, need Perm) (*quic.Conn, *controlStream, UDPBuffers, error) {
	return dialMoverFEC(ctx, addr, id, peer, idle, need, 0, nil)
}

// dialMoverFEC is dialMoverBuffers from a socket that frames its datagrams
// for loss repair in groups of fecK, when fecK is above 0 (lossrepair.go).
// then, if not nil, is written right after the Hello, before the peer's
// Hello is read: the caller's first request, a round trip sooner. The
// peer reads its control stream in order, so any version takes it; it
// must be a message that every version the caller accepts understands.
func dialMoverFEC(ctx context.Context, addr string, id *Identity, peer PeerID, idle time.Duration, need Perm, fecK int, then protocol.Message) (*quic.Conn, *controlStream, UDPBuffers, error) {
	qc := QUICConfig()
	if idle > 0 {
		qc.MaxIdleTimeout = idle
		qc.KeepAlivePeriod = min(qc.KeepAlivePeriod, idle/3)
	}
	conn, bufs, err := dialQUIC(ctx, addr, ClientTLSConfig(id, peer), qc, fecK)
	if err != nil {
		return nil, nil, bufs, ExplainHandshakeError(err, id.ID, peer, addr, need)
	}
	// In TLS 1.3 the server checks our certificate after our side of the
	// handshake is done: a refusal shows up on the first stream.
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), "")
		return nil, nil, bufs, ExplainHandshakeError(fmt.Errorf("opening control stream: %w", err), id.ID, peer, addr, need)
	}
	cs := newControlStream(st)
	// The Hello waits for the peer's answer: ctx ending (a pre-dialled
	// connection discarded, a transfer given up) ends that wait too.
	stop := context.AfterFunc(ctx, func() {
		conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), "cancelled")
	})
	err = cs.clientHello(then)
	if !stop() && err == nil {
		err = ctx.Err() // cancelled as the Hello ended: the connection is closing
	}
	if err != nil {
		conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseProtocolError), "hello failed")
		if ctx.Err() != nil {
			return nil, nil, bufs, fmt.Errorf("connecting to %s: %w", addr, ctx.Err())
		}
		return nil, nil, bufs, ExplainHandshakeError(err, id.ID, peer, addr, need)
	}
	_ = notePeerSeen(id.home, peer, cs.peerSoftware) // shown by 'mover peers'; best effort
	go heartbeat(conn, qc.KeepAlivePeriod)
	return conn, cs, bufs, nil
}

// heartbeatSize makes a heartbeat's packet bigger than the smallest
// stateless reset quic-go sends (42 bytes), which a reset must stay below.
const heartbeatSize = 32

// heartbeat sends a small datagram every period until conn ends. A client
// waiting on a mover (for a commit, for a job's next event) otherwise sends
// only QUIC's keep-alive PINGs, too small to be answered with a stateless
// reset once path MTU discovery is over: a mover that crashed and was
// restarted in the meantime would be noticed only at the idle timeout. The
// server ignores them.
func heartbeat(conn *quic.Conn, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	beat := make([]byte, heartbeatSize)
	for {
		select {
		case <-conn.Context().Done():
			return
		case <-t.C:
			if err := conn.SendDatagram(beat); err != nil {
				return // closed, or a peer without datagrams
			}
		}
	}
}

// maxBackoff caps the pause between reconnects: a reconnect costs one
// handshake, and a short cap resumes a transfer within 2 s of a link
// coming back.
const maxBackoff = 2 * time.Second

// backoff is the pause before a client's next reconnect to a mover (a
// sender's, a remote repository's): it starts at first and doubles after
// each pause, up to maxBackoff. A retryPlan says when to stop.
type backoff struct {
	first, next time.Duration
}

func newBackoff(first time.Duration) backoff { return backoff{first: first, next: first} }

// reset starts the pauses again from the first: an attempt got somewhere.
func (b *backoff) reset() { b.next = b.first }

// past reports whether the next pause, started at now, would end after
// deadline.
func (b *backoff) past(now, deadline time.Time) bool { return now.Add(b.next).After(deadline) }

// wait pauses for the next pause and doubles it. It returns ctx's error if
// ctx ends first, and closed if done is closed first (a nil done never is).
func (b *backoff) wait(ctx context.Context, done <-chan struct{}, closed error) error {
	t := time.NewTimer(b.next)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-done:
		return closed
	case <-t.C:
	}
	b.next = min(b.next*2, maxBackoff)
	return nil
}
