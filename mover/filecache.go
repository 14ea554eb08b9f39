package mover

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// fileCache keeps a bounded set of open files of one DEST.partial tree, all
// opened through the receiver's os.Root so that no write can leave it.
type fileCache struct {
	root *os.Root
	dir  string // the partial dir, relative to root
	max  int

	mu   sync.Mutex // guards open
	open map[string]*os.File
}

func newFileCache(root *os.Root, dir string, max int) *fileCache {
	return &fileCache{root: root, dir: dir, max: max, open: map[string]*os.File{}}
}

func (c *fileCache) name(p string) string { return filepath.Join(c.dir, filepath.FromSlash(p)) }

// create makes the file exist with the given size (sparse), creating its
// directories, and keeps whatever it already holds.
func (c *fileCache) create(p string, size int64) (*os.File, error) {
	name := c.name(p)
	if err := c.root.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return nil, fmt.Errorf("creating directory for %s: %w", p, err)
	}
	f, err := c.get(p, true)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() != size {
		if err := f.Truncate(size); err != nil {
			return nil, fmt.Errorf("sizing %s: %w", p, err)
		}
	}
	return f, nil
}

func (c *fileCache) get(p string, create bool) (*os.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.open[p]; ok {
		return f, nil
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
		// Evict any file: sync reopens what it needs.
		for k, old := range c.open {
			old.Close()
			delete(c.open, k)
			break
		}
	}
	c.open[p] = f
	return f, nil
}

func (c *fileCache) writeAt(p string, b []byte, off int64) error {
	f, err := c.get(p, false)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(b, off)
	return err
}

func (c *fileCache) readAt(p string, b []byte, off int64) error {
	f, err := c.get(p, false)
	if err != nil {
		return err
	}
	_, err = f.ReadAt(b, off)
	return err
}

// sync fsyncs p. fsync flushes the file, not the descriptor, so reopening
// an evicted file is enough.
func (c *fileCache) sync(p string) error {
	f, err := c.get(p, false)
	if err != nil {
		return err
	}
	return f.Sync()
}

func (c *fileCache) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, f := range c.open {
		f.Close()
		delete(c.open, k)
	}
}
