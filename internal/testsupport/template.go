package testsupport

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// initdb costs a second or more of CPU, several times the cost of starting
// the server, and a test run creates dozens of clusters. So each test process
// runs initdb once per set of options, keeps the result in memory and writes
// a copy for every cluster. Nothing of it is left on disk. The copies share
// the system identifier in pg_control; ClusterOptions.FreshInitdb opts out.

// templateKey is what makes two initdb results differ.
type templateKey struct {
	binDir, locale, password string
}

// templateFile is one entry of a data directory. Trailing zero bytes are not
// kept (most of the first WAL segment): the copy is extended to size.
type templateFile struct {
	rel  string
	mode fs.FileMode // includes fs.ModeDir for directories
	size int64
	data []byte
}

type templateEntry struct {
	mu    sync.Mutex // guards files; held while initdb runs, so it runs once
	files []templateFile
}

var templates struct {
	mu sync.Mutex // guards m
	m  map[templateKey]*templateEntry
}

// initdbTemplate returns the cached data directory for k, running initdb
// on first use. A failure is not cached.
func (c *Cluster) initdbTemplate(k templateKey) ([]templateFile, error) {
	templates.mu.Lock()
	if templates.m == nil {
		templates.m = map[templateKey]*templateEntry{}
	}
	e := templates.m[k]
	if e == nil {
		e = &templateEntry{}
		templates.m[k] = e
	}
	templates.mu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.files != nil {
		return e.files, nil
	}
	// Built beside this cluster's data directory, removed once read.
	dir := filepath.Join(c.base, "template")
	// Not the test's context: other tests wait for this result.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.Initdb(ctx, dir); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	files, err := readTemplate(dir)
	if err != nil {
		return nil, err
	}
	e.files = files
	return files, nil
}

func readTemplate(root string) ([]templateFile, error) {
	var files []templateFile
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			files = append(files, templateFile{rel: rel, mode: fi.Mode()})
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			files = append(files, templateFile{rel: rel, mode: fi.Mode(), size: int64(len(b)), data: bytes.TrimRight(b, "\x00")})
		default:
			return fmt.Errorf("unexpected file type in initdb output: %s (%v)", p, fi.Mode())
		}
		return nil
	})
	return files, err
}

// writeTemplate recreates files under root (which must not exist), owned by
// the cluster's OS user. WalkDir order puts each directory before its
// contents.
func (c *Cluster) writeTemplate(root string, files []templateFile) error {
	for _, f := range files {
		p := filepath.Join(root, f.rel)
		if f.mode.IsDir() {
			if err := os.Mkdir(p, f.mode.Perm()); err != nil {
				return err
			}
		} else if err := writeSized(p, f); err != nil {
			return err
		}
		// Mkdir and OpenFile apply the umask; PostgreSQL checks the modes.
		if err := os.Chmod(p, f.mode.Perm()); err != nil {
			return err
		}
		if err := c.Chown(p); err != nil {
			return err
		}
	}
	return nil
}

func writeSized(p string, f templateFile) error {
	fh, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode.Perm())
	if err != nil {
		return err
	}
	_, err = fh.Write(f.data)
	if err == nil && int64(len(f.data)) < f.size {
		err = fh.Truncate(f.size)
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	return err
}
