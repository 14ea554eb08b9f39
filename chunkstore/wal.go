package chunkstore

import (
	"bytes"
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
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/chunkstore/objstore"
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

// MaxWALSize bounds a WAL file's size: segments are at most 1 GiB
// (initdb --wal-segsize).
const MaxWALSize = 1 << 30

// MaxWALChunks bounds the chunks of a WAL file's record: the chunker's
// minimum (16 KiB) cuts MaxWALSize into at most 65,536; twice that leaves
// room for a record that is not this build's.
const MaxWALChunks = 1 << 17

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
	if !fi.Mode().IsRegular() || fi.Size() > MaxWALSize {
		return false, fmt.Errorf("chunkstore: %s is not a WAL file: %s, %d bytes", path, fi.Mode().Type(), fi.Size())
	}
	if old, err := r.readWAL(ctx, name); err == nil {
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
	return r.CommitWAL(ctx, w)
}

// ChunkWAL cuts the WAL file content src (name is its name) as PushWAL
// does and returns its record: what a client that pushes to a repository
// mover offers. put, if not nil, is called with each chunk, whose data it
// must not keep.
func ChunkWAL(ctx context.Context, src io.Reader, name string, put func(chunk.ID, []byte) error) (*WALFile, error) {
	if !walName.MatchString(name) {
		return nil, fmt.Errorf("%w: %q", ErrBadWALName, name)
	}
	return walContent(ctx, src, name, put)
}

// ErrBadWALRecord is matched by the error for a description of a WAL file
// that does not hold together (sizes, chunk lengths, hash): one from a
// peer is refused with it before anything is stored.
var ErrBadWALRecord = errors.New("chunkstore: inconsistent WAL record")

// Check reports whether w describes a WAL file a repository may hold: a
// WAL file name (ErrBadWALName), at most MaxWALSize bytes in at most
// MaxWALChunks chunks of 1 to chunk.MaxChunkCeil bytes that add up to
// Size, and Hash their chunk-list hash, computed here (ErrBadWALRecord).
// It allocates nothing from the sizes w claims.
func (w *WALFile) Check() error {
	if !walName.MatchString(w.Name) {
		return fmt.Errorf("%w: %q", ErrBadWALName, w.Name)
	}
	switch {
	case w.Size < 0 || w.Size > MaxWALSize:
		return fmt.Errorf("%w: %s: %d bytes, outside [0, %d]", ErrBadWALRecord, w.Name, w.Size, MaxWALSize)
	case len(w.Chunks) > MaxWALChunks:
		return fmt.Errorf("%w: %s: %d chunks, above the limit %d", ErrBadWALRecord, w.Name, len(w.Chunks), MaxWALChunks)
	}
	var sum int64
	h := chunk.NewFileListHash(uint64(w.Size))
	for i, c := range w.Chunks {
		if c.Len == 0 || c.Len > chunk.MaxChunkCeil {
			return fmt.Errorf("%w: %s: chunk %d has %d bytes, outside [1, %d]", ErrBadWALRecord, w.Name, i, c.Len, chunk.MaxChunkCeil)
		}
		sum += int64(c.Len)
		h.Add(c.ID, c.Len)
	}
	if sum != w.Size {
		return fmt.Errorf("%w: %s: chunks of %d bytes in all, the file has %d", ErrBadWALRecord, w.Name, sum, w.Size)
	}
	if got := h.Sum(); hex.EncodeToString(got[:]) != w.Hash {
		return fmt.Errorf("%w: %s: its chunks hash to %x, not to %s", ErrBadWALRecord, w.Name, got, w.Hash)
	}
	return nil
}

// WALRecord returns the record of the archived WAL file name: an error
// matching ErrBadWALName for a name that is not one, ErrWALNotFound for
// one the archive does not hold.
func (r *Repo) WALRecord(name string) (*WALFile, error) {
	if !walName.MatchString(name) {
		return nil, fmt.Errorf("%w: %q", ErrBadWALName, name)
	}
	// A record's read from an object store is bounded by its retries.
	w, err := r.readWAL(context.Background(), name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrWALNotFound, name)
	}
	return w, err
}

// ArchivedWAL reports whether w's name is archived already with w's
// content. With other content it returns ErrWALConflict; a name not
// archived yet is false.
func (r *Repo) ArchivedWAL(w *WALFile) (bool, error) {
	old, err := r.WALRecord(w.Name)
	if errors.Is(err, ErrWALNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, sameWAL(old, w)
}

// CommitWAL archives the WAL file w describes, whose chunks the caller has
// put into the store (a repository mover, as its peer sends them): it
// checks w, flushes the store, checks that it holds every chunk, and only
// then links w's record, never replacing one. It returns as PushWAL does:
// already is true when that name was archived with the same content
// meanwhile, and another content is refused with ErrWALConflict. A
// .history file's text is read back from its chunks into its record, and
// must be cut as this build cuts it (walrange.go checks it so).
func (r *Repo) CommitWAL(ctx context.Context, w *WALFile) (already bool, err error) {
	return r.commitWAL(ctx, w, time.Now().UTC())
}

// commitWAL is CommitWAL with the time the record says the file was
// pushed: now, or the source's when a repository is copied.
func (r *Repo) commitWAL(ctx context.Context, w *WALFile, pushed time.Time) (already bool, err error) {
	if err := w.Check(); err != nil {
		return false, err
	}
	if err := r.store.Flush(ctx); err != nil {
		return false, fmt.Errorf("chunkstore: flushing WAL file %s: %w", w.Name, err)
	}
	ids := make([]chunk.ID, len(w.Chunks))
	for i, c := range w.Chunks {
		ids[i] = c.ID
	}
	held, err := r.store.HasMany(ctx, ids)
	if err != nil {
		return false, fmt.Errorf("chunkstore: WAL file %s: %w", w.Name, err)
	}
	for i, ok := range held {
		if !ok {
			return false, fmt.Errorf("chunkstore: WAL file %s: chunk %s: %w", w.Name, ids[i].Short(), chunk.ErrNotFound)
		}
	}
	rec := &WALFile{Name: w.Name, Size: w.Size, Hash: w.Hash, Chunks: w.Chunks, Format: walFormat}
	if strings.HasSuffix(w.Name, ".history") && w.Size <= maxHistory {
		text := make([]byte, 0, w.Size)
		for _, c := range w.Chunks {
			if text, err = r.store.Get(ctx, c.ID, text); err != nil {
				return false, fmt.Errorf("chunkstore: WAL file %s: %w", w.Name, err)
			}
		}
		cut, err := walContent(ctx, bytes.NewReader(text), w.Name, nil)
		if err != nil {
			return false, err
		}
		if cut.Hash != w.Hash {
			return false, fmt.Errorf("%w: %s is not cut as this repository cuts WAL files", ErrBadWALRecord, w.Name)
		}
		rec.History = string(text)
	}
	rec.Pushed = pushed
	err = r.putWAL(ctx, rec)
	if errors.Is(err, fs.ErrExist) {
		// Archived before, or by another push of the same name that won
		// the race.
		old, rerr := r.readWAL(ctx, w.Name)
		if rerr != nil {
			return false, rerr
		}
		return true, sameWAL(old, rec)
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
	ch, err := chunk.NewChunker(io.LimitReader(src, MaxWALSize+1), chunk.DefaultParams)
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
	if w.Size > MaxWALSize {
		return nil, fmt.Errorf("chunkstore: WAL file %s is larger than %d bytes", name, MaxWALSize)
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
	b, err := encodeWALRecord(r.key, w)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(shard, ".tmp-")
	if err != nil {
		return fmt.Errorf("chunkstore: writing WAL record: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(b)
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

// encodeWALRecord is w's record file or object, sealed under key unless
// key is nil.
func encodeWALRecord(key *crypt.MasterKey, w *WALFile) ([]byte, error) {
	b, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: encoding WAL record: %w", err)
	}
	return sealFile(key, crypt.KindWAL, w.Name, append(b, '\n')), nil
}

// maxWALRecord is the most a WAL record file is read of, as a bucket's
// objects are (objstore.MaxRead): a record lists the chunks of a segment
// of up to 1 GiB, in chunks as small as the repository's parameters let
// them be.
const maxWALRecord = objstore.MaxRead

func readWALRecord(key *crypt.MasterKey, p string) (*WALFile, error) {
	b, err := readFileMax(p, maxWALRecord)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("chunkstore: reading WAL record: %w", err)
	}
	return decodeWALRecord(key, b, filepath.Base(p))
}

// decodeWALRecord decodes the WAL record file (or object) base, sealed
// under key unless key is nil.
func decodeWALRecord(key *crypt.MasterKey, b []byte, base string) (*WALFile, error) {
	b, err := openFile(key, crypt.KindWAL, strings.TrimSuffix(base, ".json"), "WAL record "+base, b)
	if err != nil {
		return nil, err
	}
	var w WALFile
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("chunkstore: decoding WAL record %s: %w", base, err)
	}
	if w.Format != walFormat {
		return nil, fmt.Errorf("chunkstore: WAL record %s has format %d, this build reads %d", base, w.Format, walFormat)
	}
	var size int64
	for _, c := range w.Chunks {
		size += int64(c.Len)
	}
	if w.Name+".json" != base || size != w.Size || w.Size > MaxWALSize {
		return nil, fmt.Errorf("chunkstore: WAL record %s is inconsistent (name %q, %d bytes, chunks of %d)", base, w.Name, w.Size, size)
	}
	return &w, nil
}

// readWAL reads the record of WAL file name: an error matching
// fs.ErrNotExist when the archive does not hold it.
func (r *Repo) readWAL(ctx context.Context, name string) (*WALFile, error) {
	if r.remote != nil {
		return r.readRemoteWAL(ctx, name)
	}
	return readWALRecord(r.key, r.walPath(name))
}

// walNames lists the names of the WAL files the archive holds.
func (r *Repo) walNames(ctx context.Context) ([]string, error) {
	if r.remote != nil {
		return remoteWALNames(ctx, r.remote)
	}
	paths, err := filepath.Glob(filepath.Join(r.dir, "wal", "*", "*.json"))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, p := range paths {
		if name := strings.TrimSuffix(filepath.Base(p), ".json"); walName.MatchString(name) {
			names = append(names, name)
		}
	}
	return names, nil
}

// removeWAL removes the record of WAL file name; a missing one is no
// error.
func (r *Repo) removeWAL(ctx context.Context, name string) error {
	var err error
	if r.remote != nil {
		err = r.remote.Delete(ctx, walObject(name))
	} else if err = os.Remove(r.walPath(name)); errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("chunkstore: removing a WAL record: %w", err)
	}
	return nil
}

// putWAL makes rec visible, never replacing a record (fs.ErrExist).
func (r *Repo) putWAL(ctx context.Context, rec *WALFile) error {
	if r.remote != nil {
		return r.putRemoteWAL(ctx, rec)
	}
	return r.writeWALRecord(r.walPath(rec.Name), rec)
}

// ErrWALNotFound is matched by FetchWAL's error for a name the archive
// does not hold.
var ErrWALNotFound = errors.New("chunkstore: WAL file not in the archive")

// FetchWAL writes the archived WAL file name to dst (see WriteWAL).
func (r *Repo) FetchWAL(ctx context.Context, name, dst string) error {
	w, err := r.WALRecord(name)
	if err != nil {
		return err
	}
	return WriteWAL(ctx, w, r.store, dst)
}

// ChunkGetter reads chunks by ID, each verified against its ID (a Store, a
// repository mover's RemoteRepo).
type ChunkGetter interface {
	Get(ctx context.Context, id chunk.ID, dst []byte) ([]byte, error)
}

// WriteWAL writes the WAL file w describes to dst, its chunks read from
// src, through a temporary file beside dst renamed into place once every
// chunk has arrived with its record's length: a failed fetch leaves dst
// as it was. w is checked first (WALFile.Check), so a record from a peer
// cannot make it write more than MaxWALSize bytes or content other than
// its hash names.
func WriteWAL(ctx context.Context, w *WALFile, src ChunkGetter, dst string) error {
	if err := w.Check(); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(dst), ".pgporter-wal-")
	if err != nil {
		return fmt.Errorf("chunkstore: writing WAL file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	var buf []byte
	for _, c := range w.Chunks {
		if buf, err = src.Get(ctx, c.ID, buf[:0]); err != nil {
			f.Close()
			return fmt.Errorf("chunkstore: WAL file %s: %w", w.Name, err)
		}
		if len(buf) != int(c.Len) {
			f.Close()
			return fmt.Errorf("chunkstore: WAL file %s: chunk %s has %d bytes, its record says %d", w.Name, c.ID.Short(), len(buf), c.Len)
		}
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return fmt.Errorf("chunkstore: writing WAL file: %w", err)
		}
	}
	if err := errors.Join(f.Chmod(0o600), f.Close()); err != nil {
		return fmt.Errorf("chunkstore: writing WAL file: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("chunkstore: writing WAL file: %w", err)
	}
	return nil
}
