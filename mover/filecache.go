package mover

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// fileCache keeps a bounded set of open files of one DEST.partial tree, all
// opened through the receiver's os.Root so that no write can leave it. A
// file in use is never evicted: the bound may be exceeded while every open
// file is busy.
type fileCache struct {
	root *os.Root
	dir  string // the partial dir, relative to root
	max  int
	// fs is dir, opened by openFS before the connection's first write, for
	// syncfs: a writeback error is reported to every descriptor opened
	// before it happened. nil where syncfs cannot report errors (see
	// syncfsReports).
	fs *os.File

	mu   sync.Mutex // guards open, dirs
	open map[string]*cachedFile
	dirs map[string]bool // directories create made or found: no MkdirAll per file
}

type cachedFile struct {
	f    *os.File
	refs int
}

func newFileCache(root *os.Root, dir string, max int) *fileCache {
	return &fileCache{root: root, dir: dir, max: max, open: map[string]*cachedFile{}, dirs: map[string]bool{}}
}

// openFS opens the descriptor syncAll uses; call it before the first write
// whose durability syncAll must report, and close the cache after. Without
// it (or where syncfs cannot report errors) canSyncAll is false.
func (c *fileCache) openFS() {
	if c.fs != nil || !syncfsReports() {
		return
	}
	if d, err := c.root.Open(c.dir); err == nil {
		c.fs = d
	}
}

// syncfsReports reports whether syncfs(2) returns writeback errors (Linux
// 5.8 and later): before, it returned 0 whatever happened, and only fsync
// of each file can tell that its data is durable.
var syncfsReports = sync.OnceValue(func() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	return kernelAtLeast(unix.ByteSliceToString(u.Release[:]), 5, 8)
})

// kernelAtLeast reports whether a Linux release string ("6.1.0-13-amd64")
// is major.minor or later.
func kernelAtLeast(release string, major, minor int) bool {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return false
	}
	digits := func(s string) string { // "8-rc1" -> "8"
		if i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
			return s[:i]
		}
		return s
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(digits(parts[1]))
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

func (c *fileCache) name(p string) string { return filepath.Join(c.dir, filepath.FromSlash(p)) }

// create makes the file exist with the given size (sparse), creating its
// directories, and keeps whatever it already holds. A size of -1 keeps the
// file's size too (a growing file, extended by its writes).
func (c *fileCache) create(p string, size int64) error {
	dir := filepath.Dir(c.name(p))
	c.mu.Lock()
	made := c.dirs[dir]
	c.mu.Unlock()
	if !made {
		if err := c.root.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("creating directory for %s: %w", p, err)
		}
		c.mu.Lock()
		c.dirs[dir] = true
		c.mu.Unlock()
	}
	return c.use(p, true, func(f *os.File) error {
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if size >= 0 && fi.Size() != size {
			if err := f.Truncate(size); err != nil {
				return fmt.Errorf("sizing %s: %w", p, err)
			}
		}
		return nil
	})
}

// use runs fn with p open; p stays open (and is not evicted) until fn
// returns.
func (c *fileCache) use(p string, create bool, fn func(*os.File) error) error {
	e, err := c.acquire(p, create)
	if err != nil {
		return err
	}
	defer func() {
		c.mu.Lock()
		e.refs--
		c.mu.Unlock()
	}()
	return fn(e.f)
}

func (c *fileCache) acquire(p string, create bool) (*cachedFile, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.open[p]; ok {
		e.refs++
		return e, nil
	}
	flag := os.O_RDWR
	if create {
		flag |= os.O_CREATE
	}
	f, err := c.root.OpenFile(c.name(p), flag, 0o600)
	if err != nil {
		return nil, err
	}
	if len(c.open) >= c.max {
		// Evict an idle file: sync reopens what it needs.
		for k, old := range c.open {
			if old.refs == 0 {
				old.f.Close()
				delete(c.open, k)
				break
			}
		}
	}
	e := &cachedFile{f: f, refs: 1}
	c.open[p] = e
	return e, nil
}

func (c *fileCache) writeAt(p string, b []byte, off int64) error {
	return c.use(p, false, func(f *os.File) error {
		_, err := f.WriteAt(b, off)
		return err
	})
}

func (c *fileCache) readAt(p string, b []byte, off int64) error {
	return c.use(p, false, func(f *os.File) error {
		_, err := f.ReadAt(b, off)
		return err
	})
}

// sync fsyncs p. fsync flushes the file, not the descriptor, so reopening
// an evicted file is enough.
func (c *fileCache) sync(p string) error {
	return c.use(p, false, func(f *os.File) error { return f.Sync() })
}

// errNoSyncfs is returned by syncAll where syncfs cannot report errors.
var errNoSyncfs = errors.New("mover: syncfs does not report writeback errors here")

// canSyncAll reports whether syncAll works here.
func (c *fileCache) canSyncAll() bool { return c.fs != nil }

// syncAll makes every file of the cache's file system durable, data and
// metadata, with one syncfs(2): cheaper than an fsync per file once a
// barrier touches more than a few, since each fsync of a new file may
// commit the journal on its own. It also flushes whatever else is dirty on
// that file system. An error is one writeback error since the cache was
// opened (it may belong to another file of the same file system: either
// way, nothing written since the last barrier can be taken as durable).
func (c *fileCache) syncAll() error {
	if c.fs == nil {
		return errNoSyncfs
	}
	return syncfs(int(c.fs.Fd()))
}

// syncfs is unix.Syncfs; tests replace it to inject errors.
var syncfs = unix.Syncfs

// syncEach fsyncs the files ps, up to par at a time, and returns the first
// failure with its file.
func (c *fileCache) syncEach(ps []string, par int) (string, error) {
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex // guards badPath, firstErr
		badPath string
		first   error
	)
	next := make(chan string)
	for range min(par, len(ps)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range next {
				if err := c.sync(p); err != nil {
					mu.Lock()
					if first == nil {
						badPath, first = p, err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, p := range ps {
		next <- p
	}
	close(next)
	wg.Wait()
	return badPath, first
}

// closeAll closes every file; call it once no goroutine uses the cache.
// The cache stays usable (files are opened again as needed).
func (c *fileCache) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.open {
		e.f.Close()
		delete(c.open, k)
	}
}

// close closes every file and the file system descriptor; the cache is
// not used after.
func (c *fileCache) close() {
	c.closeAll()
	if c.fs != nil {
		c.fs.Close()
		c.fs = nil
	}
}
