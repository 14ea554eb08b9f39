package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"regexp"
	"syscall"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/internal/pebbledb"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/orchestrator"
	"github.com/pgporter/pgporter/protocol"
	"github.com/pgporter/pgporter/staging"
	"github.com/quic-go/quic-go"
)

// Exit codes. Operators' scripts depend on them: 'pgporter help exit-codes'
// (exitCodesHelp) and docs/CLI.md document them, and a change is a change
// of the CLI contract.
const (
	exitOK           = 0
	exitFailure      = 1
	exitUsage        = 2
	exitNotBuilt     = 3
	exitNetwork      = 4
	exitPermission   = 5
	exitConflict     = 6
	exitVerification = 7
	exitNotFound     = 8
	exitInterrupted  = 130
	// exitAbortRecovery is wal-fetch's code for a failure other than a
	// file the archive lacks: above 125, PostgreSQL stops recovery instead
	// of taking the failure for the end of the archive.
	exitAbortRecovery = 255
)

// exitKinds names each code for the "kind" of a --json failure.
var exitKinds = map[int]string{
	exitFailure:       "failure",
	exitUsage:         "usage",
	exitNotBuilt:      "not-built",
	exitNetwork:       "network",
	exitPermission:    "permission",
	exitConflict:      "conflict",
	exitVerification:  "verification",
	exitNotFound:      "not-found",
	exitInterrupted:   "interrupted",
	exitAbortRecovery: "abort-recovery",
}

// exitCodesHelp is the text of 'pgporter help exit-codes'; docs/CLI.md has
// the same table.
const exitCodesHelp = `Every pgporter command exits with one of these codes. With --json, a failure
also prints {"error": "...", "code": N, "kind": "..."} on stdout.

    code  kind          meaning
    0                   success
    1     failure       any failure not listed below; send of a SRC holding symlinks,
                        devices, FIFOs or sockets without --skip-special
    2     usage         a usage mistake: unknown command or flag, a missing, malformed
                        or conflicting flag or argument; no PostgreSQL password found
                        for export and no terminal to ask for one on; an encrypted
                        repository's passphrase missing (--repo-password-file,
                        PGPORTER_REPO_PASSWORD) or its file unreadable, or given
                        for a plain repository
    3     not-built     a command of the CLI contract this build does not implement
    4     network       no answer from a mover, or a connection lost and not regained
                        within --retry-for; a host name that does not resolve; cancel
                        whose target mover was not reached (the rest is cancelled;
                        run cancel again to remove what it left there)
    5     permission    refused permission: a mover that does not trust this identity
                        or lacks a permission (mover trust --allow), a mover that is
                        not the peer ID named, a destination outside a mover's roots,
                        a file the OS does not let pgporter read or write, a backup
                        whose pg_hba.conf does not let the role in (--auth backup-hba),
                        a wrong passphrase for an encrypted repository
    6     conflict      something else holds what the command needs: a session running
                        in another process, a lock held, a port or mountpoint in use,
                        a destination that exists (see --overwrite of export and send),
                        a repository where repo init would create one, the last key
                        of an encrypted repository (key remove), a 33rd key (key add)
    7     verification  data does not match its hashes: verify or restore found a
                        damaged dump, a chunk is corrupt; an encrypted repository's
                        object or key file was altered (it does not open), or its
                        config or key files removed
    8     not-found     what the command names does not exist: a repository, restore
                        point, session, publication, mover identity or trusted peer,
                        the connection service PGSERVICE names, a key file to remove,
                        send's SRC, verify's or restore's DUMP_DIR, a mover's --root
    130   interrupted   SIGINT or SIGTERM stopped the command
    255   abort-recovery  wal-fetch only: a failure other than a file the archive
                        lacks (8) or a usage mistake (2), such as a repository that
                        cannot be read or a corrupt chunk; PostgreSQL stops recovery
                        on it, where it would take 1-125 for the end of the archive

Network failures that may pass are retried first (send --retry-for); what
cannot succeed however often it is tried ends at once with a hint.`

// usageError marks a mistake in how the command was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// marked is an error with its own message that is classified as mark is.
type marked struct{ err, mark error }

func (e marked) Error() string   { return e.err.Error() }
func (e marked) Unwrap() []error { return []error{e.err, e.mark} }

// mark returns err, matching mark too for exitCode, with err's message.
func mark(err, as error) error { return marked{err, as} }

// errNotBuilt is returned by commands of the CLI contract that this build does
// not implement yet.
var errNotBuilt = errors.New("not built yet in this version of pgporter")

func notBuilt(name string) error { return fmt.Errorf("%s: %w", name, errNotBuilt) }

// errAbortRecovery marks a failure of wal-fetch that must stop the
// recovery that runs it (exitAbortRecovery).
var errAbortRecovery = errors.New("abort recovery")

// errNotFound marks what a command names and cmd itself found missing (a
// SRC to send, a DUMP_DIR to verify or restore).
var errNotFound = errors.New("not found")

// errVerification marks a check of data against its hashes that failed in
// cmd itself (demo's row counts).
var errVerification = errors.New("verification failed")

// classify returns the exit code of err. The order matters where an error
// matches several classes: an explicit usage error first, then the most
// specific refusals, and network failures last, since a refusal often wraps
// the transport error that carried it.
func classify(err error) int {
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, errAbortRecovery):
		return exitAbortRecovery
	case errors.Is(err, errNotBuilt):
		return exitNotBuilt
	case errors.Is(err, protocol.ErrVersion):
		return exitFailure // no common protocol version: a refusal, but of the build, not of us
	case isPassphraseUsage(err), errors.Is(err, objstore.ErrBadURL):
		return exitUsage
	}
	if code, ok := jobExitCode(err); ok {
		return code
	}
	switch {
	case isPermission(err):
		return exitPermission
	case isVerification(err):
		return exitVerification
	case isConflict(err):
		return exitConflict
	case isNotFound(err):
		return exitNotFound
	case errors.Is(err, orchestrator.ErrBadPlan):
		return exitUsage
	case isNetwork(err):
		return exitNetwork
	case errors.Is(err, orchestrator.ErrTargetLeft):
		return exitNetwork // the target mover was not reached (through a staging mover's job)
	}
	return exitFailure
}

// jobExitCode is the code of a job that failed on a staging mover, which
// reports its error as text with the wire code of its cause.
func jobExitCode(err error) (int, bool) {
	je, ok := errors.AsType[*mover.JobError](err)
	if !ok {
		return 0, false
	}
	switch je.Code {
	case protocol.CodePermission.String():
		return exitPermission, true
	case protocol.CodeConflict.String(), protocol.CodeBusy.String():
		return exitConflict, true
	case protocol.CodeCorrupt.String():
		return exitVerification, true
	case protocol.CodeNotFound.String():
		return exitNotFound, true
	}
	return 0, false
}

func isPermission(err error) bool {
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok && ae.Remote && uint64(ae.ErrorCode) == protocol.CloseRefused {
		return true // the mover closed the connection: not trusted, or no more connections
	}
	return errors.Is(err, mover.ErrPermission) || errors.Is(err, protocol.ErrPermission) ||
		errors.Is(err, mover.ErrUntrusted) || errors.Is(err, mover.ErrWrongPeer) ||
		errors.Is(err, fs.ErrPermission) || errors.Is(err, staging.ErrHBA) || errors.Is(err, objstore.ErrDenied) ||
		errors.Is(err, crypt.ErrWrongPassphrase)
}

// isPassphraseUsage reports a passphrase missing, empty, or given for a
// repository that is not encrypted. Not a key file's KDF below the floor
// (crypt.ErrWeakKDF): no command takes KDF parameters, so that is a key
// file in the repository, planted (7), and an unlock that skipped one
// joins it to its own error (a wrong passphrase, 5).
func isPassphraseUsage(err error) bool {
	return errors.Is(err, crypt.ErrNoPassphrase) || errors.Is(err, crypt.ErrEmptyPassphrase) ||
		errors.Is(err, chunkstore.ErrPasswordForPlain) ||
		errors.Is(err, chunkstore.ErrEncrypted) || errors.Is(err, chunkstore.ErrNotEncryptedRepo) ||
		errors.Is(err, chunkstore.ErrPasswordFile)
}

func isVerification(err error) bool {
	_, corrupt := errors.AsType[*chunk.CorruptChunkError](err)
	return corrupt || errors.Is(err, mover.ErrVerify) || errors.Is(err, mover.ErrManifestHash) ||
		errors.Is(err, protocol.ErrCorrupt) || errors.Is(err, chunkstore.ErrIDMismatch) ||
		errors.Is(err, chunk.ErrHashMismatch) || errors.Is(err, errVerification) ||
		errors.Is(err, crypt.ErrTampered) || errors.Is(err, crypt.ErrKeyFileCorrupt) ||
		errors.Is(err, crypt.ErrWeakKDF) ||
		errors.Is(err, crypt.ErrNoKey) // an encrypted repository's config without its key files
}

func isConflict(err error) bool {
	return errors.Is(err, orchestrator.ErrRunning) || errors.Is(err, orchestrator.ErrPortInUse) ||
		errors.Is(err, orchestrator.ErrExists) || errors.Is(err, orchestrator.ErrNotDead) ||
		errors.Is(err, pebbledb.ErrLocked) ||
		errors.Is(err, staging.ErrMountInUse) ||
		errors.Is(err, protocol.ErrConflict) || errors.Is(err, protocol.ErrBusy) ||
		errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, fs.ErrExist) ||
		errors.Is(err, chunkstore.ErrWALConflict) || errors.Is(err, chunkstore.ErrRepoLocked) ||
		errors.Is(err, chunkstore.ErrRepoExists) || errors.Is(err, crypt.ErrLastKey) ||
		errors.Is(err, crypt.ErrTooManyKeys)
}

func isNotFound(err error) bool {
	return errors.Is(err, chunkstore.ErrNotRepo) || errors.Is(err, chunkstore.ErrNoRestorePoint) ||
		errors.Is(err, orchestrator.ErrNoSession) || errors.Is(err, orchestrator.ErrNoPublication) ||
		errors.Is(err, mover.ErrNoIdentity) || errors.Is(err, mover.ErrUnknownPeer) ||
		errors.Is(err, protocol.ErrNotFound) || errors.Is(err, staging.ErrNoService) ||
		errors.Is(err, chunkstore.ErrWALNotFound) || errors.Is(err, chunkstore.ErrKeyNotFound) ||
		errors.Is(err, errNotFound)
}

// isNetwork reports a failure to reach a mover or to keep the connection:
// the QUIC and socket errors that survive --retry-for.
func isNetwork(err error) bool {
	if objstore.IsTransient(err) {
		return true // the object store's retries were spent
	}
	if errors.Is(err, mover.ErrNoAnswer) || errors.Is(err, mover.ErrBadAddr) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ECONNRESET) {
		return true
	}
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		return true
	}
	if _, ok := errors.AsType[*quic.HandshakeTimeoutError](err); ok {
		return true
	}
	if _, ok := errors.AsType[*quic.StatelessResetError](err); ok {
		return true
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok && ae.Remote {
		return true // the peer closed the connection: a mover that stopped
	}
	if _, ok := errors.AsType[*net.OpError](err); ok {
		return true
	}
	_, dns := errors.AsType[*net.DNSError](err)
	return dns
}

// packagePrefix matches the package name a sentinel error starts with
// ("chunkstore: not a repository"): house style for Go callers, noise for
// the user, so userMessage drops it wherever it appears in the chain.
var packagePrefix = regexp.MustCompile(`(^|: )(?:chunkstore|objstore|crypt|protocol|mover|staging|orchestrator|pebble): `)

// userMessage is err as the user reads it: the wrapping context kept, the
// package prefixes of sentinels dropped.
func userMessage(err error) string { return userText(err.Error()) }

// userText is userMessage for an error kept as text (a session's or a
// publication's in the journal).
func userText(msg string) string { return packagePrefix.ReplaceAllString(msg, "$1") }

// exitCode maps an error to the process exit code and prints the one line a
// user reads. This is the only place that decides either.
func exitCode(err error, stderr io.Writer, log *slog.Logger) int {
	code := classify(err)
	switch code {
	case exitOK:
	case exitInterrupted:
		fmt.Fprintln(stderr, "pgporter: interrupted")
	case exitUsage:
		fmt.Fprintf(stderr, "pgporter: %s\nRun 'pgporter --help' for usage.\n", userMessage(err))
	default:
		fmt.Fprintf(stderr, "pgporter: %s\n", userMessage(err))
		log.Debug("error detail", "err", fmt.Sprintf("%+v", err))
	}
	return code
}
