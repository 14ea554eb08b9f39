package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"
	"time"
)

var (
	// ErrNotFound is returned for an object that does not exist.
	ErrNotFound = errors.New("objstore: object not found")
	// ErrExists is PutIfAbsent's when an object of that name already exists.
	ErrExists = errors.New("objstore: object exists")
	// ErrInvalidName is returned for a name that ValidName refuses, before
	// any I/O.
	ErrInvalidName = errors.New("objstore: invalid object name")
	// ErrDenied is matched by the error of a request the store refused
	// (S3's 401 and 403): wrong credentials, or too few rights.
	ErrDenied = errors.New("the object store refused the request (check the credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the profile)")
	// ErrBadURL is matched by ParseURL's error: a repository URL that is
	// not s3://BUCKET/PREFIX as S3 names buckets and as this package names
	// objects.
	ErrBadURL = errors.New("objstore: bad repository URL")
	// ErrRange is GetRange's for a range that does not lie within the
	// object.
	ErrRange = errors.New("objstore: range outside the object")
)

// Object is an entry of a listing.
type Object struct {
	Name string
	Size int64
	// ModTime is when the object was created, by the backend's clock (the
	// file system's, the S3 server's); a prune judges a crashed writer's
	// leftovers by it.
	ModTime time.Time
}

// Backend holds immutable objects under names such as "packs/0a1b.pack".
//
// Contract, for every implementation:
//   - Names are checked with ValidName before any I/O; a bad one fails with
//     ErrInvalidName. A Backend never reaches outside its root (directory or
//     bucket prefix) whatever the name.
//   - Objects are never replaced: PutIfAbsent creates an object atomically
//     (readers see all of it or nothing, also after a crash or a connection
//     cut mid-upload) and fails with ErrExists if the name is taken. Each
//     backend's doc says how strong "if absent" is when two writers race.
//   - Byte slices returned are the caller's: GetRange and Get append to
//     dst (which may be nil) and keep no reference to it. PutIfAbsent reads
//     r until size bytes, does not close it and keeps no reference after it
//     returns; fewer than size bytes is an error and creates nothing.
//   - Missing objects give ErrNotFound (Get, GetRange, Stat). Delete of a
//     missing object succeeds: Delete is idempotent, as is every read.
//   - Errors that a retry may cure (a 5xx answer, throttling, a connection
//     reset) satisfy IsTransient; nothing else does.
//   - Every method returns promptly with ctx's error once ctx is done.
//   - Methods are safe for concurrent use.
type Backend interface {
	// PutIfAbsent creates name with the size bytes read from r.
	PutIfAbsent(ctx context.Context, name string, r io.Reader, size int64) error
	// GetRange appends the n bytes of name at off to dst. A range that
	// does not lie wholly within the object fails with ErrRange; more than
	// MaxRead bytes is an error.
	GetRange(ctx context.Context, name string, off, n int64, dst []byte) ([]byte, error)
	// Get appends the whole object to dst; an object of more than MaxRead
	// bytes is an error (read it by ranges).
	Get(ctx context.Context, name string, dst []byte) ([]byte, error)
	// Stat returns the object's size.
	Stat(ctx context.Context, name string) (int64, error)
	// List yields the objects whose names start with prefix, in
	// lexical order of name, fetching them a page at a time. An error
	// ends the sequence. prefix is any string (it need not be a valid
	// name); "" lists everything.
	List(ctx context.Context, prefix string) iter.Seq2[Object, error]
	// Delete removes name; a missing name is no error.
	Delete(ctx context.Context, name string) error
}

// MaxRead bounds what one Get or GetRange reads, against a size taken from
// a damaged file or a hostile server's answer before allocating it. A
// repository reads records and packs, far smaller.
const MaxRead = 1 << 30

// MaxNameLen bounds a name, below S3's 1024 bytes of key with room for a
// prefix.
const MaxNameLen = 512

// ValidName reports whether name may name an object: relative, with
// components separated by single slashes, each made of ASCII letters,
// digits, '-', '_' and '.', not starting with '.' (so never "." or "..",
// and never a Dir's temporary files), at most MaxNameLen bytes. The rule is
// strict so that a name means the same on every backend and from every
// peer.
func ValidName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("%w: %q: length %d", ErrInvalidName, name, len(name))
	}
	for comp := range strings.SplitSeq(name, "/") {
		if comp == "" || comp[0] == '.' {
			return fmt.Errorf("%w: %q", ErrInvalidName, name)
		}
		for i := 0; i < len(comp); i++ {
			c := comp[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
				return fmt.Errorf("%w: %q: byte %#x", ErrInvalidName, name, c)
			}
		}
	}
	return nil
}

// TransientError marks an error that a retry may cure. Backends wrap with
// it; WithRetry retries only these.
type TransientError struct{ Err error }

func (e *TransientError) Error() string { return e.Err.Error() }
func (e *TransientError) Unwrap() error { return e.Err }

// IsTransient reports whether err, or an error it wraps, is a
// TransientError.
func IsTransient(err error) bool {
	var te *TransientError
	return errors.As(err, &te)
}

func checkRead(name string, n int64) error {
	if n > MaxRead {
		return fmt.Errorf("objstore: reading %s: %d bytes at once, more than %d", name, n, MaxRead)
	}
	return nil
}

// As returns b, or the first backend it wraps (through Unwrap() Backend
// methods, as Retrying's), that is a T: for what only some backends can
// do, such as S3's StaleUploads, behind an interface the caller defines.
// What As returns is not wrapped: no retries.
func As[T any](b Backend) (T, bool) {
	for b != nil {
		if t, ok := b.(T); ok {
			return t, true
		}
		u, ok := b.(interface{ Unwrap() Backend })
		if !ok {
			break
		}
		b = u.Unwrap()
	}
	var zero T
	return zero, false
}
