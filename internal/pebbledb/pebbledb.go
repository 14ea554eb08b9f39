// Package pebbledb opens pgporter's pebble databases (a repository's index,
// a mover's and a sender's state, the session journal) one way: pebble's
// messages go to slog, a database another process holds is reported as a
// *LockedError that names the process, and every store records its layout
// under one key, so that a build never reads a layout it does not know.
package pebbledb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"golang.org/x/sys/unix"
)

// FormatKey is the key under which every store records its layout. The
// stores' own keys all start with a prefix of one letter or a byte below it
// and a separator, and their iterators stay within them.
var FormatKey = []byte("format")

// Options configure Open.
type Options struct {
	// Log receives pebble's messages (informational ones at debug level);
	// nil discards them.
	Log *slog.Logger
	// Format is the layout this build writes and reads: a new database
	// records it, and one that records another is refused. A database
	// without a record (from a build before this package) is taken to be
	// in Format and gets the record.
	Format string
	// Tune, if not nil, adjusts pebble's options for the store (filters,
	// format major version).
	Tune func(*pebble.Options)
	// ReadOnly opens an existing database and writes nothing to it, not
	// even the format record or a flush of its log; the lock is taken all
	// the same.
	ReadOnly bool
}

// ErrLocked is what a *LockedError is (errors.Is).
var ErrLocked = errors.New("in use by another process")

// ErrFormat is what a database in a layout this build does not read fails
// with (errors.Is).
var ErrFormat = errors.New("unknown store format")

// LockedError reports a database that another process has open.
type LockedError struct {
	Dir string
	PID int // the holder, 0 if unknown
}

func (e *LockedError) Error() string {
	if e.PID == os.Getpid() {
		return fmt.Sprintf("%s is already open in this process", e.Dir)
	}
	if e.PID > 0 {
		return fmt.Sprintf("%s is in use by another pgporter process (PID %d)", e.Dir, e.PID)
	}
	return fmt.Sprintf("%s is in use by another pgporter process", e.Dir)
}

func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// DB is an open database. Close it, not the embedded *pebble.DB: Close
// also tells this process that the database is free.
type DB struct {
	*pebble.DB
	dir string
}

// Close closes the database.
func (d *DB) Close() error {
	err := d.DB.Close()
	opened.Lock()
	delete(opened.dirs, d.dir)
	opened.Unlock()
	return err
}

// opened holds the databases this process has open. A process's own fcntl
// locks never conflict with each other, so the second open of one in the
// same process is caught here.
var opened = struct {
	sync.Mutex
	dirs map[string]bool
}{dirs: map[string]bool{}}

// Open opens the database in dir, creating it if needed, and checks its
// format. A database open in another process, or already open in this one,
// fails with a *LockedError.
func Open(dir string, o Options) (*DB, error) {
	if !o.ReadOnly {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating %s: %w", dir, err)
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	opened.Lock()
	if opened.dirs[abs] {
		opened.Unlock()
		return nil, &LockedError{Dir: dir, PID: os.Getpid()}
	}
	opened.dirs[abs] = true
	opened.Unlock()
	db, err := open(dir, o)
	if err != nil {
		opened.Lock()
		delete(opened.dirs, abs)
		opened.Unlock()
		return nil, err
	}
	return &DB{DB: db, dir: abs}, nil
}

func open(dir string, o Options) (*pebble.DB, error) {
	po := &pebble.Options{Logger: logger{o.Log}, ReadOnly: o.ReadOnly}
	if o.Tune != nil {
		o.Tune(po)
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		// fcntl locks fail with EAGAIN or EACCES while another process
		// holds them.
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return nil, &LockedError{Dir: dir, PID: lockHolder(filepath.Join(dir, "LOCK"))}
		}
		return nil, fmt.Errorf("opening %s: %w", dir, err)
	}
	if err := checkFormat(db, o.Format, o.ReadOnly); err != nil {
		return nil, errors.Join(fmt.Errorf("%s: %w", dir, err), db.Close())
	}
	return db, nil
}

// checkFormat records format in a database without a record (unless
// readOnly) and refuses one that records another.
func checkFormat(db *pebble.DB, format string, readOnly bool) error {
	if format == "" {
		return errors.New("pebbledb: no format given")
	}
	v, closer, err := db.Get(FormatKey)
	if errors.Is(err, pebble.ErrNotFound) {
		if readOnly {
			return nil
		}
		if err := db.Set(FormatKey, []byte(format), pebble.Sync); err != nil {
			return fmt.Errorf("recording the format: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the format: %w", err)
	}
	defer closer.Close()
	if string(v) != format {
		return fmt.Errorf("%w: %q, this build reads %q", ErrFormat, v, format)
	}
	return nil
}

// lockHolder returns the PID of the process that holds the fcntl lock on
// path, or 0.
func lockHolder(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk); err != nil || lk.Type == unix.F_UNLCK {
		return 0
	}
	return int(lk.Pid)
}

// logger sends pebble's messages to slog: informational ones at debug
// level, errors at error level.
type logger struct{ log *slog.Logger }

func (l logger) Infof(format string, args ...any) {
	if l.log != nil && l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("pebble: " + fmt.Sprintf(format, args...))
	}
}

func (l logger) Errorf(format string, args ...any) {
	if l.log != nil {
		l.log.Error("pebble: " + fmt.Sprintf(format, args...))
	}
}

// Fatalf must not return: pebble calls it on invariant violations.
func (l logger) Fatalf(format string, args ...any) {
	msg := "pebble: " + fmt.Sprintf(format, args...)
	if l.log != nil {
		l.log.Error(msg)
	}
	panic(msg)
}
