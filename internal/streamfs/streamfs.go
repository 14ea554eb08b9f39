// Package streamfs mounts a write-only directory whose files are streams:
// each file a program creates in it is handed to this process, as an
// io.Reader, while the program writes it. Nothing is stored: a write
// returns once the reader has taken its bytes, so the writer goes at the
// reader's pace.
//
// It is for programs that can only write files into an empty directory,
// such as pg_basebackup -Ft of a cluster with tablespaces (one tar per
// tablespace), when their output should be consumed as it comes. It is not
// a filesystem to read from: files cannot be opened again, read, or
// written out of order.
package streamfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/pgporter/pgporter/internal/fusefd"
)

// File is a file created in the mount: its name when created, and its
// content as it is written. Read returns io.EOF once the writer closed it,
// and an error if the writer went away without closing it. The consumer
// must read each File to its end (or Close it, which fails the writer's
// further writes).
type File struct {
	Name string
	r    *io.PipeReader
}

// Read reads the file's next bytes.
func (f *File) Read(p []byte) (int, error) { return f.r.Read(p) }

// Close stops reading: the writer's further writes fail with EIO.
func (f *File) Close() error {
	return f.r.CloseWithError(errors.New("streamfs: the reader closed the file"))
}

// Mount is a mounted stream directory.
type Mount struct {
	dir    string
	server *fuse.Server
	files  chan *File
	root   *dirNode
}

// MountAt mounts an empty stream directory at dir, which must exist. It
// needs root (a direct mount) or fusermount3.
func MountAt(dir string) (*Mount, error) {
	m := &Mount{dir: dir, files: make(chan *File)}
	m.root = &dirNode{m: m, renamed: map[string]string{}}
	timeout := time.Duration(0) // no caching of names: they change under the writer
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			DirectMount:   true,
			FsName:        "pgporter-stream",
			Name:          "pgporter",
			MaxWrite:      1 << 20,
			DisableSplice: true,
			Options:       []string{"default_permissions", "noexec", "nosuid", "nodev"},
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
	}
	// As staging's mount: keep forks out until /dev/fuse is close-on-exec,
	// so that the writer (a child) does not hold the FUSE connection.
	direct := os.Geteuid() == 0
	if direct {
		opts.MountOptions.DirectMountStrict = true
		syscall.ForkLock.Lock()
	}
	server, err := fs.Mount(dir, m.root, opts)
	if err == nil {
		err = fusefd.CloseOnExec()
	}
	if direct {
		syscall.ForkLock.Unlock()
	}
	if err != nil {
		if server != nil {
			_ = server.Unmount()
		}
		return nil, fmt.Errorf("streamfs: mounting %s: %w", dir, err)
	}
	m.server = server
	return m, nil
}

// Dir returns the mountpoint.
func (m *Mount) Dir() string { return m.dir }

// Next returns the next file a writer creates, once it is created.
func (m *Mount) Next(ctx context.Context) (*File, error) {
	select {
	case f := <-m.files:
		return f, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Renamed returns the name a file created as name was last renamed to,
// or name.
func (m *Mount) Renamed(name string) string {
	m.root.mu.Lock()
	defer m.root.mu.Unlock()
	for {
		to, ok := m.root.renamed[name]
		if !ok {
			return name
		}
		name = to
	}
}

// Unmount unmounts the directory. Files still being written fail.
func (m *Mount) Unmount() error {
	err := m.server.Unmount()
	m.server.Wait()
	return err
}

type dirNode struct {
	fs.Inode
	m *Mount

	mu      sync.Mutex
	renamed map[string]string // created name -> new name
}

var (
	_ fs.NodeCreater   = (*dirNode)(nil)
	_ fs.NodeRenamer   = (*dirNode)(nil)
	_ fs.NodeMkdirer   = (*dirNode)(nil)
	_ fs.NodeGetattrer = (*dirNode)(nil)
)

func (d *dirNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = fuse.S_IFDIR | 0o700
	return 0
}

// Create hands a new file to Next; the create returns once Next took it.
func (d *dirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	r, w := io.Pipe()
	f := &fileNode{w: w}
	select {
	case d.m.files <- &File{Name: name, r: r}:
	case <-ctx.Done():
		return nil, nil, 0, syscall.EINTR
	}
	out.Mode = fuse.S_IFREG | 0o600
	return d.NewInode(ctx, f, fs.StableAttr{Mode: fuse.S_IFREG}), f, fuse.FOPEN_DIRECT_IO, 0
}

func (d *dirNode) Rename(_ context.Context, name string, newParent fs.InodeEmbedder, newName string, _ uint32) syscall.Errno {
	if newParent.EmbeddedInode() != d.EmbeddedInode() {
		return syscall.EXDEV
	}
	d.mu.Lock()
	d.renamed[name] = newName
	d.mu.Unlock()
	return 0
}

func (d *dirNode) Mkdir(context.Context, string, uint32, *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

// fileNode is one stream. Writes must come in order; the release of the
// last descriptor ends the stream.
type fileNode struct {
	fs.Inode

	mu     sync.Mutex
	w      *io.PipeWriter
	size   int64
	closed bool
}

var (
	_ fs.FileWriter    = (*fileNode)(nil)
	_ fs.FileFlusher   = (*fileNode)(nil)
	_ fs.FileReleaser  = (*fileNode)(nil)
	_ fs.FileFsyncer   = (*fileNode)(nil)
	_ fs.NodeGetattrer = (*fileNode)(nil)
	_ fs.NodeSetattrer = (*fileNode)(nil)
)

func (f *fileNode) Write(_ context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || off != f.size {
		return 0, syscall.EIO // out of order, or after the close
	}
	n, err := f.w.Write(data)
	f.size += int64(n)
	if err != nil {
		return uint32(n), syscall.EIO
	}
	return uint32(n), 0
}

func (f *fileNode) end() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.closed = true
		f.w.Close()
	}
}

// Flush comes at every close(2), of duplicates too (a shell's redirection
// closes one of two descriptors before it writes); only the release, when
// the last one is closed, ends the stream.
func (f *fileNode) Flush(context.Context) syscall.Errno { return 0 }

func (f *fileNode) Release(context.Context) syscall.Errno       { f.end(); return 0 }
func (f *fileNode) Fsync(context.Context, uint32) syscall.Errno { return 0 }

func (f *fileNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	out.Mode = fuse.S_IFREG | 0o600
	out.Size = uint64(f.size)
	return 0
}

// Setattr allows what opening a new file for writing asks (truncation to
// its current size, mode); nothing else.
func (f *fileNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f.mu.Lock()
	sz, ok := in.GetSize()
	bad := ok && int64(sz) != f.size
	f.mu.Unlock()
	if bad {
		return syscall.EPERM
	}
	return f.Getattr(ctx, fh, out)
}
