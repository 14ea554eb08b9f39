package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"golang.org/x/sys/unix"

	"github.com/pgporter/pgporter/internal/pebbledb"
	"github.com/pgporter/pgporter/staging"
)

// Journal keeps sessions in pebble under HOME/orchestrator. The database is
// opened for each read or write and closed at once, so that 'pgporter
// sessions' works while an export runs in another process; pebble's own
// lock serializes the short opens.
type Journal struct {
	dir      string
	readOnly bool // ReadJournal's: a missing database holds nothing, and is not created
}

// errNoJournal: a read-only journal whose database does not exist.
var errNoJournal = errors.New("no session journal")

// ErrNoSession is returned for a session ID the journal does not hold.
var ErrNoSession = errors.New("no such session")

// ReadJournal returns the journal under home for reading (Get, List): it
// creates nothing, and a home without one holds no session, so that a
// mistyped --home shows that instead of leaving a new journal behind.
func ReadJournal(home string) *Journal {
	return &Journal{dir: filepath.Join(home, "orchestrator"), readOnly: true}
}

// OpenJournal returns the journal under home, which its first write or
// lock creates: an export refused before its session is journaled (no
// repository, a bad plan) leaves no home behind.
func OpenJournal(home string) (*Journal, error) {
	return &Journal{dir: filepath.Join(home, "orchestrator")}, nil
}

// create makes the journal's directories, if need be.
func (j *Journal) create() error {
	if err := os.MkdirAll(filepath.Join(j.dir, "locks"), 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", j.dir, err)
	}
	return nil
}

func sessionKey(id string) []byte { return []byte("s/" + id) }

// journalFormat is the layout of the journal's database: sessions under
// "s/", publications under "p/".
const journalFormat = "pgporter-journal-1"

// with opens the database, runs fn and closes it, waiting for another
// process's short open to end.
func (j *Journal) with(fn func(*pebble.DB) error) error {
	path := filepath.Join(j.dir, "db")
	if j.readOnly {
		// pebble would make the directory even to say it holds no database.
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return errNoJournal
		}
	} else if err := j.create(); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		// Read-only, pebble writes nothing either: no flush of the log into
		// a table, no new manifest or options file.
		db, err := pebbledb.Open(path, pebbledb.Options{Format: journalFormat, ReadOnly: j.readOnly})
		if err != nil {
			if errors.Is(err, pebbledb.ErrLocked) && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond) // another process, or goroutine, holds it for a moment
				continue
			}
			return fmt.Errorf("opening the session journal: %w", err)
		}
		ferr := fn(db.DB)
		if err := db.Close(); err != nil && ferr == nil {
			ferr = err
		}
		return ferr
	}
}

// Put writes s durably.
func (j *Journal) Put(s *Session) error {
	s.Updated = time.Now().UTC()
	v, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return j.with(func(db *pebble.DB) error {
		if err := db.Set(sessionKey(s.ID), v, pebble.Sync); err != nil {
			return fmt.Errorf("journaling session %s: %w", s.ID, err)
		}
		return nil
	})
}

// Delete removes session id from the journal.
func (j *Journal) Delete(id string) error {
	return j.with(func(db *pebble.DB) error { return db.Delete(sessionKey(id), pebble.Sync) })
}

// Get reads session id.
func (j *Journal) Get(id string) (*Session, error) {
	var s *Session
	err := j.with(func(db *pebble.DB) error {
		v, closer, err := db.Get(sessionKey(id))
		if errors.Is(err, pebble.ErrNotFound) {
			return fmt.Errorf("%w %q (see 'pgporter sessions')", ErrNoSession, id)
		}
		if err != nil {
			return err
		}
		defer closer.Close()
		s = new(Session)
		return json.Unmarshal(v, s)
	})
	if errors.Is(err, errNoJournal) {
		return nil, fmt.Errorf("%w %q: %s holds no sessions (is --home right?)", ErrNoSession, id, filepath.Dir(j.dir))
	}
	return s, err
}

// List returns every session, newest first.
func (j *Journal) List() ([]*Session, error) {
	var out []*Session
	err := j.with(func(db *pebble.DB) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte("s/"), UpperBound: []byte("s0")})
		if err != nil {
			return err
		}
		defer it.Close()
		for it.First(); it.Valid(); it.Next() {
			s := new(Session)
			if err := json.Unmarshal(it.Value(), s); err != nil {
				return fmt.Errorf("session %s: %w", it.Key(), err)
			}
			out = append(out, s)
		}
		return it.Error()
	})
	if errors.Is(err, errNoJournal) {
		return nil, nil
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Created.After(out[b].Created) })
	return out, err
}

// Lock is a session's run lock: one process at a time runs, retries or
// cancels a session. The kernel drops it when the process dies.
type Lock struct{ f *os.File }

// ErrRunning is returned when another process holds a session's lock.
var ErrRunning = errors.New("session is running in another process")

// Lock takes session (or publication) id's run lock without waiting. A
// holder that was killed but is stuck exiting on the FUSE mount it served
// (see staging.ReleaseDying) is freed first: its mount is aborted, and the
// lock taken once it has exited. One still stuck after 30 s gives an error
// wrapping both ErrRunning and a *staging.StuckError.
func (j *Journal) Lock(id string) (*Lock, error) {
	l, err := j.tryLock(id)
	if !errors.Is(err, ErrRunning) {
		return l, err
	}
	pid, mnt := j.holder(id)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dying, rerr := staging.ReleaseDying(ctx, pid, mnt)
	if !dying {
		// Alive, or it finished exiting since the first try (a zombie
		// holds no lock): try once more.
		return j.tryLock(id)
	}
	if rerr != nil {
		return nil, fmt.Errorf("%w: %w", ErrRunning, rerr) // names the process, its wait, the mount and what to run
	}
	return j.tryLock(id)
}

// holder returns the process journaled as running session or publication
// id, and the FUSE mount it serves.
func (j *Journal) holder(id string) (pid int, mountpoint string) {
	if s, err := j.Get(id); err == nil {
		return s.PID, s.Resources.Mountpoint
	}
	if p, err := j.GetPublication(id); err == nil {
		return p.ServePID, p.Lower()
	}
	return 0, ""
}

func (j *Journal) tryLock(id string) (*Lock, error) {
	if err := j.create(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(j.dir, "locks", id+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s (interrupt it, or wait for it to end)", ErrRunning, id)
		}
		return nil, fmt.Errorf("locking session %s: %w", id, err)
	}
	return &Lock{f: f}, nil
}

// Unlock releases the lock.
func (l *Lock) Unlock() {
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	l.f.Close()
}

// contextErr prefers ctx's error: an interrupted step reports the
// interruption, not the broken pipe it caused.
func contextErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
