package staging

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// filesys is the state one mount shares between its nodes.
type filesys struct {
	chunks    ChunkReader
	cache     *chunkCache
	log       *slog.Logger
	cowDir    string
	uid, gid  uint32 // the owner every restored entry shows
	readahead int    // chunks fetched ahead of a sequential reader, at least
	dropHints bool   // MountOptions.DropHintWrites

	hintWrites atomic.Int64 // writes dropped as hint bits only (pages or pieces)
	hintBytes  atomic.Int64 // their bytes

	// Over a LatencyReader: its RTT, and how far ahead reads may go in
	// bytes, by RTT × rate (see aheadBytes). rtt is nil otherwise.
	rtt      func() time.Duration
	maxAhead int64
	rate     rateMeter // of reads served
	clock    func() time.Time

	bg     context.Context    // chunk fetches; cancelled at unmount
	cancel context.CancelFunc // cancels bg
	sem    chan struct{}      // bounds prefetches in flight
	wg     sync.WaitGroup     // owns fetch and prefetch goroutines

	mu      sync.Mutex // guards nextIno, files
	nextIno uint64
	files   []*node // every regular file, so unmount can close CoW files

	failMu    sync.Mutex // guards failed, firstFail
	failed    int64      // reads and writes answered EIO for a chunk
	firstFail *ReadError
}

// ReadError reports that reads through a mount failed because chunks of
// the restore point could not be read or failed verification. A reader
// gets EIO, which PostgreSQL sometimes tolerates (a WAL read error is taken
// as the end of WAL, a statistics file is dropped), so what it produced
// from the mount may silently lack data: the caller must not trust it.
type ReadError struct {
	Count int64    // failed reads in all
	Chunk chunk.ID // of the first failure
	Path  string   // the file of the first failure, relative to the mount
	Err   error    // the first failure
}

func (e *ReadError) Error() string {
	return fmt.Sprintf("%d read(s) through the mount failed; first: chunk %s of file %s: %v", e.Count, e.Chunk, e.Path, e.Err)
}

func (e *ReadError) Unwrap() error { return e.Err }

// readFailed counts a failed read of chunk id of file path.
func (sys *filesys) readFailed(id chunk.ID, path string, err error) {
	sys.failMu.Lock()
	defer sys.failMu.Unlock()
	sys.failed++
	if sys.firstFail == nil {
		sys.firstFail = &ReadError{Chunk: id, Path: path, Err: err}
	}
}

// readErr returns a *ReadError if any read failed so far, else nil.
func (sys *filesys) readErr() error {
	sys.failMu.Lock()
	defer sys.failMu.Unlock()
	if sys.firstFail == nil {
		return nil
	}
	e := *sys.firstFail
	e.Count = sys.failed
	return &e
}

// node is a directory, regular file or symlink of the mount.
type node struct {
	fs.Inode
	sys  *filesys
	ino  uint64
	typ  chunkstore.NodeType
	plan []chunkstore.Node // root only: the tree that OnAdd builds

	nextRead atomic.Int64 // where a sequential reader continues
	relPage  bool         // DropHintWrites and a relation's main fork by its path in the tree (relMainFork)

	mu           sync.RWMutex // guards the fields below and data's content
	perm         uint32
	uid, gid     uint32
	atime, mtime time.Time
	ctime        time.Time
	target       string    // symlinks
	data         *fileData // regular files
}

var (
	_ fs.NodeOnAdder     = (*node)(nil)
	_ fs.NodeGetattrer   = (*node)(nil)
	_ fs.NodeSetattrer   = (*node)(nil)
	_ fs.NodeOpener      = (*node)(nil)
	_ fs.NodeReader      = (*node)(nil)
	_ fs.NodeWriter      = (*node)(nil)
	_ fs.NodeFsyncer     = (*node)(nil)
	_ fs.NodeFlusher     = (*node)(nil)
	_ fs.NodeAllocater   = (*node)(nil)
	_ fs.NodeReadlinker  = (*node)(nil)
	_ fs.NodeMkdirer     = (*node)(nil)
	_ fs.NodeCreater     = (*node)(nil)
	_ fs.NodeSymlinker   = (*node)(nil)
	_ fs.NodeUnlinker    = (*node)(nil)
	_ fs.NodeRmdirer     = (*node)(nil)
	_ fs.NodeRenamer     = (*node)(nil)
	_ fs.NodeStatfser    = (*node)(nil)
	_ fs.NodeOpendirer   = (*node)(nil)
	_ fs.NodeReaddirer   = (*node)(nil)
	_ fs.NodeLookuper    = (*node)(nil)
	_ fs.InodeEmbedder   = (*node)(nil)
	_ fs.NodeGetxattrer  = (*node)(nil)
	_ fs.NodeListxattrer = (*node)(nil)
)

// planTree checks tree and returns its entries in an order where parents
// come first, with missing parent directories added, and the root's entry.
func planTree(tree []chunkstore.Node) ([]chunkstore.Node, chunkstore.Node, error) {
	root := chunkstore.Node{Type: chunkstore.NodeDir, Mode: 0o700}
	byPath := make(map[string]chunkstore.Node, len(tree))
	for _, n := range tree {
		p := n.Path
		if p == "" || p == "." {
			if n.Type != chunkstore.NodeDir {
				return nil, root, errors.New("staging: tree root is not a directory")
			}
			root = n
			continue
		}
		if path.Clean(p) != p || path.IsAbs(p) || p == ".." || strings.HasPrefix(p, "../") {
			return nil, root, fmt.Errorf("staging: tree path %q is not canonical and relative", p)
		}
		if _, dup := byPath[p]; dup {
			return nil, root, fmt.Errorf("staging: tree path %q appears twice", p)
		}
		switch n.Type {
		case chunkstore.NodeDir, chunkstore.NodeSymlink:
		case chunkstore.NodeFile:
			var sum int64
			for _, c := range n.Chunks {
				sum += int64(c.Len)
			}
			if sum != n.Size {
				return nil, root, fmt.Errorf("staging: tree file %q: size %d, chunks hold %d", p, n.Size, sum)
			}
		default:
			return nil, root, fmt.Errorf("staging: tree path %q has unknown type %d", p, n.Type)
		}
		byPath[p] = n
	}
	for p := range byPath {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			parent, ok := byPath[d]
			if !ok {
				byPath[d] = chunkstore.Node{Path: d, Type: chunkstore.NodeDir, Mode: 0o700, MTime: root.MTime}
				continue
			}
			if parent.Type != chunkstore.NodeDir {
				return nil, root, fmt.Errorf("staging: tree path %q is inside non-directory %q", p, d)
			}
		}
	}
	plan := make([]chunkstore.Node, 0, len(byPath))
	for _, n := range byPath {
		plan = append(plan, n)
	}
	// A parent's path is a prefix of its children's, so it sorts first.
	sort.Slice(plan, func(i, j int) bool { return plan[i].Path < plan[j].Path })
	return plan, root, nil
}

func (sys *filesys) allocIno() uint64 {
	sys.mu.Lock()
	defer sys.mu.Unlock()
	sys.nextIno++
	return sys.nextIno
}

// newNode makes the node of a tree entry, owned by the mount's owner.
func (sys *filesys) newNode(n chunkstore.Node) *node {
	mt := time.Unix(0, n.MTime)
	nd := &node{
		sys: sys, typ: n.Type, perm: n.Mode & 0o7777,
		uid: sys.uid, gid: sys.gid,
		atime: mt, mtime: mt, ctime: mt,
		target: n.Target,
	}
	if n.Path == "" || n.Path == "." {
		nd.ino = 1
	} else {
		nd.ino = sys.allocIno()
	}
	if n.Type == chunkstore.NodeFile {
		sys.addFile(nd, n.Chunks)
		nd.relPage = sys.dropHints && relMainFork(n.Path)
	}
	return nd
}

// newLocal makes a node that a caller creates through the mount.
func (sys *filesys) newLocal(ctx context.Context, typ chunkstore.NodeType, perm uint32) *node {
	now := time.Now()
	nd := &node{
		sys: sys, ino: sys.allocIno(), typ: typ, perm: perm & 0o7777,
		uid: sys.uid, gid: sys.gid,
		atime: now, mtime: now, ctime: now,
	}
	if c, ok := fuse.FromContext(ctx); ok {
		nd.uid, nd.gid = c.Uid, c.Gid
	}
	if typ == chunkstore.NodeFile {
		sys.addFile(nd, nil)
	}
	return nd
}

func (sys *filesys) addFile(nd *node, chunks []chunkstore.ChunkRef) {
	nd.data = newFileData(chunks, filepath.Join(sys.cowDir, strconv.FormatUint(nd.ino, 10)))
	sys.mu.Lock()
	sys.files = append(sys.files, nd)
	sys.mu.Unlock()
}

// close stops background fetches and closes every CoW file.
func (sys *filesys) close() error {
	sys.cancel()
	sys.wg.Wait()
	sys.mu.Lock()
	files := sys.files
	sys.files = nil
	sys.mu.Unlock()
	var errs []error
	for _, f := range files {
		f.mu.Lock()
		if err := f.data.close(); err != nil {
			errs = append(errs, err)
		}
		f.mu.Unlock()
	}
	return errors.Join(errs...)
}

// chunkError is a failure to fetch an original chunk.
type chunkError struct {
	ID  chunk.ID
	Err error
}

func (e *chunkError) Error() string { return fmt.Sprintf("chunk %s: %v", e.ID, e.Err) }
func (e *chunkError) Unwrap() error { return e.Err }

func (sys *filesys) fetch(c chunkstore.ChunkRef) chunkFetch {
	return func(ctx context.Context) ([]byte, *[]byte, error) {
		bp := sys.cache.bufs.get(int(c.Len) + chunk.DecodeSlack)
		data, err := sys.chunks.Get(ctx, c.ID, (*bp)[:0])
		if err == nil {
			err = checkChunk(c, data)
		}
		if err != nil {
			sys.cache.bufs.put(bp)
			return nil, nil, err
		}
		if len(data) == 0 || &data[0] != &(*bp)[:1][0] {
			sys.cache.bufs.put(bp) // Get appended elsewhere: data is not ours to pool
			bp = nil
		}
		return data, bp, nil
	}
}

// pin returns an original chunk for a reader or writer, which calls
// release when done with it.
func (sys *filesys) pin(ctx context.Context, c chunkstore.ChunkRef) ([]byte, func(), error) {
	e, err := sys.cache.get(ctx, sys.bg, c.ID, sys.fetch(c))
	if err != nil {
		return nil, nil, &chunkError{ID: c.ID, Err: err}
	}
	return e.data, func() { sys.cache.release(e) }, nil
}

// prefetch fetches c into the cache in the background unless it is there,
// or too many prefetches are in flight already.
func (sys *filesys) prefetch(c chunkstore.ChunkRef) {
	if sys.cache.has(c.ID) {
		return
	}
	select {
	case sys.sem <- struct{}{}:
	default:
		return
	}
	sys.wg.Go(func() {
		defer func() { <-sys.sem }()
		if e, err := sys.cache.get(sys.bg, sys.bg, c.ID, sys.fetch(c)); err == nil {
			sys.cache.release(e)
		}
	})
}

// errno maps an error of a file operation to what the caller sees, and logs
// failed chunks by name.
func (n *node) errno(op string, err error) syscall.Errno {
	if ce, ok := errors.AsType[*chunkError](err); ok {
		if errors.Is(err, context.Canceled) && n.sys.bg.Err() == nil {
			return syscall.EINTR
		}
		n.sys.log.Error("staging: reading chunk failed", "chunk", ce.ID.String(), "path", n.Path(nil), "op", op, "err", ce.Err)
		n.sys.readFailed(ce.ID, n.Path(nil), ce.Err)
		return syscall.EIO
	}
	n.sys.log.Error("staging: file operation failed", "path", n.Path(nil), "op", op, "err", err)
	if e := fs.ToErrno(err); e != 0 && e != syscall.ENOSYS {
		return e
	}
	return syscall.EIO
}

// OnAdd builds the restore point's tree under the root.
func (n *node) OnAdd(ctx context.Context) {
	if n.plan == nil {
		return
	}
	dirs := map[string]*fs.Inode{".": &n.Inode}
	for _, e := range n.plan {
		child := n.sys.newNode(e)
		ino := n.NewPersistentInode(ctx, child, fs.StableAttr{Mode: typeBits(e.Type), Ino: child.ino})
		dirs[path.Dir(e.Path)].AddChild(path.Base(e.Path), ino, false)
		if e.Type == chunkstore.NodeDir {
			dirs[e.Path] = ino
		}
	}
	n.plan = nil
}

func typeBits(t chunkstore.NodeType) uint32 {
	switch t {
	case chunkstore.NodeDir:
		return syscall.S_IFDIR
	case chunkstore.NodeSymlink:
		return syscall.S_IFLNK
	default:
		return syscall.S_IFREG
	}
}

// fill sets a from n; n.mu must be held.
func (n *node) fill(a *fuse.Attr) {
	a.Ino = n.ino
	a.Mode = typeBits(n.typ) | n.perm
	a.Uid, a.Gid = n.uid, n.gid
	a.Nlink = 1
	switch n.typ {
	case chunkstore.NodeDir:
		a.Nlink = 2
		a.Size = 4096
	case chunkstore.NodeSymlink:
		a.Size = uint64(len(n.target))
	case chunkstore.NodeFile:
		a.Size = uint64(n.data.size)
	}
	a.Blocks = (a.Size + 511) / 512
	a.Blksize = 128 << 10
	a.SetTimes(&n.atime, &n.mtime, &n.ctime)
}

func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.mu.RLock()
	defer n.mu.RUnlock()
	n.fill(&out.Attr)
	return 0
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now()
	if sz, ok := in.GetSize(); ok {
		if n.typ != chunkstore.NodeFile {
			return syscall.EISDIR
		}
		if err := n.data.truncate(int64(sz)); err != nil {
			return n.errno("truncate", err)
		}
		n.mtime = now
	}
	if m, ok := in.GetMode(); ok {
		n.perm = m & 0o7777
	}
	if u, ok := in.GetUID(); ok {
		n.uid = u
	}
	if g, ok := in.GetGID(); ok {
		n.gid = g
	}
	if t, ok := in.GetATime(); ok {
		n.atime = t
	}
	if t, ok := in.GetMTime(); ok {
		n.mtime = t
	}
	n.ctime = now
	n.fill(&out.Attr)
	return 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.typ == chunkstore.NodeFile && flags&syscall.O_TRUNC != 0 {
		n.mu.Lock()
		defer n.mu.Unlock()
		if err := n.data.truncate(0); err != nil {
			return nil, 0, n.errno("truncate", err)
		}
		n.mtime, n.ctime = time.Now(), time.Now()
	}
	// The mount is the only writer, so the kernel's page cache stays valid.
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *node) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if n.typ != chunkstore.NodeFile {
		return nil, syscall.EISDIR
	}
	n.mu.RLock()
	n.readahead(off, int64(len(dest)))
	k, err := n.data.readAt(ctx, n.sys, dest, off)
	n.mu.RUnlock()
	if err != nil {
		return nil, n.errno("read", err)
	}
	if n.sys.rtt != nil {
		n.sys.rate.add(n.sys.clock(), int64(k))
	}
	return fuse.ReadResultData(dest[:k]), 0
}

// seqWindow is how far from the end of the previous read a read may start
// and still count as sequential: the kernel's own readahead issues requests
// concurrently, so they arrive slightly out of order.
const seqWindow = 2 << 20

// readahead starts fetching, in the background, the chunks of a read past
// its first one (so that a large read fetches them in parallel) and, when
// reads are sequential, the chunks after it: sys.readahead of them, or over
// a LatencyReader as many as cover RTT × rate if that is more. n.mu must be
// held.
func (n *node) readahead(off, size int64) {
	prev := n.nextRead.Swap(off + size)
	d := n.data
	end := min(off+size, d.size, d.limit)
	if off+1 >= end {
		return
	}
	first := d.chunkAt(off) + 1
	last := d.chunkAt(end - 1)
	if seq := off >= prev-seqWindow && off <= prev+seqWindow; seq && n.sys.readahead > 0 {
		upTo := d.offs[last+1]
		if n.sys.rtt != nil {
			upTo += aheadBytes(n.sys.rtt(), n.sys.rate.get(), n.sys.maxAhead)
		}
		last += n.sys.readahead
		for last+1 < len(d.chunks) && d.offs[last+1] < upTo {
			last++
		}
	}
	for i := first; i <= last && i < len(d.chunks) && d.offs[i] < d.limit; i++ {
		if !d.isLocal(i) {
			n.sys.prefetch(d.chunks[i])
		}
	}
}

func (n *node) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if n.typ != chunkstore.NodeFile {
		return 0, syscall.EISDIR
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	drop := false
	if n.relPage {
		var err error
		if drop, err = n.data.hintOnlyWrite(ctx, n.sys, data, off); err != nil {
			return 0, n.errno("write", err)
		}
	}
	if drop {
		n.sys.hintWrites.Add(1)
		n.sys.hintBytes.Add(int64(len(data)))
	} else if err := n.data.writeAt(ctx, n.sys, data, off); err != nil {
		return 0, n.errno("write", err)
	}
	n.mtime = time.Now()
	n.ctime = n.mtime
	return uint32(len(data)), 0
}

// Fsync syncs a file's CoW file. Directories have nothing to sync: their
// entries live in memory for the life of the mount.
func (n *node) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if n.typ != chunkstore.NodeFile {
		return 0
	}
	n.mu.RLock()
	defer n.mu.RUnlock()
	if err := n.data.sync(); err != nil {
		return n.errno("fsync", err)
	}
	return 0
}

func (n *node) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno { return 0 }

// Allocate supports plain fallocate (mode 0), which only needs to extend the
// file: the CoW file is sparse anyway.
func (n *node) Allocate(ctx context.Context, f fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	if n.typ != chunkstore.NodeFile {
		return syscall.ENODEV
	}
	if mode != 0 {
		return syscall.EOPNOTSUPP
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if end := int64(off + size); end > n.data.size {
		if err := n.data.truncate(end); err != nil {
			return n.errno("fallocate", err)
		}
		n.ctime = time.Now()
	}
	return 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if n.typ != chunkstore.NodeSymlink {
		return nil, syscall.EINVAL
	}
	n.mu.RLock()
	defer n.mu.RUnlock()
	return []byte(n.target), 0
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, fs.ENOATTR
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return 0, 0
}

func (n *node) Opendir(ctx context.Context) syscall.Errno { return 0 }

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	children := n.Children()
	entries := make([]fuse.DirEntry, 0, len(children))
	for name, ch := range children {
		st := ch.StableAttr()
		entries = append(entries, fuse.DirEntry{Name: name, Mode: st.Mode, Ino: st.Ino})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	return fs.NewListDirStream(entries), 0
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch := n.GetChild(name)
	if ch == nil {
		return nil, syscall.ENOENT
	}
	c := ch.Operations().(*node)
	c.mu.RLock()
	c.fill(&out.Attr)
	c.mu.RUnlock()
	return ch, 0
}

// touch records a change of a directory's entries.
func (n *node) touch() {
	n.mu.Lock()
	n.mtime = time.Now()
	n.ctime = n.mtime
	n.mu.Unlock()
}

// add makes child an entry of n and fills out.
func (n *node) add(ctx context.Context, name string, child *node, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if n.GetChild(name) != nil {
		return nil, syscall.EEXIST
	}
	ino := n.NewPersistentInode(ctx, child, fs.StableAttr{Mode: typeBits(child.typ), Ino: child.ino})
	child.mu.RLock()
	child.fill(&out.Attr)
	child.mu.RUnlock()
	n.touch()
	return ino, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return n.add(ctx, name, n.sys.newLocal(ctx, chunkstore.NodeDir, mode), out)
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	ino, errno := n.add(ctx, name, n.sys.newLocal(ctx, chunkstore.NodeFile, mode), out)
	return ino, nil, fuse.FOPEN_KEEP_CACHE, errno
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	child := n.sys.newLocal(ctx, chunkstore.NodeSymlink, 0o777)
	child.target = target
	return n.add(ctx, name, child, out)
}

// forget drops a file that no name refers to any more. Its CoW file loses
// its name but stays open, so open handles keep reading it.
func (n *node) forget() {
	if n.typ != chunkstore.NodeFile {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.data.discard(); err != nil {
		n.sys.log.Warn("staging: removing CoW file", "err", err)
	}
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	ch := n.GetChild(name)
	if ch == nil {
		return syscall.ENOENT
	}
	if ch.IsDir() {
		return syscall.EISDIR
	}
	ch.Operations().(*node).forget()
	n.touch()
	return 0
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	ch := n.GetChild(name)
	if ch == nil {
		return syscall.ENOENT
	}
	if !ch.IsDir() {
		return syscall.ENOTDIR
	}
	if len(ch.Children()) > 0 {
		return syscall.ENOTEMPTY
	}
	n.touch()
	return 0
}

const renameNoReplace = 0x1

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	src := n.GetChild(name)
	if src == nil {
		return syscall.ENOENT
	}
	np := newParent.EmbeddedInode()
	dst := np.GetChild(newName)
	switch {
	case flags&fs.RENAME_EXCHANGE != 0:
		if dst == nil {
			return syscall.ENOENT
		}
	case dst == src:
		return 0
	case dst != nil:
		if flags&renameNoReplace != 0 {
			return syscall.EEXIST
		}
		switch {
		case src.IsDir() && !dst.IsDir():
			return syscall.ENOTDIR
		case !src.IsDir() && dst.IsDir():
			return syscall.EISDIR
		case dst.IsDir() && len(dst.Children()) > 0:
			return syscall.ENOTEMPTY
		}
		dst.Operations().(*node).forget()
	}
	n.touch()
	if p := np.Operations().(*node); p != n {
		p.touch()
	}
	return 0
}

// Statfs reports the space of the CoW layer, where writes go.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var st syscall.Statfs_t
	if err := syscall.Statfs(n.sys.cowDir, &st); err != nil {
		return fs.ToErrno(err)
	}
	out.FromStatfsT(&st)
	return 0
}
