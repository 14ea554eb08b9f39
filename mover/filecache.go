package mover

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// fileCache keeps a bounded set of open files of one DEST.partial tree, all
// opened through the receiver's os.Root so that no write can leave it. A
// file in use is never evicted: the bound may be exceeded while every open
// file is busy.
type fileCache struct {
	root *os.Root
	dir  string // the partial dir, relative to root
	max  int

	mu   sync.Mutex // guards open
	open map[string]*cachedFile
}

type cachedFile struct {
	f    *os.File
	refs int
}

func newFileCache(root *os.Root, dir string, max int) *fileCache {
	return &fileCache{root: root, dir: dir, max: max, open: map[string]*cachedFile{}}
}

func (c *fileCache) name(p string) string { return filepath.Join(c.dir, filepath.FromSlash(p)) }

// create makes the file exist with the given size (sparse), creating its
// directories, and keeps whatever it already holds. A size of -1 keeps the
// file's size too (a growing file, extended by its writes).
func (c *fileCache) create(p string, size int64) error {
	name := c.name(p)
	if err := c.root.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return fmt.Errorf("creating directory for %s: %w", p, err)
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

// closeAll closes every file; call it once no goroutine uses the cache.
func (c *fileCache) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.open {
		e.f.Close()
		delete(c.open, k)
	}
}
