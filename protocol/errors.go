package protocol

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"unicode/utf8"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// Code is an error code carried by an Error message. Codes are stable wire
// values; docs/PROTOCOL.md lists them. A peer may send a code this build does
// not know: it is treated as CodeInternal.
type Code uint16

const (
	CodeInternal   Code = 1  // a bug or an unexpected local failure
	CodeProtocol   Code = 2  // a malformed or unexpected message
	CodeVersion    Code = 3  // no common protocol version
	CodePermission Code = 4  // the peer is not allowed to do this
	CodeNotFound   Code = 5  // no such transfer, chunk, file or root
	CodeBadPath    Code = 6  // a name or destination is not acceptable
	CodeNoSpace    Code = 7  // not enough free space
	CodeCorrupt    Code = 8  // data does not match its hash or cannot be decoded
	CodeConflict   Code = 9  // the request contradicts existing state
	CodeBusy       Code = 10 // try again later (e.g. the transfer is active on another connection)
	CodeCancelled  Code = 11 // the operation was cancelled
	CodeTooLarge   Code = 12 // a size or count is above a limit
)

// Sentinel errors, one per Code. Wrap them (fmt.Errorf("…: %w", ErrX)) to
// choose the code ToWire sends; a *RemoteError matches the sentinel of its
// code with errors.Is.
var (
	ErrInternal   = errors.New("protocol: internal error")
	ErrProtocol   = errors.New("protocol: protocol violation")
	ErrVersion    = errors.New("protocol: no common protocol version")
	ErrPermission = errors.New("protocol: permission denied")
	ErrNotFound   = errors.New("protocol: not found")
	ErrBadPath    = errors.New("protocol: bad path")
	ErrNoSpace    = errors.New("protocol: not enough space")
	ErrCorrupt    = errors.New("protocol: corrupt data")
	ErrConflict   = errors.New("protocol: conflict")
	ErrBusy       = errors.New("protocol: busy")
	ErrCancelled  = errors.New("protocol: cancelled")
	ErrTooLarge   = errors.New("protocol: too large")
)

// codes lists every known code with its sentinel and name. ToWire tries the
// sentinels in this order, so the more specific codes come before
// CodeProtocol and CodeInternal.
var codes = []struct {
	code Code
	err  error
	name string
}{
	{CodeCancelled, ErrCancelled, "cancelled"},
	{CodeVersion, ErrVersion, "version"},
	{CodePermission, ErrPermission, "permission"},
	{CodeNotFound, ErrNotFound, "not-found"},
	{CodeBadPath, ErrBadPath, "bad-path"},
	{CodeNoSpace, ErrNoSpace, "no-space"},
	{CodeCorrupt, ErrCorrupt, "corrupt"},
	{CodeConflict, ErrConflict, "conflict"},
	{CodeBusy, ErrBusy, "busy"},
	{CodeTooLarge, ErrTooLarge, "too-large"},
	{CodeProtocol, ErrProtocol, "protocol"},
	{CodeInternal, ErrInternal, "internal"},
}

// String returns the code's name as listed in docs/PROTOCOL.md ("not-found"),
// or "code(N)" for a code this build does not know.
func (c Code) String() string {
	for _, e := range codes {
		if e.code == c {
			return e.name
		}
	}
	return fmt.Sprintf("code(%d)", uint16(c))
}

// Known reports whether c is a code this build defines.
func (c Code) Known() bool {
	for _, e := range codes {
		if e.code == c {
			return true
		}
	}
	return false
}

// sentinel returns the sentinel of c; unknown codes count as internal errors.
func (c Code) sentinel() error {
	for _, e := range codes {
		if e.code == c {
			return e.err
		}
	}
	return ErrInternal
}

// RemoteError is an error the peer reported in an Error message.
type RemoteError struct {
	Code    Code
	Message string // the peer's description; not trusted, not for parsing
}

func (e *RemoteError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("the other mover reported an error (%s)", e.Code)
	}
	// Not "peer: …": the user reads this, and it is no package name.
	return fmt.Sprintf("the other mover reported: %s (%s)", e.Message, e.Code)
}

// Is reports whether target is the sentinel of e's code, so that
// errors.Is(err, ErrBusy) works the same for local and remote errors.
func (e *RemoteError) Is(target error) bool { return target == e.Code.sentinel() }

// Err returns the Go form of a received Error message: a *RemoteError.
func (e *Error) Err() error { return &RemoteError{Code: e.Code, Message: e.Message} }

// ToWire returns the Error message that reports err to the peer, or nil for
// a nil err. The code is, in order: the code of a *RemoteError in err's chain
// (an error relayed from another peer keeps its code); the code of the first
// sentinel err matches (errors.Is, most specific first); CodeCancelled for
// context.Canceled and context.DeadlineExceeded; CodeCorrupt for
// *chunk.CorruptChunkError; CodeNotFound for chunk.ErrNotFound and
// fs.ErrNotExist; CodeTooLarge for chunk.ErrTooLarge; CodeNoSpace for
// ENOSPC and EDQUOT; CodePermission for fs.ErrPermission; CodeConflict for
// fs.ErrExist; otherwise CodeInternal. The message is err.Error(), cut to
// MaxErrorMessageLen bytes at a UTF-8 boundary.
func ToWire(err error) *Error {
	if err == nil {
		return nil
	}
	return &Error{Code: codeOf(err), Message: truncate(err.Error(), MaxErrorMessageLen)}
}

func codeOf(err error) Code {
	if re, ok := errors.AsType[*RemoteError](err); ok {
		return re.Code
	}
	for _, e := range codes {
		if errors.Is(err, e.err) {
			return e.code
		}
	}
	if _, ok := errors.AsType[*chunk.CorruptChunkError](err); ok {
		return CodeCorrupt
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return CodeCancelled
	case errors.Is(err, chunk.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return CodeNotFound
	case errors.Is(err, chunk.ErrTooLarge):
		return CodeTooLarge
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return CodeNoSpace
	case errors.Is(err, fs.ErrPermission):
		return CodePermission
	case errors.Is(err, fs.ErrExist):
		return CodeConflict
	}
	return CodeInternal
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Retryable reports whether the operation that failed with err may succeed
// if repeated later, on the same or a new connection, without anyone
// changing anything. Transfers are resumable and idempotent, so a retry only
// costs the time of a reconnect.
//
// It is true for ErrBusy (local or from the peer) and for errors that report
// a timeout through a Timeout() bool method (net.Error, os.ErrDeadlineExceeded,
// QUIC idle and handshake timeouts). It is false for everything else, in
// particular for cancellation (context.Canceled, context.DeadlineExceeded,
// ErrCancelled: someone decided to stop, and retrying would undo that), for
// ErrNoSpace (needs an operator), and for ErrInternal and ErrProtocol (a
// bug will not fix itself). A connection closed by the peer with
// CloseShutdown is retryable too, but recognising it needs the QUIC
// library's error type: package mover maps it.
func Retryable(err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), errors.Is(err, ErrCancelled):
		return false
	case errors.Is(err, ErrBusy):
		return true
	}
	if t, ok := errors.AsType[interface {
		error
		Timeout() bool
	}](err); ok {
		return t.Timeout()
	}
	return false
}
