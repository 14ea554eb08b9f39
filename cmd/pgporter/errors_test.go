package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/internal/pebbledb"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/orchestrator"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// TestExitCodeContract pins the code of each condition of the contract,
// however deeply it is wrapped: 'pgporter help exit-codes' and docs/CLI.md
// promise them to operators' scripts.
func TestExitCodeContract(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("send a to /b: connecting: %w", err) }
	for _, tc := range []struct {
		name string
		err  error
		code int
	}{
		{"nil", nil, exitOK},
		{"plain", errors.New("pg_dump exited with status 1"), exitFailure},
		{"no common version", wrap(&protocol.RemoteError{Code: protocol.CodeVersion}), exitFailure},
		{"interrupted", wrap(context.Canceled), exitInterrupted},
		{"usage", usagef("--to: missing port"), exitUsage},
		{"bad plan", fmt.Errorf("%w: --to is required", orchestrator.ErrBadPlan), exitUsage},
		{"not built", notBuilt("x"), exitNotBuilt},
		{"no passphrase", wrap(fmt.Errorf("the repository r is encrypted: %w", crypt.ErrNoPassphrase)), exitUsage},
		{"passphrase for a plain repository", wrap(chunkstore.ErrPasswordForPlain), exitUsage},
		{"wrong passphrase", wrap(crypt.ErrWrongPassphrase), exitPermission},
		{"tampered object", wrap(fmt.Errorf("restore point x: %w", crypt.ErrTampered)), exitVerification},
		{"corrupt key file", wrap(crypt.ErrKeyFileCorrupt), exitVerification},
		{"last key", wrap(crypt.ErrLastKey), exitConflict},
		{"repository exists", wrap(chunkstore.ErrRepoExists), exitConflict},
		{"no key file", wrap(fmt.Errorf("unlocking the repository r: %w", crypt.ErrNoKey)), exitVerification},
		{"no such key file", wrap(chunkstore.ErrKeyNotFound), exitNotFound},
		{"no answer", wrap(&mover.NoAnswerError{Addr: "127.0.0.1:1", Err: errors.New("timeout")}), exitNetwork},
		{"untrusted", wrap(&mover.UntrustedError{Addr: "127.0.0.1:1", Err: errors.New("tls: bad certificate")}), exitPermission},
		{"wrong peer", wrap(&mover.PeerMismatchError{}), exitPermission},
		{"lacks permission", wrap(&mover.PermissionError{Trusted: true}), exitPermission},
		{"receiver refused", wrap(&protocol.RemoteError{Code: protocol.CodePermission, Message: "outside the roots"}), exitPermission},
		{"OS permission", wrap(fs.ErrPermission), exitPermission},
		{"session running", wrap(orchestrator.ErrRunning), exitConflict},
		{"database in use", wrap(&pebbledb.LockedError{Dir: "/h/send/sender", PID: 42}), exitConflict},
		{"target exists", fmt.Errorf("%w: /x %w; pass --overwrite", orchestrator.ErrBadPlan, orchestrator.ErrExists), exitConflict},
		{"remote conflict", wrap(&protocol.RemoteError{Code: protocol.CodeConflict}), exitConflict},
		{"port in use", wrap(orchestrator.ErrPortInUse), exitConflict},
		{"listen address in use", fmt.Errorf("listening: %w", &net.OpError{Op: "listen", Net: "udp", Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}), exitConflict},
		{"connection refused", wrap(&net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}), exitNetwork},
		{"verify", wrap(mover.ErrVerify), exitVerification},
		{"corrupt chunk", wrap(&chunk.CorruptChunkError{Err: chunk.ErrHashMismatch}), exitVerification},
		{"rows differ", errRowsDiffer, exitVerification},
		{"no repository", fmt.Errorf("%w: repository /x: %w", orchestrator.ErrBadPlan, chunkstore.ErrNotRepo), exitNotFound},
		{"no restore point", wrap(chunkstore.ErrNoRestorePoint), exitNotFound},
		{"remote not found", wrap(&protocol.RemoteError{Code: protocol.CodeNotFound}), exitNotFound},
		{"no session", wrap(orchestrator.ErrNoSession), exitNotFound},
		{"cancel: target not reached", &orchestrator.TargetLeftError{Target: "t:1#X", Dirs: []string{"/srv/shop.partial"}, Err: &mover.NoAnswerError{Addr: "t:1", Err: errors.New("timeout")}}, exitNetwork},
		{"cancel: target not reached by the staging mover", fmt.Errorf("cancelled on staging mover s: %w", mark(&mover.JobError{Message: "x", Code: "internal", Reason: "target-left"}, orchestrator.ErrTargetLeft)), exitNetwork},
		{"no identity", wrap(mover.ErrNoIdentity), exitNotFound},
		{"job: no repository", wrap(&mover.JobError{Message: "repository /r: not a repository", Code: "not-found"}), exitNotFound},
		{"job: target exists", wrap(&mover.JobError{Message: "/x exists", Code: "conflict"}), exitConflict},
		{"job: other", wrap(&mover.JobError{Message: "pg_dump failed", Code: "internal"}), exitFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.code, classify(tc.err))
			require.Equal(t, tc.code, exitCode(tc.err, io.Discard, slog.New(slog.DiscardHandler)))
			if tc.code != exitOK {
				require.NotEmpty(t, exitKinds[tc.code], "every code has a kind for --json")
			}
		})
	}
}

func TestUserMessage(t *testing.T) {
	for _, tc := range []struct{ err, want string }{
		{"chunkstore: not a repository: /x has no points directory", "not a repository: /x has no points directory"},
		{"repository /x: chunkstore: not a repository", "repository /x: not a repository"},
		{"send a to /b: the other mover reported: protocol: permission denied: /b is outside (permission)", "send a to /b: the other mover reported: permission denied: /b is outside (permission)"},
		{"job failed on the staging mover: staging: pre-checks failed", "job failed on the staging mover: pre-checks failed"},
		{"mover: peer is not the expected mover", "peer is not the expected mover"},
	} {
		require.Equal(t, tc.want, userMessage(errors.New(tc.err)))
	}
}

func TestWithError(t *testing.T) {
	require.JSONEq(t, `{"error":"boom","code":8,"kind":"not-found"}`, string(withError(nil, "boom", exitNotFound)))
	// A report keeps its members and their order; a stale "error" is replaced.
	got := withError([]byte(`{"ok":false,"files":3,"error":"old"}`), "tree does not match", exitVerification)
	require.Equal(t, `{"ok":false,"files":3,"error":"tree does not match","code":7,"kind":"verification"}`, string(got))
}
