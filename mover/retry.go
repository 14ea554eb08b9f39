package mover

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
)

// Errors of connection setup that name what the operator must check.
var (
	// ErrBadAddr matches an address that cannot be dialled as given (no
	// port, a bad port, a host name that does not exist).
	ErrBadAddr = errors.New("mover: bad mover address")
	// ErrNoAnswer matches a connection attempt that got no answer at all
	// within the handshake timeout: over UDP nothing tells a client that
	// no mover listens, or that a firewall drops its packets.
	ErrNoAnswer = errors.New("mover: no answer from mover")
)

// AddrError is an address that cannot be dialled as given. It matches
// [ErrBadAddr] unless the lookup of its host failed for a reason that may
// pass (Temporary).
type AddrError struct {
	Addr      string
	Err       error
	Temporary bool // a DNS lookup that may succeed later
}

func (e *AddrError) Error() string {
	switch _, lookup := errors.AsType[*net.DNSError](e.Err); {
	case e.Temporary:
		return fmt.Sprintf("mover address %q: %v", e.Addr, e.Err)
	case lookup:
		return fmt.Sprintf("mover address %q: %v: check the host name", e.Addr, e.Err)
	}
	return fmt.Sprintf("mover address %q: %v: want HOST:PORT, e.g. 10.0.0.7:7448", e.Addr, e.Err)
}

// Unwrap returns [ErrBadAddr], unless Temporary, and the cause.
func (e *AddrError) Unwrap() []error {
	if e.Temporary {
		return []error{e.Err}
	}
	return []error{ErrBadAddr, e.Err}
}

// ValidateAddr checks that addr is HOST:PORT with a port a mover can listen
// on, without looking the host up: a command checks its flags with it
// before it dials. The error is an [*AddrError].
func ValidateAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		if ae, ok := errors.AsType[*net.AddrError](err); ok {
			err = errors.New(ae.Err) // its text repeats the address
		}
		return &AddrError{Addr: addr, Err: err}
	}
	if port == "" {
		return &AddrError{Addr: addr, Err: errors.New("missing port")}
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		// A service name ("domain") resolves as net.ResolveUDPAddr would.
		p, lerr := net.LookupPort("udp", port)
		if lerr != nil {
			return &AddrError{Addr: addr, Err: fmt.Errorf("port %q is not a number from 1 to 65535", port)}
		}
		n = uint64(p)
	}
	if n == 0 {
		return &AddrError{Addr: addr, Err: errors.New("port 0: name the port the mover listens on")}
	}
	return nil
}

// resolveAddr is net.ResolveUDPAddr with its failures as [*AddrError].
func resolveAddr(addr string) (*net.UDPAddr, error) {
	if err := ValidateAddr(addr); err != nil {
		return nil, err
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		de, ok := errors.AsType[*net.DNSError](err)
		return nil, &AddrError{Addr: addr, Err: err, Temporary: ok && !de.IsNotFound}
	}
	return ua, nil
}

// NoAnswerError is a connection attempt to Addr that got no answer within
// After. It matches [ErrNoAnswer] and wraps quic-go's timeout.
type NoAnswerError struct {
	Addr  string
	After time.Duration
	Err   error
}

func (e *NoAnswerError) Error() string {
	port := e.Addr
	if _, p, err := net.SplitHostPort(e.Addr); err == nil {
		port = p
	}
	return fmt.Sprintf("no answer from mover at %s within %s: is 'pgporter mover serve' running there, on that port, and is UDP port %s open in the firewalls between?",
		e.Addr, e.After, port)
}

// Unwrap returns [ErrNoAnswer] and quic-go's error.
func (e *NoAnswerError) Unwrap() []error { return []error{ErrNoAnswer, e.Err} }

// noAnswer reports whether err, from dialling, means that the other side
// never answered: quic-go ends such a handshake with its idle timeout (no
// packet for HandshakeIdleTimeout) or its handshake timeout.
func noAnswer(err error) bool {
	_, idle := errors.AsType[*quic.IdleTimeoutError](err)
	_, hs := errors.AsType[*quic.HandshakeTimeoutError](err)
	return idle || hs
}

// permanentError marks attempt errors that reconnecting cannot fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// retryable reports whether a failed attempt is worth reconnecting for.
// It is not for what cannot succeed however often it is tried: a bad
// address, a mover that is not the one expected ([ErrWrongPeer]), one that
// does not trust us ([ErrUntrusted]), no common protocol version, what the
// receiver refused, what our own data caused, and cancellation. Everything
// else is a network failure that may pass, including [ErrNoAnswer]: a
// mover may be restarting (the loops give a mover that never answered
// less time than one that did).
func retryable(err error) bool {
	var pe permanentError
	var re *protocol.RemoteError
	var ae *quic.ApplicationError
	switch {
	case err == nil:
		return false
	case errors.Is(err, context.Canceled), errors.As(err, &pe),
		errors.Is(err, ErrUntrusted), errors.Is(err, ErrWrongPeer), errors.Is(err, ErrBadAddr):
		return false
	case errors.As(err, &ae) && ae.Remote && (uint64(ae.ErrorCode) == protocol.CloseRefused || uint64(ae.ErrorCode) == protocol.CloseProtocolError):
		return false
	case errors.As(err, &re):
		return protocol.Retryable(err)
	case errors.Is(err, protocol.ErrVersion):
		return false
	}
	return true
}

// firstContactFor is how long a client retries a mover that has never
// answered it: long enough for a mover being restarted, short enough that
// a wrong port or a closed firewall is told within seconds, not minutes.
const firstContactFor = 10 * time.Second

// retryPlan is when a retry loop gives up on a run of failures: RetryFor
// after the first once a connection has worked, firstContactFor after the
// start while none has answered yet.
type retryPlan struct {
	retryFor  time.Duration
	start     time.Time // of the loop
	since     time.Time // first failure of the current run; zero when none
	contacted bool      // some connection got an answer
}

// fail records a failed attempt at now and returns when the loop gives up,
// and whether this failure starts a run (the caller says so, once).
func (p *retryPlan) fail(now time.Time, err error) (deadline time.Time, first bool) {
	if p.since.IsZero() {
		p.since, first = now, true
	}
	if p.firstContact(err) {
		return p.start.Add(min(firstContactFor, p.retryFor)), first
	}
	return p.since.Add(p.retryFor), first
}

// firstContact reports whether err is a mover that never answered, not
// one that answered before.
func (p *retryPlan) firstContact(err error) bool {
	return !p.contacted && errors.Is(err, ErrNoAnswer)
}

// progress records that an attempt got somewhere: the next failure starts
// a fresh run with the whole budget.
func (p *retryPlan) progress() { p.since = time.Time{} }
