package staging

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// fileData is the content of one regular file: the restore point's chunks,
// overlaid by a copy-on-write layer at chunk granularity.
//
// Byte b of the file reads
//   - from the CoW file when b >= limit (content past the original end, or
//     past a shrinking truncate, lives only in the CoW layer; holes read as
//     zeros);
//   - from the CoW file when the original chunk holding b is marked local;
//   - from the original chunk otherwise.
//
// The CoW file is sparse and uses the file's own offsets, so a write into
// the middle of a large file costs the chunks it touches and no more: a chunk
// that a write covers only in part is first filled from the original.
//
// fileData is not safe for concurrent use; its node's mutex guards it.
type fileData struct {
	chunks []chunkstore.ChunkRef
	offs   []int64  // offs[i] is where chunks[i] starts; offs[len(chunks)] is the original size
	limit  int64    // original content is valid only below this offset
	local  []uint64 // bit i set: chunk i's range lives in the CoW file
	size   int64    // current logical size

	cowPath string   // where the CoW file is created on first change
	cow     *os.File // nil until the first change

	// The page whose writes so far, up to hintNext, were dropped as hint
	// bits only (hintOnlyWrite); hintNext is 0 when there is none.
	hintPage, hintNext int64
	hintSize           int
}

func newFileData(chunks []chunkstore.ChunkRef, cowPath string) *fileData {
	offs := make([]int64, len(chunks)+1)
	for i, c := range chunks {
		offs[i+1] = offs[i] + int64(c.Len)
	}
	end := offs[len(chunks)]
	return &fileData{
		chunks:  chunks,
		offs:    offs,
		limit:   end,
		local:   make([]uint64, (len(chunks)+63)/64),
		size:    end,
		cowPath: cowPath,
	}
}

// chunkAt returns the index of the original chunk holding offset off, which
// must be below offs[len(chunks)].
func (d *fileData) chunkAt(off int64) int {
	return sort.Search(len(d.chunks), func(i int) bool { return d.offs[i+1] > off })
}

func (d *fileData) isLocal(i int) bool { return d.local[i/64]&(1<<(i%64)) != 0 }
func (d *fileData) setLocal(i int)     { d.local[i/64] |= 1 << (i % 64) }

// localChunks counts the chunks copied into the CoW layer.
func (d *fileData) localChunks() int {
	n := 0
	for i := range d.chunks {
		if d.isLocal(i) {
			n++
		}
	}
	return n
}

// chunkPinner fetches the plain content of one original chunk, checked
// against its length, and holds it until the caller calls release. The
// result is shared: callers must not modify it, nor use it after release.
type chunkPinner interface {
	pin(ctx context.Context, c chunkstore.ChunkRef) (data []byte, release func(), err error)
}

// chunkSource is a chunkPinner whose results need no release.
type chunkSource func(ctx context.Context, c chunkstore.ChunkRef) ([]byte, error)

func (f chunkSource) pin(ctx context.Context, c chunkstore.ChunkRef) ([]byte, func(), error) {
	data, err := f(ctx, c)
	return data, func() {}, err
}

// readAt fills p from offset off and returns how many bytes it read (short
// only at the end of the file).
func (d *fileData) readAt(ctx context.Context, get chunkPinner, p []byte, off int64) (int, error) {
	if off >= d.size {
		return 0, nil
	}
	if rest := d.size - off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= d.limit {
			if err := d.readCow(p[n:], pos); err != nil {
				return n, err
			}
			return len(p), nil
		}
		i := d.chunkAt(pos)
		end := min(d.offs[i+1], d.limit)
		seg := p[n : n+int(min(int64(len(p)-n), end-pos))]
		if d.isLocal(i) {
			if err := d.readCow(seg, pos); err != nil {
				return n, err
			}
		} else {
			data, release, err := get.pin(ctx, d.chunks[i])
			if err != nil {
				return n, err
			}
			copy(seg, data[pos-d.offs[i]:])
			release()
		}
		n += len(seg)
	}
	return n, nil
}

// readCow fills p from the CoW file; what the file does not hold reads as
// zeros.
func (d *fileData) readCow(p []byte, off int64) error {
	n := 0
	if d.cow != nil {
		var err error
		n, err = d.cow.ReadAt(p, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("reading CoW file: %w", err)
		}
	}
	clear(p[n:])
	return nil
}

func (d *fileData) openCow() error {
	if d.cow != nil {
		return nil
	}
	f, err := os.OpenFile(d.cowPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("creating CoW file: %w", err)
	}
	d.cow = f
	return nil
}

// writeAt writes p at off. Original chunks that p covers only in part are
// copied into the CoW file first, so that the rest of them still reads right.
func (d *fileData) writeAt(ctx context.Context, get chunkPinner, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	if err := d.openCow(); err != nil {
		return err
	}
	end := off + int64(len(p))
	if off < d.limit {
		first, last := d.chunkAt(off), d.chunkAt(min(end, d.limit)-1)
		for i := first; i <= last; i++ {
			if d.isLocal(i) {
				continue
			}
			cs, ce := d.offs[i], min(d.offs[i+1], d.limit)
			if off > cs || end < ce {
				data, release, err := get.pin(ctx, d.chunks[i])
				if err != nil {
					return err
				}
				_, err = d.cow.WriteAt(data[:ce-cs], cs)
				release()
				if err != nil {
					return fmt.Errorf("filling CoW file: %w", err)
				}
			}
			d.setLocal(i)
		}
	}
	if _, err := d.cow.WriteAt(p, off); err != nil {
		return fmt.Errorf("writing CoW file: %w", err)
	}
	d.size = max(d.size, end)
	return nil
}

// truncate sets the size. Shrinking lowers limit for good: bytes past the
// new end read as zeros if the file grows again.
func (d *fileData) truncate(size int64) error {
	d.hintNext = 0
	if size == d.size {
		return nil
	}
	if err := d.openCow(); err != nil {
		return err
	}
	if err := d.cow.Truncate(size); err != nil {
		return fmt.Errorf("truncating CoW file: %w", err)
	}
	d.limit = min(d.limit, size)
	d.size = size
	return nil
}

func (d *fileData) sync() error {
	if d.cow == nil {
		return nil
	}
	return d.cow.Sync()
}

// discard removes the CoW file's name; an open descriptor keeps the data
// readable for handles that are still open.
func (d *fileData) discard() error {
	if d.cow == nil {
		return nil
	}
	if err := os.Remove(d.cowPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (d *fileData) close() error {
	if d.cow == nil {
		return nil
	}
	err := d.cow.Close()
	d.cow = nil
	return err
}

// checkChunk returns an error unless data is as long as its reference says:
// a tree whose lengths disagree with its chunks must not be served.
func checkChunk(c chunkstore.ChunkRef, data []byte) error {
	if len(data) != int(c.Len) {
		return &chunk.CorruptChunkError{ID: c.ID, Err: fmt.Errorf("length %d, tree says %d", len(data), c.Len)}
	}
	return nil
}
