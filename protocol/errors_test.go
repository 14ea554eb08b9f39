package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

func TestCodeMapping(t *testing.T) {
	tests := []struct {
		code Code
		err  error
		name string
	}{
		{1, ErrInternal, "internal"},
		{2, ErrProtocol, "protocol"},
		{3, ErrVersion, "version"},
		{4, ErrPermission, "permission"},
		{5, ErrNotFound, "not-found"},
		{6, ErrBadPath, "bad-path"},
		{7, ErrNoSpace, "no-space"},
		{8, ErrCorrupt, "corrupt"},
		{9, ErrConflict, "conflict"},
		{10, ErrBusy, "busy"},
		{11, ErrCancelled, "cancelled"},
		{12, ErrTooLarge, "too-large"},
	}
	if len(tests) != len(codes) {
		t.Fatalf("%d codes defined, %d tested", len(codes), len(tests))
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.code.String() != tc.name || !tc.code.Known() {
				t.Fatalf("Code(%d) = %s", tc.code, tc.code)
			}
			// Go -> wire: the sentinel, bare and wrapped.
			for _, err := range []error{tc.err, fmt.Errorf("opening transfer: %w", tc.err)} {
				w := ToWire(err)
				if w.Code != tc.code || w.Message != err.Error() {
					t.Fatalf("ToWire(%v) = %+v", err, w)
				}
			}
			// Wire -> Go: matches its sentinel and no other.
			w := &Error{Code: tc.code, Message: "details"}
			got, err := Decode(TypeError, w.Append(nil))
			if err != nil {
				t.Fatal(err)
			}
			remote := got.(*Error).Err()
			if _, ok := errors.AsType[*RemoteError](remote); !ok {
				t.Fatalf("Err() = %T", remote)
			}
			for _, other := range tests {
				if errors.Is(remote, other.err) != (other.code == tc.code) {
					t.Fatalf("errors.Is(%v, %v) = %v", remote, other.err, !(other.code == tc.code))
				}
			}
			if !strings.Contains(remote.Error(), "details") || !strings.Contains(remote.Error(), tc.name) {
				t.Fatalf("Error() = %q", remote.Error())
			}
			// And back: a relayed remote error keeps its code.
			if back := ToWire(fmt.Errorf("relaying: %w", remote)); back.Code != tc.code {
				t.Fatalf("ToWire(remote) = %s", back.Code)
			}
		})
	}
}

func TestUnknownRemoteCode(t *testing.T) {
	remote := (&Error{Code: 999, Message: "from the future"}).Err()
	if !errors.Is(remote, ErrInternal) || errors.Is(remote, ErrProtocol) {
		t.Fatal("an unknown code must count as internal only")
	}
	if Code(999).Known() || Code(999).String() != "code(999)" || Code(0).Known() {
		t.Fatal("unknown codes")
	}
	if got := ToWire(remote).Code; got != 999 {
		t.Fatalf("relayed unknown code became %s", got)
	}
	if got := (&RemoteError{Code: CodeBusy}).Error(); !strings.Contains(got, "busy") {
		t.Fatalf("Error() without message = %q", got)
	}
}

func TestToWireOtherErrors(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Code
	}{
		{"plain", errors.New("boom"), CodeInternal},
		{"canceled", fmt.Errorf("copying: %w", context.Canceled), CodeCancelled},
		{"deadline", context.DeadlineExceeded, CodeCancelled},
		{"corrupt chunk", fmt.Errorf("reading: %w", &chunk.CorruptChunkError{ID: testID(1), Err: chunk.ErrHashMismatch}), CodeCorrupt},
		{"chunk not found", chunk.ErrNotFound, CodeNotFound},
		{"chunk too large", chunk.ErrTooLarge, CodeTooLarge},
		{"not exist", &fs.PathError{Op: "open", Path: "/x", Err: syscall.ENOENT}, CodeNotFound},
		{"permission", &fs.PathError{Op: "open", Path: "/x", Err: syscall.EACCES}, CodePermission},
		{"exists", &fs.PathError{Op: "mkdir", Path: "/x", Err: syscall.EEXIST}, CodeConflict},
		{"no space", &fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}, CodeNoSpace},
		{"quota", &fs.PathError{Op: "write", Path: "/x", Err: syscall.EDQUOT}, CodeNoSpace},
		{"specific before protocol", fmt.Errorf("%w: %w", ErrProtocol, ErrBadPath), CodeBadPath},
		{"sentinel before fs", fmt.Errorf("%w: %w", ErrBusy, fs.ErrNotExist), CodeBusy},
		{"joined", errors.Join(errors.New("a"), ErrNoSpace), CodeNoSpace},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ToWire(tc.err).Code; got != tc.want {
				t.Fatalf("ToWire(%v).Code = %s, want %s", tc.err, got, tc.want)
			}
		})
	}
	if ToWire(nil) != nil {
		t.Fatal("ToWire(nil) != nil")
	}
}

func TestToWireTruncatesMessage(t *testing.T) {
	err := errors.New(strings.Repeat("é", MaxErrorMessageLen)) // 2 bytes a rune
	w := ToWire(err)
	if len(w.Message) > MaxErrorMessageLen || !strings.HasPrefix(err.Error(), w.Message) || !strings.HasSuffix(w.Message, "é") {
		t.Fatalf("message cut to %d bytes", len(w.Message))
	}
	odd := errors.New("x" + strings.Repeat("é", MaxErrorMessageLen/2))
	if w := ToWire(odd); len(w.Message) != MaxErrorMessageLen-1 {
		t.Fatalf("cut inside a rune: %d bytes", len(w.Message))
	}
	if err := WriteMessage(io.Discard, ToWire(odd)); err != nil {
		t.Fatal(err)
	}
}

type timeoutError struct{ timeout bool }

func (e timeoutError) Error() string { return "i/o timeout" }
func (e timeoutError) Timeout() bool { return e.timeout }

func TestRetryable(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"busy", fmt.Errorf("opening: %w", ErrBusy), true},
		{"remote busy", (&Error{Code: CodeBusy}).Err(), true},
		{"timeout", fmt.Errorf("reading: %w", timeoutError{true}), true},
		{"deadline on a stream", os.ErrDeadlineExceeded, true},
		{"not a timeout", timeoutError{false}, false},
		{"context deadline", context.DeadlineExceeded, false},
		{"context canceled", context.Canceled, false},
		{"remote cancelled", (&Error{Code: CodeCancelled}).Err(), false},
		{"no space", ErrNoSpace, false},
		{"internal", errors.New("boom"), false},
		{"protocol", ErrProtocol, false},
		{"corrupt", (&Error{Code: CodeCorrupt}).Err(), false},
		{"version", ErrVersion, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Retryable(tc.err); got != tc.want {
				t.Fatalf("Retryable(%v) = %v", tc.err, got)
			}
		})
	}
}
