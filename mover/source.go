package mover

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cockroachdb/pebble/v2"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/pebbledb"
	"github.com/pgporter/pgporter/protocol"
)

// srcFile is one regular file of a tree being sent, with its chunk list once
// it has been chunked.
type srcFile struct {
	Index uint32
	Path  string // canonical relative slash path; opened through source.root
	Mode  uint32
	Size  int64
	MTime int64 // unix nanoseconds
	Ino   uint64
	CTime int64 // unix nanoseconds: changes on every write, and cannot be set back
	// Chunks, Offsets, Hash and done are written by the chunking goroutine
	// under source.mu; Chunks and Offsets only grow.
	Chunks  []protocol.ChunkRef
	Offsets []int64 // Offsets[i] is where Chunks[i] starts
	Hash    [32]byte
	done    bool // every chunk is listed and Hash is set
	// growing: announced while its writer was still appending to it; Size,
	// MTime and CTime are set when it is done.
	growing bool
}

// ErrUnsupportedFile is matched by the refusal of a source that holds
// entries other than regular files and directories (SpecialFilesError).
var ErrUnsupportedFile = errors.New("mover: only regular files and directories can be sent")

// SkippedEntry is an entry of a source that is neither a regular file nor a
// directory: a symbolic link, a device, a FIFO or a socket.
type SkippedEntry struct {
	Path string `json:"path"` // relative to the source, slash-separated
	Kind string `json:"kind"` // "symlink", "device", "char-device", "fifo", "socket", "other"
}

// SpecialFilesError refuses a source that holds special entries, listing
// every one of them: SendOptions.SkipSpecial sends the rest instead.
type SpecialFilesError struct {
	Src     string
	Entries []SkippedEntry
}

func (e *SpecialFilesError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s holds %d entries that are not regular files or directories:", e.Src, len(e.Entries))
	for i, s := range e.Entries {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %s (%s)", s.Path, s.Kind)
	}
	return b.String()
}

func (e *SpecialFilesError) Unwrap() error { return ErrUnsupportedFile }

// entryKind names the type of a special entry.
func entryKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeCharDevice != 0:
		return "char-device"
	case m&fs.ModeDevice != 0:
		return "device"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "other"
}

func newSrcFile(rel string, fi os.FileInfo) *srcFile {
	f := &srcFile{Path: rel, Mode: uint32(fi.Mode().Perm()), Size: fi.Size(), MTime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		f.Ino, f.CTime = st.Ino, st.Ctim.Nano()
	}
	return f
}

// unixMode is fi's permission bits with setuid, setgid and sticky, as the
// wire carries them (a receiver masks them).
func unixMode(fi fs.FileInfo) uint32 {
	m := uint32(fi.Mode().Perm())
	if fi.Mode()&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	if fi.Mode()&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if fi.Mode()&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	return m
}

// srcTree is what scanTree found in a source directory.
type srcTree struct {
	files    []*srcFile     // regular files, in path order
	dirs     []protocol.Dir // every directory, "." (the source) first, in path order
	dirTimes []int64        // dirs' modification times, Unix ns (none for a single file)
	special  []SkippedEntry // everything else, in path order; never followed
}

// scanTree lists the regular files and directories under src in path
// order, and the special entries (links, devices, FIFOs, sockets), which
// are never followed: a link could send data from outside the tree.
func scanTree(src string) (*srcTree, error) {
	t := &srcTree{}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel != "." {
			if err := protocol.ValidPath(rel); err != nil {
				return fmt.Errorf("source path %q: %w", rel, err)
			}
		}
		switch {
		case d.IsDir():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			t.dirs = append(t.dirs, protocol.Dir{Path: rel, Mode: unixMode(fi)})
			t.dirTimes = append(t.dirTimes, fi.ModTime().UnixNano())
			return nil
		case !d.Type().IsRegular():
			t.special = append(t.special, SkippedEntry{Path: rel, Kind: entryKind(d.Type())})
			return nil
		case rel == ManifestName:
			// The receiver writes its own manifest there; a stale one from an
			// earlier transfer (sending a received tree on) is not data.
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		t.files = append(t.files, newSrcFile(rel, fi))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scanning %s: %w", src, err)
	}
	sort.Slice(t.files, func(i, j int) bool { return t.files[i].Path < t.files[j].Path })
	for i, f := range t.files {
		f.Index = uint32(i)
	}
	return t, nil
}

// scanFile makes the tree of a single file sent on its own: the file under
// its own name in a Dest directory of mode 0755.
func scanFile(src string, fi fs.FileInfo) (*srcTree, error) {
	name := fi.Name()
	if err := protocol.ValidPath(name); err != nil {
		return nil, fmt.Errorf("source file %q: %w", name, err)
	}
	if name == ManifestName {
		return nil, fmt.Errorf("%s: a file named %s cannot be sent on its own: the receiver writes its manifest under that name", src, ManifestName)
	}
	f := newSrcFile(name, fi)
	return &srcTree{files: []*srcFile{f}, dirs: []protocol.Dir{{Path: ".", Mode: 0o755}}}, nil
}

// chunkCache remembers the chunk list of each source file of a transfer in
// the sender's pebble store, so that a rerun of the same send does not
// re-read and re-hash files that did not change (same size, mtime, inode
// and ctime: an edit that restores size and mtime still moves ctime).
type chunkCache struct {
	db  *pebbledb.DB
	tid string
}

func (c *chunkCache) key(path string) []byte { return []byte("s/" + c.tid + "/" + path) }

// cacheParams is what a cache record must be made with to be reused: the
// chunking parameters, and the meaning of its hash ("v3:", protocol 3's
// chunk-list hash; records without it hold a whole-file BLAKE3).
func cacheParams(p chunk.Params) string { return "v3:" + p.String() }

// cacheRecord: size, mtime, ino, ctime, hash, n, then n × (ID, len).
func encodeCached(f *srcFile, params string) []byte {
	b := make([]byte, 0, 64+len(params)+len(f.Chunks)*36)
	b = binary.AppendUvarint(b, uint64(len(params)))
	b = append(b, params...)
	b = binary.AppendUvarint(b, uint64(f.Size))
	b = binary.AppendVarint(b, f.MTime)
	b = binary.AppendUvarint(b, f.Ino)
	b = binary.AppendVarint(b, f.CTime)
	b = append(b, f.Hash[:]...)
	b = binary.AppendUvarint(b, uint64(len(f.Chunks)))
	for _, c := range f.Chunks {
		b = append(b, c.ID[:]...)
		b = binary.BigEndian.AppendUint32(b, c.Len)
	}
	return b
}

// decodeCached fills f's chunks from a record if it matches f's size, mtime,
// inode and the chunking parameters.
func decodeCached(b []byte, f *srcFile, params string) bool {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) || string(b[k:k+int(n)]) != params {
		return false
	}
	b = b[k+int(n):]
	size, k := binary.Uvarint(b)
	if k <= 0 || int64(size) != f.Size {
		return false
	}
	b = b[k:]
	mt, k := binary.Varint(b)
	if k <= 0 || mt != f.MTime {
		return false
	}
	b = b[k:]
	ino, k := binary.Uvarint(b)
	if k <= 0 || ino != f.Ino {
		return false
	}
	b = b[k:]
	ct, k := binary.Varint(b)
	if k <= 0 || ct != f.CTime || len(b) < k+32 {
		return false
	}
	b = b[k:]
	var h [32]byte
	copy(h[:], b)
	b = b[32:]
	cnt, k := binary.Uvarint(b)
	if k <= 0 || cnt > uint64(len(b)-k)/36 || uint64(len(b)-k) != cnt*36 {
		return false
	}
	b = b[k:]
	chunks := make([]protocol.ChunkRef, cnt)
	var total int64
	for i := range chunks {
		copy(chunks[i].ID[:], b)
		chunks[i].Len = binary.BigEndian.Uint32(b[32:])
		total += int64(chunks[i].Len)
		b = b[36:]
	}
	if total != f.Size {
		return false
	}
	f.Chunks, f.Hash = chunks, h
	f.setOffsets()
	return true
}

func (f *srcFile) setOffsets() {
	f.Offsets = make([]int64, len(f.Chunks))
	var off int64
	for i, c := range f.Chunks {
		f.Offsets[i] = off
		off += int64(c.Len)
	}
}

// chunkSink receives the chunks chunkFile and chunkGrowing cut, in order.
type chunkSink struct {
	// publish offers a batch of chunk refs; it may keep the slice.
	publish func([]protocol.ChunkRef)
	// keep, if not nil, is given each chunk's index in its file and its
	// bytes before the chunk is published (the read-ahead: the bytes stay
	// valid as long as the chunker's allocator keeps them).
	keep func(c int, data []byte)
	// room, if not nil, is called before the chunker takes a new buffer,
	// once every chunk cut so far is published: it waits for the read-ahead
	// to have room.
	room func()
}

// chunkBatcher cuts one file with a chunker and publishes its chunk refs to
// a sink in batches, so that they can be offered before the end of a large
// file is read.
type chunkBatcher struct {
	sink    chunkSink
	pending []protocol.ChunkRef
	n       int // chunks cut
}

const chunkBatch = 64 // about 4 MiB of data per publication

func (b *chunkBatcher) flush() {
	if len(b.pending) > 0 {
		b.sink.publish(b.pending)
		b.pending = make([]protocol.ChunkRef, 0, chunkBatch)
	}
}

// cut reads ch to its end, calling each with every chunk's ref, and returns
// the bytes cut. The last batch is left for the caller to flush once it has
// checked the file.
func (b *chunkBatcher) cut(ch *chunk.Chunker, path string, each func(protocol.ChunkRef)) (int64, error) {
	var total int64
	for {
		if b.sink.room != nil && ch.WillAlloc() {
			b.flush()
			b.sink.room()
		}
		c, err := ch.Next()
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("chunking %s: %w", path, err)
		}
		ref := protocol.ChunkRef{ID: chunk.Sum(c.Data), Len: uint32(len(c.Data))}
		each(ref)
		if b.sink.keep != nil {
			b.sink.keep(b.n, c.Data)
		}
		b.n++
		b.pending = append(b.pending, ref)
		total += int64(len(c.Data))
		if len(b.pending) == chunkBatch {
			b.flush()
		}
	}
}

// chunkFile reads f, cutting and hashing its chunks, which it gives to sink
// as it goes. A file that changes size while it is read is an error: the
// caller sends a consistent snapshot or nothing. It returns the file's
// chunk-list hash (chunk.FileListHash, protocol 3's FileEnd): each byte
// is hashed once, for its chunk's ID.
func chunkFile(ctx context.Context, root *os.Root, f *srcFile, ch *chunk.Chunker, sink chunkSink) ([32]byte, error) {
	var hash [32]byte
	fh, err := root.Open(filepath.FromSlash(f.Path))
	if err != nil {
		return hash, err
	}
	defer fh.Close()
	list := chunk.NewFileListHash(uint64(f.Size))
	ch.Reset(ctxReader{ctx, fh})
	b := &chunkBatcher{sink: sink}
	total, err := b.cut(ch, f.Path, func(ref protocol.ChunkRef) { list.Add(ref.ID, ref.Len) })
	if err != nil {
		return hash, err
	}
	if total != f.Size {
		return hash, fmt.Errorf("%s changed while it was read (%d bytes, expected %d)", f.Path, total, f.Size)
	}
	b.flush()
	return list.Sum(), nil
}

// chunkGrowing chunks a file its writer is still appending to (pg_dump -Fd
// only appends to a data file and closes it once). The chunker reads what is
// written and, at the written end, waits for the feed's next event (a write
// or the close): it cuts only with the bytes that decide each cut, so the
// cuts are those of the finished file. Chunks are published before each
// wait. A file that shrinks, or whose size at the end is not the bytes read,
// fails the send. It returns the file's state when done; its chunk-list
// hash needs the size first, so the caller computes it from the chunks
// published (keeping a second list here cost 36 bytes per chunk).
func chunkGrowing(ctx context.Context, root *os.Root, f *srcFile, ch *chunk.Chunker, feed *FileFeed, sink chunkSink) (os.FileInfo, error) {
	fh, err := root.Open(filepath.FromSlash(f.Path))
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b := &chunkBatcher{sink: sink}
	ch.Reset(&growingReader{ctx: ctx, fh: fh, path: f.Path, feed: feed, idle: b.flush})
	total, err := b.cut(ch, f.Path, func(protocol.ChunkRef) {})
	if err != nil {
		return nil, err
	}
	fi, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() != total {
		return nil, fmt.Errorf("%w: %s is %d bytes after its writer closed it, %d were read", errSourceChanged, f.Path, fi.Size(), total)
	}
	b.flush()
	return fi, nil
}

// growingReader reads a file being appended to from offset 0. At the written
// end it waits for the feed to report the file again (a write or its close);
// after the close, the end is EOF.
type growingReader struct {
	ctx  context.Context
	fh   *os.File
	off  int64
	path string
	feed *FileFeed
	idle func() // called before waiting
}

func (g *growingReader) Read(p []byte) (int, error) {
	for {
		// The state is taken before reading: a write after the read
		// closes this change channel, so no event is missed.
		change, done, err := g.feed.state(g.path)
		if err != nil {
			return 0, err
		}
		n, rerr := g.fh.ReadAt(p, g.off)
		g.off += int64(n)
		if n > 0 {
			return n, nil
		}
		if rerr != nil && rerr != io.EOF {
			return 0, rerr
		}
		fi, err := g.fh.Stat()
		if err != nil {
			return 0, err
		}
		if fi.Size() < g.off {
			return 0, fmt.Errorf("%w: %s shrank from at least %d to %d bytes while it was written", errSourceChanged, g.path, g.off, fi.Size())
		}
		if done {
			return 0, io.EOF
		}
		g.idle()
		select {
		case <-change:
		case <-g.ctx.Done():
			return 0, g.ctx.Err()
		}
	}
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// source is a tree being chunked in the background: files become available
// in index order, so the manifest can be sent while later files are still
// being hashed. Its files are opened through root, a descriptor of the
// source directory: a tree still being written may be renamed meanwhile.
// A growing source learns its files from a FileFeed as they are completed.
type source struct {
	root *os.Root
	feed *FileFeed  // of a growing source: wakes the chunking of growing files
	ra   *readAhead // if not nil, keeps the chunks cut for the data workers

	mu     sync.Mutex // guards files, listed, ready, err, and signals cond
	cond   *sync.Cond
	files  []*srcFile
	listed bool  // files is the whole tree
	ready  int   // files[:ready] have their chunk lists
	err    error // listing or chunking failed

	hashed atomic.Int64 // bytes read and hashed (files not found in the cache)
	bytes  atomic.Int64 // size of the files listed so far
}

func newSource(root *os.Root, files []*srcFile) *source {
	s := &source{root: root, files: files, listed: true}
	s.cond = sync.NewCond(&s.mu)
	for _, f := range files {
		s.bytes.Add(f.Size)
	}
	return s
}

// newGrowingSource returns a source whose files are added by follow.
func newGrowingSource(root *os.Root, feed *FileFeed) *source {
	s := &source{root: root, feed: feed}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// follow adds the files feed announces until it is closed, then marks the
// list complete (or failed with the feed's error).
func (s *source) follow(ctx context.Context, feed *FileFeed) {
	n := 0
	for {
		paths, closed, err := feed.next(ctx, n)
		for _, p := range paths {
			// Asked before the stat: a file closed by then has its final
			// size in it.
			_, done, _ := feed.state(p)
			f, ferr := s.stat(p)
			if ferr != nil {
				s.fail(ferr)
				return
			}
			if !done {
				f.growing, f.Size, f.MTime, f.Ino, f.CTime = true, 0, 0, 0, 0
			}
			s.bytes.Add(f.Size)
			s.mu.Lock()
			f.Index = uint32(len(s.files))
			s.files = append(s.files, f)
			s.cond.Broadcast()
			s.mu.Unlock()
		}
		n += len(paths)
		if err != nil {
			s.fail(err)
			return
		}
		if closed {
			s.mu.Lock()
			s.listed = true
			s.cond.Broadcast()
			s.mu.Unlock()
			return
		}
	}
}

// stat describes a file announced by the feed, with the checks scanTree
// makes.
func (s *source) stat(p string) (*srcFile, error) {
	if err := protocol.ValidPath(p); err != nil {
		return nil, fmt.Errorf("source path %q: %w", p, err)
	}
	fi, err := s.root.Lstat(filepath.FromSlash(p))
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is a %s", ErrUnsupportedFile, p, fi.Mode().Type())
	}
	return newSrcFile(p, fi), nil
}

func (s *source) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.cond.Broadcast()
	s.mu.Unlock()
}

// file returns file i, if it is listed yet.
func (s *source) file(i uint32) (*srcFile, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if int(i) >= len(s.files) {
		return nil, false
	}
	return s.files[i], true
}

// waitFile blocks until file i is listed (true) or the list is complete
// without it (false).
func (s *source) waitFile(ctx context.Context, i int) (*srcFile, bool, error) {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.files) <= i && !s.listed && s.err == nil && ctx.Err() == nil {
		s.cond.Wait()
	}
	switch {
	case len(s.files) > i:
		return s.files[i], true, nil
	case s.err != nil:
		return nil, false, s.err
	case s.listed:
		return nil, false, nil
	}
	return nil, false, ctx.Err()
}

// snapshot returns the files listed so far.
func (s *source) snapshot() []*srcFile {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.files)
}

// run chunks every file not already known from the cache. It returns when
// all are done or on the first error, which wait then reports.
func (s *source) run(ctx context.Context, cache *chunkCache, p chunk.Params) error {
	err := s.chunkAll(ctx, cache, p)
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	err = s.err
	if err == nil {
		s.ready = len(s.files)
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	return err
}

func (s *source) chunkAll(ctx context.Context, cache *chunkCache, p chunk.Params) error {
	ch, err := chunk.NewChunker(nil, p)
	if err != nil {
		return err
	}
	sinkFor := func(f *srcFile) chunkSink {
		return chunkSink{publish: func(refs []protocol.ChunkRef) { s.publish(f, refs) }}
	}
	if s.ra != nil {
		ch.SetAlloc(s.ra.alloc)
		sinkFor = func(f *srcFile) chunkSink {
			return chunkSink{
				publish: func(refs []protocol.ChunkRef) { s.publish(f, refs) },
				keep:    func(c int, data []byte) { s.ra.hold(f.Index, uint32(c), data) },
				room:    func() { s.ra.wait(ctx) },
			}
		}
	}
	ps := cacheParams(p)
	batch := cache.db.NewBatch()
	defer batch.Close()
	for i := 0; ; i++ {
		f, ok, err := s.waitFile(ctx, i)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if f.growing {
			fi, err := chunkGrowing(ctx, s.root, f, ch, s.feed, sinkFor(f))
			if err != nil {
				return err
			}
			s.mu.Lock()
			refs := f.Chunks // all published: read-only from here
			s.mu.Unlock()
			list := chunk.NewFileListHash(uint64(fi.Size()))
			for _, r := range refs {
				list.Add(r.ID, r.Len)
			}
			hash := list.Sum()
			s.hashed.Add(fi.Size())
			s.bytes.Add(fi.Size())
			s.mu.Lock()
			f.Size, f.MTime, f.Ino, f.CTime = fi.Size(), fi.ModTime().UnixNano(), 0, ctimeOf(fi)
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				f.Ino = st.Ino
			}
			f.Hash = hash
			f.done = true
			s.ready = i + 1
			s.cond.Broadcast()
			s.mu.Unlock()
			continue
		}
		v, ok, err := dbGet(cache.db, cache.key(f.Path))
		if err != nil {
			return err
		}
		cached := &srcFile{Size: f.Size, MTime: f.MTime, Ino: f.Ino, CTime: f.CTime}
		if ok && decodeCached(v, cached, ps) {
			s.mu.Lock()
			f.Chunks, f.Offsets, f.Hash = cached.Chunks, cached.Offsets, cached.Hash
		} else {
			hash, err := chunkFile(ctx, s.root, f, ch, sinkFor(f))
			if err != nil {
				return err
			}
			s.hashed.Add(f.Size)
			s.mu.Lock()
			f.Hash = hash
			if err := batch.Set(cache.key(f.Path), encodeCached(f, ps), nil); err != nil {
				s.mu.Unlock()
				return err
			}
		}
		f.done = true
		s.ready = i + 1
		s.cond.Broadcast()
		s.mu.Unlock()
		if batch.Len() > 4<<20 {
			if err := batch.Commit(pebble.NoSync); err != nil {
				return err
			}
			batch.Reset()
		}
	}
	return batch.Commit(pebble.NoSync)
}

// publish appends chunk refs to a file being chunked.
func (s *source) publish(f *srcFile, refs []protocol.ChunkRef) {
	s.mu.Lock()
	off := int64(0)
	if n := len(f.Chunks); n > 0 {
		off = f.Offsets[n-1] + int64(f.Chunks[n-1].Len)
	}
	for _, r := range refs {
		f.Chunks = append(f.Chunks, r)
		f.Offsets = append(f.Offsets, off)
		off += int64(r.Len)
	}
	s.cond.Broadcast()
	s.mu.Unlock()
}

// next blocks until file i lists more than have chunks or is complete, and
// returns the chunks past have (read-only), whether the file is complete,
// and then its hash.
func (s *source) next(ctx context.Context, i, have int) ([]protocol.ChunkRef, bool, [32]byte, error) {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.files[i]
	for len(f.Chunks) <= have && !f.done && s.err == nil && ctx.Err() == nil {
		s.cond.Wait()
	}
	switch {
	case len(f.Chunks) > have || f.done:
		return f.Chunks[have:len(f.Chunks):len(f.Chunks)], f.done, f.Hash, nil
	case s.err != nil:
		return nil, false, [32]byte{}, s.err
	}
	return nil, false, [32]byte{}, ctx.Err()
}

// waitsFile reports whether waitFile(i) would wait now.
func (s *source) waitsFile(i int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.files) <= i && !s.listed && s.err == nil
}

// waitsChunks reports whether next(i, have) would wait now; file i must be
// listed.
func (s *source) waitsChunks(i, have int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.files[i]
	return len(f.Chunks) <= have && !f.done && s.err == nil
}

// stateOf returns f's size, mtime and ctime (final once a growing file is
// done) and whether every chunk of f is listed.
func (s *source) stateOf(f *srcFile) (size, mtime, ctime int64, done bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return f.Size, f.MTime, f.CTime, f.done
}

// chunk returns chunk c of file i and its offset, if it is listed yet.
func (s *source) chunk(i, c uint32) (protocol.ChunkRef, int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if int(i) >= len(s.files) {
		return protocol.ChunkRef{}, 0, false
	}
	f := s.files[i]
	if int(c) >= len(f.Chunks) {
		return protocol.ChunkRef{}, 0, false
	}
	return f.Chunks[c], f.Offsets[c], true
}

// FileFeed announces the files of a tree that is still being written: the
// producer adds each file (a canonical relative slash path) once it is
// complete and will not change again, and closes the feed when the tree is
// complete, or with the error that ended it. A file may be announced earlier,
// while its writer still appends to it (AddGrowing, again on each write);
// Add then reports its close. A Send given a feed offers files as they are
// announced, and sends a growing file's chunks as they are written.
type FileFeed struct {
	mu     sync.Mutex // guards everything below
	paths  []string
	done   map[string]bool // paths announced complete (others are growing)
	closed bool
	err    error
	change chan struct{} // closed and replaced on every change
}

// NewFileFeed returns an open, empty feed.
func NewFileFeed() *FileFeed { return &FileFeed{done: map[string]bool{}, change: make(chan struct{})} }

// Add announces a complete file, or the close of a growing one. It never
// blocks; a second Add of a path is ignored.
func (f *FileFeed) Add(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.done[path] {
		return
	}
	if _, growing := f.done[path]; !growing {
		f.paths = append(f.paths, path)
	}
	f.done[path] = true
	f.changed()
}

// AddGrowing announces a file its writer is still appending to (only
// appending: a file that shrinks fails the send), or reports another write
// to it. It never blocks.
func (f *FileFeed) AddGrowing(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.done[path] {
		return
	}
	if _, ok := f.done[path]; !ok {
		f.paths = append(f.paths, path)
		f.done[path] = false
	}
	f.changed()
}

func (f *FileFeed) changed() {
	close(f.change)
	f.change = make(chan struct{})
}

// state reports whether path is complete (its close was reported, or the
// tree is), the error that ended the feed, and a channel closed at the
// feed's next change.
func (f *FileFeed) state(path string) (<-chan struct{}, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed && f.err != nil {
		return f.change, false, f.err
	}
	return f.change, f.done[path] || f.closed, nil
}

// Close ends the feed: err nil means the tree is complete.
func (f *FileFeed) Close(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	f.closed, f.err = true, err
	close(f.change)
}

// next returns the paths past from, waiting for at least one, or for the
// feed to close.
func (f *FileFeed) next(ctx context.Context, from int) ([]string, bool, error) {
	for {
		f.mu.Lock()
		paths, closed, err, ch := f.paths[from:], f.closed, f.err, f.change
		f.mu.Unlock()
		if len(paths) > 0 || closed {
			return slices.Clone(paths), closed, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}
