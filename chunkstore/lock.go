package chunkstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Repository locks, as restic keeps them: a file per process in DIR/locks,
// shared for every process that reads or writes restore points (backups,
// exports, mounts, publications, movers, check), exclusive for forget and
// prune. A process writes its own lock first and only then looks at the
// others, so two processes that race both see each other: a shared lock
// and an exclusive one never both hold. wal-push takes none (it never
// depends on a chunk a prune may remove: design/0007).
//
// A lock whose process is gone is stale and removed by whoever finds it:
// on the same host, when no process with its PID and start time runs
// since the same boot; on another host, when it was not refreshed for
// lockStaleAfter.

// ErrRepoLocked is matched by the error of an open that a lock of another
// process refuses.
var ErrRepoLocked = errors.New("chunkstore: the repository is locked")

const (
	lockRefreshEvery = 5 * time.Minute
	lockStaleAfter   = 30 * time.Minute
)

type lockInfo struct {
	Host      string    `json:"host"`
	BootID    string    `json:"boot_id"`
	PID       int       `json:"pid"`
	Start     uint64    `json:"start"` // the process's start time, in clock ticks since boot
	Exclusive bool      `json:"exclusive"`
	Purpose   string    `json:"purpose"`
	Time      time.Time `json:"time"`
	Refreshed time.Time `json:"refreshed"`
}

func (l lockInfo) String() string {
	kind := "shared"
	if l.Exclusive {
		kind = "exclusive"
	}
	return fmt.Sprintf("%s (PID %d on %s, %s lock since %s)", l.Purpose, l.PID, l.Host, kind, l.Time.UTC().Format(time.RFC3339))
}

// lockStore is where a repository's locks are: files in DIR/locks, or
// objects under locks/ (lockobj.go). Nothing is rewritten in place: a
// refresh puts a new lock, then removes the old one.
type lockStore interface {
	// put writes info under a fresh name and returns the name.
	put(ctx context.Context, info lockInfo) (string, error)
	// list returns the locks' names and contents.
	list(ctx context.Context) (map[string][]byte, error)
	// remove removes a lock; a missing one is no error.
	remove(ctx context.Context, name string) error
}

// dirLocks keeps locks as files in a directory, given to the
// repository's owner.
type dirLocks struct {
	dir   string
	owner owner
}

func (d dirLocks) put(_ context.Context, info lockInfo) (string, error) {
	p, err := writeLockFile(d.dir, "", info, d.owner)
	return filepath.Base(p), err
}

func (d dirLocks) list(context.Context) (map[string][]byte, error) {
	ents, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: reading the repository's locks: %w", err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := readFileMax(filepath.Join(d.dir, e.Name()), maxLockObject)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // released meanwhile
		case errors.Is(err, errFileTooLarge), errors.Is(err, errNotRegular):
			// Not one of ours, and not read (a FIFO would block): an
			// unreadable lock, held, as in a bucket.
			b = nil
		case err != nil:
			return nil, fmt.Errorf("chunkstore: reading the repository's locks: %w", err)
		}
		out[e.Name()] = b
	}
	return out, nil
}

func (d dirLocks) remove(_ context.Context, name string) error {
	if err := os.Remove(filepath.Join(d.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("chunkstore: removing the repository lock: %w", err)
	}
	return nil
}

// repoLock is a lock this process holds; a goroutine refreshes it until
// release.
type repoLock struct {
	store lockStore
	mu    sync.Mutex // guards name
	name  string
	info  lockInfo
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
}

// lockPurpose names this process in its locks: its program and first
// arguments ("pgporter export").
func lockPurpose() string {
	var words []string
	for i, a := range os.Args[:min(len(os.Args), 3)] {
		if i == 0 {
			a = filepath.Base(a)
		}
		if strings.HasPrefix(a, "-") {
			break
		}
		words = append(words, a)
	}
	return strings.Join(words, " ")
}

// dirLockStore returns the lock store of the repository at dir, creating
// its locks directory.
func dirLockStore(dir string, o owner) (lockStore, error) {
	locks := filepath.Join(dir, "locks")
	if err := o.mkdir(locks, dir); err != nil {
		return nil, err
	}
	return dirLocks{dir: locks, owner: o}, nil
}

// takeLock takes a lock in store, or fails with ErrRepoLocked naming the
// processes in the way.
func takeLock(ctx context.Context, store lockStore, exclusive bool, purpose string) (*repoLock, error) {
	host, _ := os.Hostname()
	now := time.Now().UTC()
	info := lockInfo{Host: host, BootID: bootID(), PID: os.Getpid(), Start: procStart(os.Getpid()), Exclusive: exclusive, Purpose: purpose, Time: now, Refreshed: now}
	l := &repoLock{store: store, info: info, stop: make(chan struct{}), done: make(chan struct{})}
	var err error
	if l.name, err = store.put(ctx, info); err != nil {
		return nil, err
	}
	others, err := liveLocks(ctx, store, l.name)
	if err != nil {
		_ = store.remove(context.WithoutCancel(ctx), l.name)
		return nil, err
	}
	var blocking []string
	for _, other := range others {
		if exclusive || other.Exclusive {
			blocking = append(blocking, other.String())
		}
	}
	if len(blocking) > 0 {
		_ = store.remove(context.WithoutCancel(ctx), l.name)
		return nil, fmt.Errorf("%w by %s", ErrRepoLocked, strings.Join(blocking, "; "))
	}
	go l.refresh()
	return l, nil
}

// refresh renews the lock every lockRefreshEvery until release: a new
// lock first, then the old one removed, so that it is never missing.
func (l *repoLock) refresh() {
	defer close(l.done)
	t := time.NewTicker(lockRefreshEvery)
	defer t.Stop()
	ctx := context.Background() // each request bounded by the store's own retries
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			info := l.info
			info.Refreshed = time.Now().UTC()
			name, err := l.store.put(ctx, info)
			if err != nil {
				continue // the old one holds until lockStaleAfter
			}
			l.mu.Lock()
			old := l.name
			l.name, l.info = name, info
			l.mu.Unlock()
			_ = l.store.remove(ctx, old)
		}
	}
}

// release removes the lock. It may be called twice.
func (l *repoLock) release() error {
	var err error
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		err = l.store.remove(context.Background(), l.name)
	})
	return err
}

// writeLockFile writes info to name in dir (a fresh name if empty) through
// a temporary file, and returns its path.
func writeLockFile(dir, name string, info lockInfo, o owner) (string, error) {
	b, err := json.Marshal(info)
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return "", fmt.Errorf("chunkstore: writing a repository lock: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = o.file(f)
	}
	err = errors.Join(err, f.Close())
	if err == nil {
		if name == "" {
			name = fmt.Sprintf("%016x.json", randUint64())
		}
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("chunkstore: writing a repository lock: %w", err)
	}
	return filepath.Join(dir, name), nil
}

// liveLocks returns the locks in store other than own, removing the stale
// ones it finds.
func liveLocks(ctx context.Context, store lockStore, own string) ([]lockInfo, error) {
	all, err := store.list(ctx)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	boot := bootID()
	var live []lockInfo
	for _, name := range slices.Sorted(maps.Keys(all)) {
		if name == own {
			continue
		}
		var l lockInfo
		if json.Unmarshal(all[name], &l) != nil {
			// Half a lock cannot be: writes are renamed into place, and
			// objects created whole. Count it as held, by an unknown
			// process.
			live = append(live, lockInfo{Purpose: "an unreadable lock " + name, Exclusive: true})
			continue
		}
		stale := false
		if l.Host == host {
			stale = l.BootID != boot || procStart(l.PID) != l.Start
		} else {
			stale = time.Since(l.Refreshed) > lockStaleAfter
		}
		if stale {
			_ = store.remove(ctx, name)
			continue
		}
		live = append(live, l)
	}
	return live, nil
}

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// procStart returns the start time of process pid (field 22 of its stat),
// 0 if it does not run.
func procStart(pid int) uint64 {
	if pid <= 0 || syscall.Kill(pid, 0) == syscall.ESRCH {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name may hold spaces and parentheses: fields count from
	// after its closing parenthesis, where field 3 is.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}
