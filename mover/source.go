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
	"sort"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cockroachdb/pebble/v2"
	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/protocol"
	"github.com/zeebo/blake3"
)

// srcFile is one regular file of a tree being sent, with its chunk list once
// it has been chunked.
type srcFile struct {
	Index uint32
	Path  string // canonical relative slash path
	Abs   string
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
}

// ErrUnsupportedFile is returned for a source entry that is not a regular
// file or directory (symlinks, devices, sockets, pipes).
var ErrUnsupportedFile = errors.New("mover: only regular files and directories can be sent")

// scanTree lists the regular files under src in path order. Anything else
// but a directory is refused: a dump never holds one, and following a link
// could send data from outside the tree.
func scanTree(src string) ([]*srcFile, error) {
	var files []*srcFile
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if !d.Type().IsRegular() {
			return fmt.Errorf("%w: %s is a %s", ErrUnsupportedFile, rel, d.Type())
		}
		if err := protocol.ValidPath(rel); err != nil {
			return fmt.Errorf("source path %q: %w", rel, err)
		}
		if rel == ManifestName {
			// The receiver writes its own manifest there; a stale one from an
			// earlier transfer (sending a received tree on) is not data.
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		var ino uint64
		var ctime int64
		if st != nil {
			ino, ctime = st.Ino, st.Ctim.Nano()
		}
		files = append(files, &srcFile{Path: rel, Abs: p, Mode: uint32(fi.Mode().Perm()), Size: fi.Size(), MTime: fi.ModTime().UnixNano(), Ino: ino, CTime: ctime})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scanning %s: %w", src, err)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for i, f := range files {
		f.Index = uint32(i)
	}
	return files, nil
}

// chunkCache remembers the chunk list of each source file of a transfer in
// the sender's pebble store, so that a rerun of the same send does not
// re-read and re-hash files that did not change (same size, mtime, inode
// and ctime: an edit that restores size and mtime still moves ctime).
type chunkCache struct {
	db  *pebble.DB
	tid string
}

func (c *chunkCache) key(path string) []byte { return []byte("s/" + c.tid + "/" + path) }

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

// chunkFile reads f, cutting and hashing its chunks and hashing the whole
// file. It publishes chunk refs in batches as it goes, so that they can be
// offered before the end of a large file is read. A file that changes size
// while it is read is an error: the caller sends a consistent snapshot or
// nothing. It returns the whole file's hash.
func chunkFile(ctx context.Context, f *srcFile, ch *chunkstore.Chunker, publish func([]protocol.ChunkRef)) ([32]byte, error) {
	var hash [32]byte
	fh, err := os.Open(f.Abs)
	if err != nil {
		return hash, err
	}
	defer fh.Close()
	whole := blake3.New()
	ch.Reset(ctxReader{ctx, fh})
	const batch = 64 // about 4 MiB of data per publication
	chunks := make([]protocol.ChunkRef, 0, batch)
	var total int64
	for {
		c, err := ch.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return hash, fmt.Errorf("chunking %s: %w", f.Path, err)
		}
		whole.Write(c.Data)
		chunks = append(chunks, protocol.ChunkRef{ID: chunkstore.Sum(c.Data), Len: uint32(len(c.Data))})
		total += int64(len(c.Data))
		if len(chunks) == batch {
			publish(chunks)
			chunks = make([]protocol.ChunkRef, 0, batch)
		}
	}
	if total != f.Size {
		return hash, fmt.Errorf("%s changed while it was read (%d bytes, expected %d)", f.Path, total, f.Size)
	}
	if len(chunks) > 0 {
		publish(chunks)
	}
	whole.Sum(hash[:0])
	return hash, nil
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
// being hashed.
type source struct {
	files []*srcFile

	mu    sync.Mutex // guards ready, err, and signals cond
	cond  *sync.Cond
	ready int   // files[:ready] have their chunk lists
	err   error // chunking failed

	hashed atomic.Int64 // bytes read and hashed (files not found in the cache)
}

func newSource(files []*srcFile) *source {
	s := &source{files: files}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// run chunks every file not already known from the cache. It returns when
// all are done or on the first error, which wait then reports.
func (s *source) run(ctx context.Context, cache *chunkCache, p chunkstore.Params) error {
	err := s.chunkAll(ctx, cache, p)
	s.mu.Lock()
	s.err = err
	if err == nil {
		s.ready = len(s.files)
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	return err
}

func (s *source) chunkAll(ctx context.Context, cache *chunkCache, p chunkstore.Params) error {
	ch, err := chunkstore.NewChunker(nil, p)
	if err != nil {
		return err
	}
	ps := p.String()
	batch := cache.db.NewBatch()
	defer batch.Close()
	for i, f := range s.files {
		v, ok, err := dbGet(cache.db, cache.key(f.Path))
		if err != nil {
			return err
		}
		cached := &srcFile{Size: f.Size, MTime: f.MTime, Ino: f.Ino, CTime: f.CTime}
		if ok && decodeCached(v, cached, ps) {
			s.mu.Lock()
			f.Chunks, f.Offsets, f.Hash = cached.Chunks, cached.Offsets, cached.Hash
		} else {
			hash, err := chunkFile(ctx, f, ch, func(refs []protocol.ChunkRef) { s.publish(f, refs) })
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
	f := s.files[i]
	s.mu.Lock()
	defer s.mu.Unlock()
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

// chunk returns chunk c of file i and its offset, if it is listed yet.
func (s *source) chunk(i, c uint32) (protocol.ChunkRef, int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.files[i]
	if int(c) >= len(f.Chunks) {
		return protocol.ChunkRef{}, 0, false
	}
	return f.Chunks[c], f.Offsets[c], true
}
