package staging

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/fusefd"
)

// ChunkReader is where a mount fetches the restore point's chunks.
// chunkstore.Reader satisfies it. Get must be safe for concurrent use and
// must verify what it returns; the mount does not modify the result.
type ChunkReader interface {
	Get(ctx context.Context, id chunk.ID, dst []byte) ([]byte, error)
}

var _ ChunkReader = chunkstore.Reader(nil)

// MountOptions configure Mount. CowDir is required; the rest work at their
// zero value.
type MountOptions struct {
	// Owner is the OS user that every file appears to belong to (default
	// "postgres"): PostgreSQL refuses a data directory it does not own.
	Owner string
	// CowDir holds the copy-on-write layer: one sparse file per changed
	// file. It must be absent or empty; the layer lives as long as the
	// mount and is not reopened by a later one.
	CowDir string
	// AllowOther lets users other than the mounting one use the mount;
	// nil means true.
	AllowOther *bool
	// Log receives chunk read failures; nil means silent.
	Log *slog.Logger
	// CacheBytes bounds the cache of decoded chunks (default 32 MiB).
	CacheBytes int64
	// Readahead is how many chunks past a sequential read are fetched in
	// the background (default 3; negative turns readahead off). Over a
	// LatencyReader it is the least: the mount reads further ahead by
	// round trip × rate, up to MaxReadaheadBytes.
	Readahead int
	// MaxReadaheadBytes bounds how far ahead of a sequential reader a
	// mount over a LatencyReader reads (default a quarter of CacheBytes:
	// what is read ahead waits in the cache, which other readers share).
	MaxReadaheadBytes int64
	// DropHintWrites drops a write of one page (or of the pieces the
	// kernel splits it into) of a relation's main fork that changes
	// nothing but hint bits of a heap page still as the restore point
	// holds it (PostgreSQL sets them again when it next reads the page),
	// instead of copying its chunk into the CoW layer: see hintbits.go.
	// Only for a throwaway instance: the page in the file keeps its old
	// hints. KeepHintWritesEnv=1 in the environment turns it off.
	DropHintWrites bool

	clock func() time.Time // tests' clock for the read rate; nil: time.Now
}

// DefaultCacheBytes is the default size of the decoded chunk cache.
//
// The kernel's page cache keeps what the mount served, so this cache only
// needs to hold chunks between the FUSE reads that share them and the
// chunks read ahead. More costs a page fault per 4 KiB the first time it
// fills: a 256 MiB cache did so for the first 256 MiB of every cold read.
const DefaultCacheBytes = 32 << 20

func (o MountOptions) withDefaults() MountOptions {
	if o.Owner == "" {
		o.Owner = "postgres"
	}
	if o.AllowOther == nil {
		t := true
		o.AllowOther = &t
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = DefaultCacheBytes
	}
	if o.Readahead == 0 {
		o.Readahead = 3
	}
	if o.MaxReadaheadBytes <= 0 {
		o.MaxReadaheadBytes = o.CacheBytes / 4
	}
	if o.clock == nil {
		o.clock = time.Now
	}
	if os.Getenv(KeepHintWritesEnv) == "1" {
		o.DropHintWrites = false
	}
	return o
}

// Validate reports options that cannot work.
func (o MountOptions) Validate() error {
	if o.CowDir == "" {
		return errors.New("staging: MountOptions.CowDir is required")
	}
	return nil
}

// maxPrefetch bounds the background chunk fetches of one mount.
const maxPrefetch = 16

// Mounted is a mounted restore point.
type Mounted struct {
	dir    string
	server *fuse.Server
	sys    *filesys
	root   *node

	once sync.Once
	err  error
}

// Mount serves tree read-only from chunks at mountpoint, with writes going to
// a copy-on-write layer in o.CowDir. ctx bounds the mount call itself; the
// mount lasts until Unmount. tree is a restore point's tree as
// chunkstore.Repo.Tree returns it; an entry with path "" or "." sets the
// root directory's mode and time. A stale mount left at mountpoint by a
// crashed mount is detached first (see CleanStaleMount); a running one makes
// Mount fail with ErrMountInUse.
func Mount(ctx context.Context, mountpoint string, tree []chunkstore.Node, chunks ChunkReader, o MountOptions) (*Mounted, error) {
	o = o.withDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	uid, gid, err := lookupOwner(o.Owner)
	if err != nil {
		return nil, err
	}
	// A mount killed earlier leaves a dead FUSE mount that fails every
	// access with ENOTCONN; mounting over it would stack on a broken path.
	cleaned, err := CleanStaleMount(mountpoint)
	if err != nil {
		return nil, err
	}
	if cleaned {
		o.Log.Warn("staging: detached a stale mount left by a crashed mount", "mountpoint", mountpoint)
	}
	if err := prepareCowDir(o.CowDir); err != nil {
		return nil, err
	}
	plan, rootNode, err := planTree(tree)
	if err != nil {
		return nil, err
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	sys := &filesys{
		chunks:    chunks,
		log:       o.Log,
		cowDir:    o.CowDir,
		uid:       uid,
		gid:       gid,
		readahead: max(o.Readahead, 0),
		dropHints: o.DropHintWrites,
		bg:        bg,
		cancel:    cancel,
		sem:       make(chan struct{}, maxPrefetch),
		nextIno:   1,
	}
	if lr, ok := chunks.(LatencyReader); ok && sys.readahead > 0 {
		sys.rtt = lr.RTT
		sys.clock = o.clock
		sys.maxAhead = o.MaxReadaheadBytes
		sys.sem = make(chan struct{}, latencyPrefetch(sys.maxAhead))
	}
	sys.cache = newChunkCache(o.CacheBytes, &sys.wg)
	root := sys.newNode(rootNode)
	root.perm = 0o700
	root.plan = plan

	timeout := time.Second
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			DirectMount:  true,
			AllowOther:   *o.AllowOther,
			FsName:       "pgporter",
			Name:         "pgporter",
			MaxWrite:     1 << 20,
			MaxReadAhead: 1 << 20,
			// Reads are served from memory: splicing them copies into a
			// pipe first, and fails (logging each time) for a 1 MiB read,
			// which with its header does not fit the default largest pipe.
			DisableSplice: true,
			// noexec: nothing of a backup is executed or mapped as code
			// (dlopen of a library in the data directory fails), whatever
			// its settings or catalog name.
			Options: []string{"default_permissions", "noexec", "nosuid", "nodev"},
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		RootStableAttr:  &fs.StableAttr{Mode: fuse.S_IFDIR, Ino: 1},
	}
	// go-fuse's direct mount opens /dev/fuse without close-on-exec: every
	// process started afterwards (postgres, pg_dump) would hold the FUSE
	// connection open, so that if this process dies, their requests wait
	// forever instead of failing. Holding ForkLock keeps any fork out of the
	// window until the flag is set.
	// (Without root the mount goes through fusermount, which execs and
	// returns a descriptor go-fuse does flag; the lock would deadlock it.)
	direct := os.Geteuid() == 0
	if direct {
		opts.MountOptions.DirectMountStrict = true
		syscall.ForkLock.Lock()
	}
	server, err := fs.Mount(mountpoint, root, opts)
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
		cancel()
		return nil, fmt.Errorf("staging: mounting %s: %w", mountpoint, err)
	}
	if err := setReadahead(mountpoint, mountReadahead); err != nil {
		o.Log.Debug("staging: kernel readahead of the mount left at its default", "mountpoint", mountpoint, "err", err)
	}
	return &Mounted{dir: mountpoint, server: server, sys: sys, root: root}, nil
}

// mountReadahead is the kernel's readahead on a mount. The kernel caps a
// FUSE mount's at its default (128 KiB), whatever the mount asks, so that
// a sequential read arrives as 128 KiB requests; with 2 MiB it arrives as
// 1 MiB requests (MaxWrite), two in flight, which halved the CPU time per
// byte of a cold read (BenchmarkMountColdRead).
const mountReadahead = 2 << 20

// setReadahead sets the kernel's readahead of the filesystem mounted at dir,
// through its backing device's read_ahead_kb in sysfs (root only).
func setReadahead(dir string, bytes int) error {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(strconv.Itoa(bytes>>10)), 0)
}

// Dir returns the mountpoint.
func (m *Mounted) Dir() string { return m.dir }

// FileSize returns the current size of the regular file at rel, a slash
// path relative to the mount's root, as the mount would report it
// (copy-on-write changes included), from its own tree: no FUSE request, no
// lookup through the kernel. It reports false if there is no regular file
// at rel; symbolic links are not followed.
func (m *Mounted) FileSize(rel string) (int64, bool) {
	in := &m.root.Inode
	for name := range strings.SplitSeq(rel, "/") {
		if name == "" || name == "." {
			continue
		}
		if name == ".." {
			return 0, false
		}
		if in = in.GetChild(name); in == nil {
			return 0, false
		}
	}
	n, ok := in.Operations().(*node)
	if !ok {
		return 0, false
	}
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.typ != chunkstore.NodeFile || n.data == nil {
		return 0, false
	}
	return n.data.size, true
}

// MountStats count what a mount did.
type MountStats struct {
	HintWritesDropped int64 // writes (pages or pieces of one) dropped as hint bits only (DropHintWrites)
	HintBytesDropped  int64 // their bytes
}

// Stats returns the mount's counts so far.
func (m *Mounted) Stats() MountStats {
	return MountStats{HintWritesDropped: m.sys.hintWrites.Load(), HintBytesDropped: m.sys.hintBytes.Load()}
}

// ReadErr returns a *ReadError when any read or write through the mount
// has failed so far for want of a good chunk, else nil. Whatever a process
// made of the mount's content since it was mounted (an instance's
// recovery, a dump) is then not to be trusted, even if the process did
// not fail.
func (m *Mounted) ReadErr() error { return m.sys.readErr() }

// Unmount unmounts the filesystem, stops background fetches and closes the
// CoW files. It fails (and may be called again) while the mount is busy.
func (m *Mounted) Unmount() error {
	if err := m.server.Unmount(); err != nil {
		return fmt.Errorf("staging: unmounting %s: %w", m.dir, err)
	}
	m.server.Wait()
	m.once.Do(func() { m.err = m.sys.close() })
	return m.err
}

// Detach lazily detaches a mount that Unmount keeps finding busy: the mount
// leaves the filesystem tree at once, and m keeps serving the processes that
// still use it until this process exits, when they get ENOTCONN. It is the
// last call on m, for a caller about to exit.
func (m *Mounted) Detach() error {
	if err := detach(m.dir); err != nil {
		return fmt.Errorf("staging: detaching %s: %w", m.dir, err)
	}
	return nil
}

// Wait blocks until the filesystem is unmounted, by Unmount or from outside.
func (m *Mounted) Wait() { m.server.Wait() }

func lookupOwner(name string) (uid, gid uint32, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, fmt.Errorf("staging: looking up owner: %w", err)
	}
	id, err1 := strconv.ParseUint(u.Uid, 10, 32)
	g, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("staging: owner %s: %w", name, err)
	}
	return uint32(id), uint32(g), nil
}

func prepareCowDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("staging: creating CoW directory: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("staging: opening CoW directory: %w", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("staging: reading CoW directory: %w", err)
	}
	if len(names) > 0 {
		return fmt.Errorf("staging: CoW directory %s is not empty", dir)
	}
	return nil
}

// chunkCache is an LRU cache of decoded chunks that also merges concurrent
// fetches of one chunk. Its buffers come from bufs and go back there
// when an entry is evicted and nobody holds it any more: a cold read of a
// restore point decodes its whole size, and fresh memory for each chunk cost
// more in page faults than the decoding.
type chunkCache struct {
	max int64
	wg  *sync.WaitGroup // owns the fetch goroutines

	bufs *bufPool // where entries' buffers come from and go back to

	mu      sync.Mutex // guards entries, lru, used, and every entry's refs, gone, elem, buf
	entries map[chunk.ID]*cacheEntry
	lru     list.List // of *cacheEntry, most recent first; only loaded entries
	used    int64
}

type cacheEntry struct {
	id   chunk.ID
	elem *list.Element // nil while loading and once gone
	done chan struct{} // closed when data or err is set
	data []byte
	err  error
	buf  *[]byte // data's pooled backing array, or nil
	refs int     // callers holding data (pinned by get, unpinned by release)
	gone bool    // out of entries (evicted or failed): buf is freed at refs 0
}

// chunkFetch fetches a chunk. It returns its content and, when the
// content's backing array came from the cache's bufs, that buffer.
type chunkFetch func(context.Context) ([]byte, *[]byte, error)

func newChunkCache(maxBytes int64, wg *sync.WaitGroup) *chunkCache {
	return &chunkCache{max: maxBytes, wg: wg, bufs: newBufPool(maxBytes), entries: make(map[chunk.ID]*cacheEntry)}
}

// has reports whether id is cached or being fetched.
func (c *chunkCache) has(id chunk.ID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[id]
	return ok
}

// get returns the entry of id, calling fetch (with fctx, which outlives ctx)
// when it is neither cached nor being fetched. The entry's data stays valid
// until the caller passes it to release, which it must do exactly once.
// Failures are not cached.
func (c *chunkCache) get(ctx, fctx context.Context, id chunk.ID, fetch chunkFetch) (*cacheEntry, error) {
	c.mu.Lock()
	e, ok := c.entries[id]
	if ok {
		if e.elem != nil {
			c.lru.MoveToFront(e.elem)
		}
	} else {
		e = &cacheEntry{id: id, done: make(chan struct{})}
		c.entries[id] = e
		c.wg.Go(func() { c.load(fctx, e, fetch) })
	}
	e.refs++ // before waiting: eviction must not free what a waiter gets
	c.mu.Unlock()
	select {
	case <-e.done:
		if e.err != nil {
			c.release(e)
			return nil, e.err
		}
		return e, nil
	case <-ctx.Done():
		c.release(e)
		return nil, ctx.Err()
	}
}

// release unpins an entry that get returned.
func (c *chunkCache) release(e *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.refs--
	c.freeLocked(e)
}

// freeLocked returns a gone entry's buffer to the pool once nobody holds it.
func (c *chunkCache) freeLocked(e *cacheEntry) {
	if e.gone && e.refs == 0 && e.buf != nil {
		c.bufs.put(e.buf)
		e.buf, e.data = nil, nil
	}
}

func (c *chunkCache) load(ctx context.Context, e *cacheEntry, fetch chunkFetch) {
	data, buf, err := fetch(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	e.data, e.buf, e.err = data, buf, err
	close(e.done)
	if err != nil {
		delete(c.entries, e.id)
		e.gone = true
		c.freeLocked(e)
		return
	}
	e.elem = c.lru.PushFront(e)
	c.used += int64(len(data))
	for c.used > c.max && c.lru.Len() > 1 {
		old := c.lru.Remove(c.lru.Back()).(*cacheEntry)
		delete(c.entries, old.id)
		c.used -= int64(len(old.data))
		old.elem, old.gone = nil, true
		c.freeLocked(old)
	}
}

// chunkBufSizes are the size classes of bufPool: four to a power of two,
// 4 KiB to MaxChunkCeil, so that a buffer wastes at most a fifth of itself.
var chunkBufSizes = func() []int {
	var s []int
	for k := 12; 1<<k < chunk.MaxChunkCeil+chunk.DecodeSlack; k++ {
		for q := 4; q < 8; q++ {
			s = append(s, q<<k/4)
		}
	}
	return append(s, chunk.MaxChunkCeil+chunk.DecodeSlack)
}()

// bufPool keeps chunk buffers for reuse. Unlike a sync.Pool it keeps them
// across garbage collections: a buffer that the GC frees and the runtime
// hands back to the OS costs its page faults again when it is reused. It
// holds at most max bytes.
type bufPool struct {
	max int64

	mu    sync.Mutex  // guards free, bytes
	free  [][]*[]byte // by size class
	bytes int64
}

func newBufPool(max int64) *bufPool {
	return &bufPool{max: max, free: make([][]*[]byte, len(chunkBufSizes))}
}

// get returns an empty buffer with room for n bytes.
func (p *bufPool) get(n int) *[]byte {
	i := sort.SearchInts(chunkBufSizes, n)
	if i == len(chunkBufSizes) {
		b := make([]byte, 0, n)
		return &b
	}
	p.mu.Lock()
	if k := len(p.free[i]); k > 0 {
		bp := p.free[i][k-1]
		p.free[i] = p.free[i][:k-1]
		p.bytes -= int64(cap(*bp))
		p.mu.Unlock()
		return bp
	}
	p.mu.Unlock()
	b := make([]byte, 0, chunkBufSizes[i])
	return &b
}

// put returns a buffer from get, unless the pool is full.
func (p *bufPool) put(bp *[]byte) {
	i := sort.SearchInts(chunkBufSizes, cap(*bp))
	if i == len(chunkBufSizes) || chunkBufSizes[i] != cap(*bp) {
		return
	}
	*bp = (*bp)[:0]
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bytes+int64(cap(*bp)) > p.max {
		return
	}
	p.free[i] = append(p.free[i], bp)
	p.bytes += int64(cap(*bp))
}
