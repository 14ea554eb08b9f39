package objstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"
)

// tmpDir holds a Dir's files being written. Its name starts with '.', which
// no valid name does, so it is never listed, read or replaced.
const tmpDir = ".tmp"

// Dir is a Backend on a local directory: an object is a file at its name.
// Writes are confined to the directory with os.Root, whatever the name.
//
// PutIfAbsent writes a temporary file, syncs it, then hard-links it to its
// name and syncs the directory: link(2) never replaces an existing file, so
// "if absent" holds even between processes racing for one name, and a
// listed object is whole and durable. A crash leaves at worst a file in
// DIR/.tmp, which nothing reads.
type Dir struct {
	root *os.Root
}

var _ Backend = (*Dir)(nil)

// OpenDir opens (creating it if need be) the directory dir as a Backend.
// Close it when done.
func OpenDir(dir string) (*Dir, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	if err := root.MkdirAll(tmpDir, 0o755); err != nil {
		root.Close()
		return nil, err
	}
	return &Dir{root: root}, nil
}

// Close releases the directory.
func (d *Dir) Close() error { return d.root.Close() }

// PutIfAbsent implements Backend.
func (d *Dir) PutIfAbsent(ctx context.Context, name string, r io.Reader, size int64) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("objstore: negative size %d", size)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := d.root.Lstat(name); err == nil {
		return fmt.Errorf("%w: %s", ErrExists, name)
	}
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	tmp := path.Join(tmpDir, hex.EncodeToString(rnd[:]))
	f, err := d.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer d.root.Remove(tmp) //nolint:errcheck // gone after the link, or junk on failure
	n, err := io.Copy(f, io.LimitReader(ctxReader{ctx, r}, size))
	if err == nil && n < size {
		err = fmt.Errorf("objstore: %s: %w after %d of %d bytes", name, io.ErrUnexpectedEOF, n, size)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	dir := path.Dir(name)
	if dir != "." {
		if err := d.root.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	if err := d.root.Link(tmp, name); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s", ErrExists, name)
		}
		return err
	}
	return d.syncDir(dir)
}

func (d *Dir) syncDir(dir string) error {
	f, err := d.root.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// open opens name, refusing anything but a regular file (a directory, or a
// link that this Backend never makes).
func (d *Dir) open(ctx context.Context, name string) (*os.File, int64, error) {
	if err := ValidName(name); err != nil {
		return nil, 0, err
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	fi, err := d.root.Lstat(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil, 0, fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("%w: %s is not a regular file", ErrNotFound, name)
	}
	f, err := d.root.Open(name)
	if err != nil {
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// GetRange implements Backend.
func (d *Dir) GetRange(ctx context.Context, name string, off, n int64, dst []byte) ([]byte, error) {
	f, size, err := d.open(ctx, name)
	if err != nil {
		return dst, err
	}
	defer f.Close()
	if off < 0 || n < 0 || off > size || n > size-off {
		return dst, fmt.Errorf("%w: %s: %d+%d of %d bytes", ErrRange, name, off, n, size)
	}
	return readAt(f, off, n, dst)
}

// Get implements Backend.
func (d *Dir) Get(ctx context.Context, name string, dst []byte) ([]byte, error) {
	f, size, err := d.open(ctx, name)
	if err != nil {
		return dst, err
	}
	defer f.Close()
	return readAt(f, 0, size, dst)
}

func readAt(f *os.File, off, n int64, dst []byte) ([]byte, error) {
	if err := checkRead(f.Name(), n); err != nil {
		return dst, err
	}
	l := len(dst)
	dst = slices.Grow(dst, int(n))[:l+int(n)]
	if _, err := f.ReadAt(dst[l:], off); err != nil {
		return dst[:l], fmt.Errorf("reading %s: %w", f.Name(), err)
	}
	return dst, nil
}

// Stat implements Backend.
func (d *Dir) Stat(ctx context.Context, name string) (int64, error) {
	f, size, err := d.open(ctx, name)
	if err != nil {
		return 0, err
	}
	f.Close()
	return size, nil
}

// List implements Backend. It reads the directories under prefix whole,
// then yields in order; only regular files with valid names are listed.
func (d *Dir) List(ctx context.Context, prefix string) iter.Seq2[Object, error] {
	return func(yield func(Object, error) bool) {
		start := "."
		if i := strings.LastIndexByte(prefix, '/'); i > 0 {
			start = prefix[:i]
			if ValidName(start) != nil {
				return
			}
		}
		var objs []Object
		err := fs.WalkDir(d.root.FS(), start, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				if p == start && errors.Is(err, fs.ErrNotExist) {
					return fs.SkipAll
				}
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if p == "." {
				return nil
			}
			if strings.HasPrefix(e.Name(), ".") {
				if e.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if e.IsDir() {
				if !strings.HasPrefix(p+"/", prefix) && !strings.HasPrefix(prefix, p+"/") {
					return fs.SkipDir
				}
				return nil
			}
			if !e.Type().IsRegular() || !strings.HasPrefix(p, prefix) || ValidName(p) != nil {
				return nil
			}
			fi, err := e.Info()
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil // deleted meanwhile
				}
				return err
			}
			objs = append(objs, Object{Name: p, Size: fi.Size(), ModTime: fi.ModTime()})
			return nil
		})
		if err != nil {
			yield(Object{}, fmt.Errorf("listing %q: %w", prefix, err))
			return
		}
		slices.SortFunc(objs, func(a, b Object) int { return strings.Compare(a.Name, b.Name) })
		for _, o := range objs {
			if !yield(o, nil) {
				return
			}
		}
	}
}

// Delete implements Backend. Directories it leaves empty stay.
func (d *Dir) Delete(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	fi, err := d.root.Lstat(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil
		}
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("objstore: %s is not an object", name)
	}
	if err := d.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return d.syncDir(path.Dir(name))
}

// ctxReader stops a copy once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
