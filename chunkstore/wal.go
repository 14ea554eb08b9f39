package chunkstore

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// The WAL archive of a repository: PostgreSQL's archive_command pushes each
// WAL file into it (PushWAL), its restore_command fetches them back
// (FetchWAL). A file's content is chunked, deduplicated and compressed in
// the store like a backup's; its record names the chunks:
//
//	DIR/wal/<first 16 hex digits>/<name>.json  segments, .partial and .backup files
//	DIR/wal/<timeline>/<name>.json             timeline .history files
//
// A record appears (by link, never replacing one) only once its chunks are
// durable, so a listed WAL file is whole; pushing runs alongside every
// reader and writer of the repository (design/0007) and waits on none.

// ErrWALConflict is matched by PushWAL's error for a file whose name is
// archived already with other content.
var ErrWALConflict = errors.New("chunkstore: a different WAL file of that name is archived already")

// ErrBadWALName is matched by the error for a name that is not one of
// PostgreSQL's WAL file names.
var ErrBadWALName = errors.New("chunkstore: not a WAL file name")

// walName matches what PostgreSQL archives: segments (timeline, log, segment
// as 24 hex digits), partial segments, backup history files, and timeline
// history files.
var walName = regexp.MustCompile(`^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$`)

// ValidWALName reports whether name is one of PostgreSQL's WAL file names.
func ValidWALName(name string) bool { return walName.MatchString(name) }

// walFormat is the version of the WAL records this build writes and reads.
const walFormat = 1

// maxWALFile bounds a WAL file's size: segments are at most 1 GiB
// (initdb --wal-segsize).
const maxWALFile = 1 << 30

// WALFile is the record of one archived WAL file.
type WALFile struct {
	Name   string     `json:"name"`
	Size   int64      `json:"size"`
	Hash   string     `json:"hash"` // chunk.FileListHash of the content, hex
	Chunks []ChunkRef `json:"chunks"`
	Pushed time.Time  `json:"pushed"`
	Format int        `json:"format"`
	// History is the text of a timeline history file, kept in its record
	// too: reading which timelines an archive holds needs no chunk.
	History string `json:"history,omitempty"`
}

// maxHistory bounds the text of a history file kept in its record (about
// 10,000 timelines).
const maxHistory = 1 << 20

func (r *Repo) walPath(name string) string {
	shard := name[:8]
	if len(name) >= 24 {
		shard = name[:16]
	}
	return filepath.Join(r.dir, "wal", shard, name+".json")
}

// PushWAL archives the WAL file at path under its base name. It returns
// when the file is durable in the repository. A name archived already with
// the same content is not stored again (already is true); with other
// content the push is refused with ErrWALConflict, and nothing changes.
func (r *Repo) PushWAL(ctx context.Context, path string) (already bool, err error) {
	name := filepath.Base(path)
	if !walName.MatchString(name) {
		return false, fmt.Errorf("%w: %q", ErrBadWALName, name)
	}
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("chunkstore: reading WAL file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("chunkstore: reading WAL file: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxWALFile {
		return false, fmt.Errorf("chunkstore: %s is not a WAL file: %s, %d bytes", path, fi.Mode().Type(), fi.Size())
	}
	rec := r.walPath(name)
	if old, err := readWALRecord(rec); err == nil {
		// Archived already (PostgreSQL retries a push whose answer it lost):
		// compare, storing nothing.
		w, err := walContent(ctx, f, name, nil)
		if err != nil {
			return false, err
		}
		return true, sameWAL(old, w)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	w, err := walContent(ctx, f, name, func(id chunk.ID, data []byte) error { return r.store.putSummed(ctx, id, data) })
	if err != nil {
		return false, err
	}
	if err := r.store.Flush(ctx); err != nil {
		return false, fmt.Errorf("chunkstore: flushing WAL file %s: %w", name, err)
	}
	if strings.HasSuffix(name, ".history") && w.Size <= maxHistory {
		b := make([]byte, w.Size)
		if _, err := f.ReadAt(b, 0); err != nil {
			return false, fmt.Errorf("chunkstore: reading WAL file: %w", err)
		}
		w.History = string(b)
	}
	w.Pushed = time.Now().UTC()
	err = r.writeWALRecord(rec, w)
	if errors.Is(err, fs.ErrExist) {
		// Another push of the same name won the race.
		old, rerr := readWALRecord(rec)
		if rerr != nil {
			return false, rerr
		}
		return true, sameWAL(old, w)
	}
	return false, err
}

func sameWAL(old, w *WALFile) error {
	if old.Size == w.Size && old.Hash == w.Hash {
		return nil
	}
	return fmt.Errorf("%w: %s holds %d bytes with hash %s, the file pushed now has %d bytes with hash %s",
		ErrWALConflict, w.Name, old.Size, old.Hash, w.Size, w.Hash)
}

// walContent chunks src, calling put (if not nil) for each chunk, and
// returns the record of its content.
func walContent(ctx context.Context, src io.Reader, name string, put func(chunk.ID, []byte) error) (*WALFile, error) {
	ch, err := chunk.NewChunker(io.LimitReader(src, maxWALFile+1), chunk.DefaultParams)
	if err != nil {
		return nil, err
	}
	w := &WALFile{Name: name, Format: walFormat}
	var chunks []ChunkRef
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		c, err := ch.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("chunkstore: reading WAL file %s: %w", name, err)
		}
		id := chunk.Sum(c.Data)
		if put != nil {
			if err := put(id, c.Data); err != nil {
				return nil, fmt.Errorf("chunkstore: storing WAL file %s: %w", name, err)
			}
		}
		chunks = append(chunks, ChunkRef{ID: id, Len: uint32(len(c.Data))})
		w.Size += int64(len(c.Data))
	}
	if w.Size > maxWALFile {
		return nil, fmt.Errorf("chunkstore: WAL file %s is larger than %d bytes", name, maxWALFile)
	}
	h := chunk.NewFileListHash(uint64(w.Size))
	for _, c := range chunks {
		h.Add(c.ID, c.Len)
	}
	sum := h.Sum()
	w.Hash, w.Chunks = hex.EncodeToString(sum[:]), chunks
	return w, nil
}

// writeWALRecord makes w visible at p, never replacing a record there
// (fs.ErrExist).
func (r *Repo) writeWALRecord(p string, w *WALFile) error {
	shard := filepath.Dir(p)
	if err := r.owner.mkdir(filepath.Dir(shard), r.dir); err != nil {
		return err
	}
	if err := r.owner.mkdir(shard, filepath.Dir(shard)); err != nil {
		return err
	}
	b, err := json.Marshal(w)
	if err != nil {
		return fmt.Errorf("chunkstore: encoding WAL record: %w", err)
	}
	f, err := os.CreateTemp(shard, ".tmp-")
	if err != nil {
		return fmt.Errorf("chunkstore: writing WAL record: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = r.owner.file(f)
	}
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err != nil {
		return fmt.Errorf("chunkstore: writing WAL record: %w", err)
	}
	if err := os.Link(tmp, p); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		return fmt.Errorf("chunkstore: writing WAL record: %w", err)
	}
	return syncDir(shard)
}

func readWALRecord(p string) (*WALFile, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("chunkstore: reading WAL record: %w", err)
	}
	var w WALFile
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("chunkstore: decoding WAL record %s: %w", filepath.Base(p), err)
	}
	if w.Format != walFormat {
		return nil, fmt.Errorf("chunkstore: WAL record %s has format %d, this build reads %d", filepath.Base(p), w.Format, walFormat)
	}
	var size int64
	for _, c := range w.Chunks {
		size += int64(c.Len)
	}
	if w.Name+".json" != filepath.Base(p) || size != w.Size || w.Size > maxWALFile {
		return nil, fmt.Errorf("chunkstore: WAL record %s is inconsistent (name %q, %d bytes, chunks of %d)", filepath.Base(p), w.Name, w.Size, size)
	}
	return &w, nil
}

// ErrWALNotFound is matched by FetchWAL's error for a name the archive
// does not hold.
var ErrWALNotFound = errors.New("chunkstore: WAL file not in the archive")

// FetchWAL writes the archived WAL file name to dst, through a temporary
// file beside it, after checking its content against its record.
func (r *Repo) FetchWAL(ctx context.Context, name, dst string) error {
	if !walName.MatchString(name) {
		return fmt.Errorf("%w: %q", ErrBadWALName, name)
	}
	w, err := readWALRecord(r.walPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s", ErrWALNotFound, name)
	}
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(dst), ".pgporter-wal-")
	if err != nil {
		return fmt.Errorf("chunkstore: writing WAL file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	h := chunk.NewFileListHash(uint64(w.Size))
	var buf []byte
	for _, c := range w.Chunks {
		if buf, err = r.store.Get(ctx, c.ID, buf[:0]); err != nil {
			f.Close()
			return fmt.Errorf("chunkstore: WAL file %s: %w", name, err)
		}
		if len(buf) != int(c.Len) {
			f.Close()
			return fmt.Errorf("chunkstore: WAL file %s: chunk %s has %d bytes, its record says %d", name, c.ID.Short(), len(buf), c.Len)
		}
		h.Add(c.ID, c.Len)
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return fmt.Errorf("chunkstore: writing WAL file: %w", err)
		}
	}
	if sum := h.Sum(); hex.EncodeToString(sum[:]) != w.Hash {
		f.Close()
		return fmt.Errorf("chunkstore: WAL file %s: its chunks do not hash to its record's %s", name, w.Hash)
	}
	if err := errors.Join(f.Chmod(0o600), f.Close()); err != nil {
		return fmt.Errorf("chunkstore: writing WAL file: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("chunkstore: writing WAL file: %w", err)
	}
	return nil
}
