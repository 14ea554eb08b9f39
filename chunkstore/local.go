package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/pebbledb"
)

// Defaults of LocalOptions.
const (
	DefaultPackSize   = 512 << 20
	DefaultFlushBytes = 64 << 20

	maxPackSize = 1 << 40
)

var (
	// ErrClosed is returned by every method of a closed store but Close.
	ErrClosed = errors.New("chunkstore: store is closed")
	// ErrIDMismatch is returned by Put when the data does not hash to the
	// ID it is put under: a caller bug, not a corrupt store.
	ErrIDMismatch = errors.New("chunkstore: data does not hash to its ID")
)

// LocalOptions configure a Local store. The zero value is ready to use.
type LocalOptions struct {
	// Level is the compression effort for new chunks (LevelS2 stores S2
	// blocks, which builds before CodecS2 cannot read). Zero means LevelFastest, so
	// a zero Level cannot also mean LevelNone: NoCompression says that, and
	// wins over Level.
	Level         chunk.Level
	NoCompression bool
	// PackSize is the size past which writes roll to a new pack file
	// (default DefaultPackSize). A record larger than PackSize gets a pack
	// of its own.
	PackSize int64
	// FlushBytes is how many bytes Put may write to packs before it flushes
	// by itself (default DefaultFlushBytes). It bounds what a crash loses
	// when the caller never flushes, and the memory of the unflushed set.
	FlushBytes int64
	// Logger receives recovery and failure reports; nil means silent.
	Logger *slog.Logger
}

func (o LocalOptions) withDefaults() LocalOptions {
	if o.Level == chunk.LevelNone && !o.NoCompression {
		o.Level = chunk.LevelFastest
	}
	if o.NoCompression {
		o.Level = chunk.LevelNone
	}
	if o.PackSize == 0 {
		o.PackSize = DefaultPackSize
	}
	if o.FlushBytes == 0 {
		o.FlushBytes = DefaultFlushBytes
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Validate reports whether o, with defaults filled in, is usable.
func (o LocalOptions) Validate() error {
	o = o.withDefaults()
	switch {
	case o.Level < chunk.LevelNone || o.Level > chunk.LevelBest:
		return fmt.Errorf("chunkstore: unknown compression level %d", int(o.Level))
	case o.PackSize < 0 || o.PackSize > maxPackSize:
		return fmt.Errorf("chunkstore: pack size %d out of range (max %d)", o.PackSize, int64(maxPackSize))
	case o.FlushBytes < 0:
		return fmt.Errorf("chunkstore: flush bytes %d is negative", o.FlushBytes)
	}
	return nil
}

// Local is a chunk store in a local directory:
//
//	DIR/packs/NNNNNNNN.pack  append-only pack files of chunk records (pack.go)
//	DIR/index/               pebble DB: chunk ID -> record location (index.go)
//
// A Put compresses the chunk (in the caller's goroutine, outside any lock)
// and appends it to the current pack; it is readable at once, through an
// in-memory set of unflushed chunks. Flush syncs the packs and only then
// commits the index entries, with the packs' new durable lengths, in one
// synced batch. So the index never points at bytes that a crash can lose,
// and on open anything past a pack's durable length is a torn tail, cut off.
//
// A Local is safe for concurrent use. Only one process may open a directory
// at a time (pebble holds a lock on the index).
type Local struct {
	dir  string
	opts LocalOptions
	log  *slog.Logger
	db   *pebbledb.DB

	stateMu   sync.Mutex // guards closed, active
	stateCond *sync.Cond // on stateMu; signalled when active drops to zero
	closed    bool
	active    int // calls in progress; Close waits for them

	// flushMu serialises flushes, so index batches commit in the order
	// their packs were synced and durable lengths only grow. Held across
	// fsync and commit; never taken while holding mu.
	flushMu sync.Mutex

	mu             sync.RWMutex          // guards pending, unflushed, unflushedBytes, cur, curNum, curOff, nextPack, dirty, failed
	pending        map[chunk.ID]chunkLoc // chunks in a pack but not yet in the index, so Get finds them
	unflushed      []pendingChunk        // the chunks of pending not yet taken by a flush, in write order
	unflushedBytes int64
	cur            *os.File // pack being appended to; nil until the first Put needs one
	curNum         uint32
	curOff         int64
	nextPack       uint32           // number of the next pack to create
	dirty          map[uint32]int64 // packs written since the last flush -> their length
	failed         error            // sticky: a sync or commit failed, so writes are refused

	filesMu sync.RWMutex        // guards files
	files   map[uint32]*os.File // open pack files, for reads (and cur, for writes too)
}

var (
	_ Store     = (*Local)(nil)
	_ RawReader = (*Local)(nil)
)

type pendingChunk struct {
	id  chunk.ID
	loc chunkLoc
}

// OpenLocal opens the store in dir, creating it if needed, and repairs what
// a crash left: torn pack tails past their durable length are truncated.
func OpenLocal(dir string, opts LocalOptions) (*Local, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	if err := os.MkdirAll(filepath.Join(dir, "packs"), 0o755); err != nil {
		return nil, fmt.Errorf("chunkstore: creating store: %w", err)
	}
	// The packs directory must survive a crash as surely as the files in it.
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	db, err := pebbledb.Open(filepath.Join(dir, "index"), pebbledb.Options{Log: opts.Logger, Format: indexFormat, Tune: tunePebble})
	if err != nil {
		return nil, fmt.Errorf("chunkstore: opening index: %w", err)
	}
	l := &Local{
		dir:     dir,
		opts:    opts,
		log:     opts.Logger.With("store", dir),
		db:      db,
		pending: map[chunk.ID]chunkLoc{},
		dirty:   map[uint32]int64{},
		files:   map[uint32]*os.File{},
	}
	l.stateCond = sync.NewCond(&l.stateMu)
	if err := l.recover(); err != nil {
		return nil, errors.Join(err, l.release())
	}
	return l, nil
}

// tunePebble sets the index's pebble options.
func tunePebble(o *pebble.Options) {
	o.FormatMajorVersion = pebble.FormatNewest
	// Most lookups are Has on chunks not held yet (dedupe of new data):
	// bloom filters answer those without reading blocks.
	for i := range o.Levels {
		o.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
}

func (l *Local) packsDir() string         { return filepath.Join(l.dir, "packs") }
func (l *Local) packPath(n uint32) string { return filepath.Join(l.packsDir(), packName(n)) }

// recover reconciles the pack files with their durable lengths in the index
// and picks the pack to append to.
func (l *Local) recover() error {
	durable := map[uint32]int64{}
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: packLower, UpperBound: packUpper})
	if err != nil {
		return fmt.Errorf("chunkstore: reading pack lengths: %w", err)
	}
	for it.First(); it.Valid(); it.Next() {
		n, ok := parsePackKey(it.Key())
		if !ok {
			it.Close()
			return fmt.Errorf("chunkstore: reading pack lengths: %w: key %x", errBadIndex, it.Key())
		}
		length, err := decodePackLen(it.Value())
		if err != nil {
			it.Close()
			return fmt.Errorf("chunkstore: reading length of pack %08x: %w", n, err)
		}
		durable[n] = length
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return fmt.Errorf("chunkstore: reading pack lengths: %w", err)
	}

	entries, err := os.ReadDir(l.packsDir())
	if err != nil {
		return fmt.Errorf("chunkstore: listing packs: %w", err)
	}
	var (
		last     int64 = -1 // highest pack number seen on disk or in the index
		sizes          = map[uint32]int64{}
		maxFound       = func(n uint32) {
			if int64(n) > last {
				last = int64(n)
			}
		}
	)
	for _, e := range entries {
		n, ok := parsePackName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		maxFound(n)
		want, known := durable[n]
		if !known {
			// Every pack is registered in the index before it is created,
			// so this one came from elsewhere (or the index was replaced).
			// Never delete data we cannot account for; just never reuse
			// its number.
			l.log.Warn("pack file not in the index: left alone, not used", "pack", e.Name())
			continue
		}
		size, err := l.repairPack(n, want)
		if err != nil {
			return err
		}
		sizes[n] = size
	}
	for n, want := range durable {
		maxFound(n)
		if _, ok := sizes[n]; !ok && want > 0 {
			l.log.Error("pack file missing: its chunks are lost", "pack", packName(n), "durable_bytes", want)
		}
	}
	l.nextPack = uint32(last + 1)
	if last >= 0 {
		n := uint32(last)
		// Resume the last pack if it is whole and has room: reopening a
		// store must not leave a trail of small packs.
		if size, ok := sizes[n]; ok && size == durable[n] && size < l.opts.PackSize {
			f, err := os.OpenFile(l.packPath(n), os.O_RDWR, 0)
			if err != nil {
				return fmt.Errorf("chunkstore: opening pack: %w", err)
			}
			l.files[n] = f
			l.cur, l.curNum, l.curOff = f, n, size
		}
	}
	return nil
}

// repairPack cuts pack n back to its durable length if it has a torn tail,
// and returns its size after that.
func (l *Local) repairPack(n uint32, durable int64) (int64, error) {
	path := l.packPath(n)
	fi, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("chunkstore: checking pack: %w", err)
	}
	size := fi.Size()
	switch {
	case size == durable:
		return size, nil
	case size < durable:
		// The file system lost synced bytes, or someone cut the file: the
		// chunks past size will read as corrupt and Verify will name them.
		l.log.Error("pack shorter than its durable length: chunks past its end are lost",
			"pack", packName(n), "size", size, "durable_bytes", durable)
		return size, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("chunkstore: opening pack to repair: %w", err)
	}
	defer f.Close()
	var records int
	end, err := scanRecords(f, durable, size, func(int64, recordHeader) error { records++; return nil })
	if err != nil {
		return 0, fmt.Errorf("chunkstore: scanning torn tail of pack %08x: %w", n, err)
	}
	if err := f.Truncate(durable); err != nil {
		return 0, fmt.Errorf("chunkstore: truncating torn tail: %w", err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("chunkstore: syncing repaired pack: %w", err)
	}
	l.log.Warn("truncated torn pack tail: chunks written but never flushed are dropped",
		"pack", packName(n), "durable_bytes", durable, "cut_bytes", size-durable,
		"whole_records", records, "torn_bytes", size-end)
	return durable, nil
}

// enter registers a call in progress, or fails if the store is closed.
func (l *Local) enter() error {
	l.stateMu.Lock()
	defer l.stateMu.Unlock()
	if l.closed {
		return ErrClosed
	}
	l.active++
	return nil
}

func (l *Local) exit() {
	l.stateMu.Lock()
	defer l.stateMu.Unlock()
	l.active--
	if l.active == 0 && l.closed {
		l.stateCond.Broadcast()
	}
}

// lookup finds where id is stored. The pending set is checked before the
// index: a flush removes chunks from it only after committing them, so a
// chunk is always in one or the other.
func (l *Local) lookup(id chunk.ID) (chunkLoc, bool, error) {
	l.mu.RLock()
	loc, ok := l.pending[id]
	l.mu.RUnlock()
	if ok {
		return loc, true, nil
	}
	var k [chunkKeySize]byte
	v, closer, err := l.db.Get(appendChunkKey(k[:0], id))
	if errors.Is(err, pebble.ErrNotFound) {
		return chunkLoc{}, false, nil
	}
	if err != nil {
		return chunkLoc{}, false, fmt.Errorf("chunkstore: looking up %s: %w", id.Short(), err)
	}
	defer closer.Close()
	loc, err = decodeLoc(v)
	if err != nil {
		return chunkLoc{}, false, &chunk.CorruptChunkError{ID: id, Err: err}
	}
	return loc, true, nil
}

// Has reports whether the store holds id.
func (l *Local) Has(ctx context.Context, id chunk.ID) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := l.enter(); err != nil {
		return false, err
	}
	defer l.exit()
	_, ok, err := l.lookup(id)
	var ce *chunk.CorruptChunkError
	if errors.As(err, &ce) {
		return true, nil // held, badly: Get and Verify report it
	}
	return ok, err
}

// HasMany reports for each of ids whether the store holds it. It seeks one
// pebble iterator through the IDs in sorted order, which pebble turns into
// short forward steps instead of independent lookups.
func (l *Local) HasMany(ctx context.Context, ids []chunk.ID) ([]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := l.enter(); err != nil {
		return nil, err
	}
	defer l.exit()
	held := make([]bool, len(ids))
	var rest []int // indexes of ids not pending
	l.mu.RLock()
	for i, id := range ids {
		if _, ok := l.pending[id]; ok {
			held[i] = true
		} else {
			rest = append(rest, i)
		}
	}
	l.mu.RUnlock()
	if len(rest) == 0 {
		return held, nil
	}
	slices.SortFunc(rest, func(a, b int) int { return bytes.Compare(ids[a][:], ids[b][:]) })
	it, err := l.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: chunkLower, UpperBound: chunkUpper})
	if err != nil {
		return nil, fmt.Errorf("chunkstore: has many: %w", err)
	}
	defer it.Close()
	var k [chunkKeySize]byte
	for j, i := range rest {
		if j%1024 == 1023 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		key := appendChunkKey(k[:0], ids[i])
		held[i] = it.SeekGE(key) && bytes.Equal(it.Key(), key)
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("chunkstore: has many: %w", err)
	}
	return held, nil
}

// Get appends the plain content of id to dst, after checking its hash.
func (l *Local) Get(ctx context.Context, id chunk.ID, dst []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return dst, err
	}
	if err := l.enter(); err != nil {
		return dst, err
	}
	defer l.exit()
	loc, ok, err := l.lookup(id)
	if err != nil {
		return dst, err
	}
	if !ok {
		return dst, fmt.Errorf("%w: %s", chunk.ErrNotFound, id)
	}
	return l.read(id, loc, dst)
}

// read appends the verified plain content of the record at loc to dst. A
// record that cannot be what was written for id gives a *CorruptChunkError;
// other errors are I/O failures.
func (l *Local) read(id chunk.ID, loc chunkLoc, dst []byte) ([]byte, error) {
	bp := getBuf(int(loc.header(id).size()))
	defer putBuf(bp)
	h, stored, err := l.readRecord(id, loc, (*bp)[:loc.header(id).size()])
	if err != nil {
		return dst, err
	}
	n := len(dst)
	out, err := chunk.Decompress(dst, stored, h.Codec, int(h.PlainLen))
	if err != nil {
		return dst, &chunk.CorruptChunkError{ID: id, Err: err}
	}
	if chunk.Sum(out[n:]) != id {
		return out[:n], &chunk.CorruptChunkError{ID: id, Err: chunk.ErrHashMismatch}
	}
	return out, nil
}

// readRecord reads the record at loc into rec, which is exactly the
// record's size, and checks its header against the index entry; it returns
// the header and the stored bytes (aliasing rec), neither decoded nor
// verified. A record that cannot be id's gives a *CorruptChunkError; other
// errors are I/O failures.
func (l *Local) readRecord(id chunk.ID, loc chunkLoc, rec []byte) (recordHeader, []byte, error) {
	corrupt := func(err error) (recordHeader, []byte, error) {
		return recordHeader{}, nil, &chunk.CorruptChunkError{ID: id, Err: err}
	}
	f, err := l.packFile(loc.Pack)
	if errors.Is(err, fs.ErrNotExist) {
		return corrupt(fmt.Errorf("pack %08x is missing", loc.Pack))
	}
	if err != nil {
		return recordHeader{}, nil, err
	}
	if _, err := f.ReadAt(rec, loc.Offset); err != nil {
		if errors.Is(err, io.EOF) {
			return corrupt(fmt.Errorf("%w: pack %08x ends inside the record at %d", errBadRecord, loc.Pack, loc.Offset))
		}
		return recordHeader{}, nil, fmt.Errorf("chunkstore: reading %s from pack %08x: %w", id.Short(), loc.Pack, err)
	}
	h, stored, err := decodeRecord(rec)
	if err != nil {
		return corrupt(err)
	}
	if h != loc.header(id) {
		return corrupt(fmt.Errorf("%w: record header %+v does not match index %+v", errBadRecord, h, loc))
	}
	return h, stored, nil
}

// GetStored appends the stored bytes of id to dst, unverified. See
// RawReader.
func (l *Local) GetStored(ctx context.Context, id chunk.ID, dst []byte) ([]byte, Info, error) {
	if err := ctx.Err(); err != nil {
		return dst, Info{}, err
	}
	if err := l.enter(); err != nil {
		return dst, Info{}, err
	}
	defer l.exit()
	loc, ok, err := l.lookup(id)
	if err != nil {
		return dst, Info{}, err
	}
	if !ok {
		return dst, Info{}, fmt.Errorf("%w: %s", chunk.ErrNotFound, id)
	}
	// The record goes into dst's spare room and its stored bytes move down
	// over the header: one copy, as through a pooled buffer, and no buffer
	// of the store's own.
	n, size := len(dst), int(loc.header(id).size())
	buf := slices.Grow(dst, size)[:n+size]
	_, stored, err := l.readRecord(id, loc, buf[n:])
	if err != nil {
		return dst, Info{}, err
	}
	k := copy(buf[n:], stored)
	return buf[:n+k], loc.info(), nil
}

// packFile returns the open file of pack n, opening it on first use.
func (l *Local) packFile(n uint32) (*os.File, error) {
	l.filesMu.RLock()
	f := l.files[n]
	l.filesMu.RUnlock()
	if f != nil {
		return f, nil
	}
	l.filesMu.Lock()
	defer l.filesMu.Unlock()
	if f := l.files[n]; f != nil {
		return f, nil
	}
	f, err := os.Open(l.packPath(n))
	if err != nil {
		return nil, fmt.Errorf("chunkstore: opening pack: %w", err)
	}
	l.files[n] = f
	return f, nil
}

// Put stores data under id. See Store.
func (l *Local) Put(ctx context.Context, id chunk.ID, data []byte) error {
	return l.put(ctx, id, data, true)
}

// putSummed is Put for a caller that has just computed id from data
// itself (a backup's readers): hashing the chunk again would cost a
// sixth of a backup's CPU for nothing.
func (l *Local) putSummed(ctx context.Context, id chunk.ID, data []byte) error {
	return l.put(ctx, id, data, false)
}

func (l *Local) put(ctx context.Context, id chunk.ID, data []byte, check bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(data) > chunk.MaxChunkCeil {
		return fmt.Errorf("chunkstore: putting %s: %w: %d bytes", id.Short(), chunk.ErrTooLarge, len(data))
	}
	if err := l.enter(); err != nil {
		return err
	}
	defer l.exit()
	if check && chunk.Sum(data) != id {
		return fmt.Errorf("chunkstore: putting %s: %w", id.Short(), ErrIDMismatch)
	}
	_, held, err := l.lookup(id)
	var ce *chunk.CorruptChunkError
	if errors.As(err, &ce) {
		// A bad index entry: write the chunk again, the new entry replaces it.
		held, err = false, nil
	}
	if err != nil || held {
		return err
	}

	bp := getBuf(recordHeaderSize + len(data) + len(data)>>6 + 64)
	rec, codec := chunk.Compress((*bp)[:recordHeaderSize], data, l.opts.Level)
	h := recordHeader{ID: id, Codec: codec, PlainLen: uint32(len(data)), StoredLen: uint32(len(rec) - recordHeaderSize)}
	putRecordHeader(rec, h)
	flushNow, err := l.append(h, rec)
	*bp = rec[:0]
	putBuf(bp)
	if err != nil || !flushNow {
		return err
	}
	if err := l.flush(ctx); err != nil {
		return fmt.Errorf("chunkstore: flushing after put: %w", err)
	}
	return nil
}

// append writes one encoded record to the current pack and makes it
// readable. It reports whether enough is unflushed to flush now.
func (l *Local) append(h recordHeader, rec []byte) (flushNow bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failed != nil {
		return false, l.failed
	}
	if _, ok := l.pending[h.ID]; ok {
		return false, nil // another Put of the same chunk won the race
	}
	if err := l.rollLocked(int64(len(rec))); err != nil {
		return false, err
	}
	// Writes stay under mu: a flush records as durable the length it saw
	// under mu, so every byte below it must have been written by then.
	if _, err := l.cur.WriteAt(rec, l.curOff); err != nil {
		// Nothing points at the partial record; the next write goes over
		// it, and if none does, it is a torn tail on the next open.
		return false, fmt.Errorf("chunkstore: writing pack %08x: %w", l.curNum, err)
	}
	loc := chunkLoc{Pack: l.curNum, Offset: l.curOff, StoredLen: h.StoredLen, PlainLen: h.PlainLen, Codec: h.Codec}
	l.pending[h.ID] = loc
	l.unflushed = append(l.unflushed, pendingChunk{id: h.ID, loc: loc})
	l.curOff += int64(len(rec))
	l.unflushedBytes += int64(len(rec))
	l.dirty[l.curNum] = l.curOff
	return l.unflushedBytes >= l.opts.FlushBytes, nil
}

// rollLocked starts a new pack if there is none or the current one cannot
// take need more bytes. The new pack is registered in the index (durable
// length 0) before its file exists, so that on open a pack file unknown to
// the index is never mistaken for ours. It happens once per PackSize bytes.
func (l *Local) rollLocked(need int64) error {
	if l.cur != nil && (l.curOff == 0 || l.curOff+need <= l.opts.PackSize) {
		return nil
	}
	n := l.nextPack
	if err := l.db.Set(packKey(n), appendPackLen(nil, 0), pebble.Sync); err != nil {
		return l.failLocked(fmt.Errorf("chunkstore: registering pack %08x: %w", n, err))
	}
	l.nextPack++
	f, err := os.OpenFile(l.packPath(n), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("chunkstore: creating pack: %w", err)
	}
	if err := syncDir(l.packsDir()); err != nil {
		f.Close()
		return l.failLocked(err)
	}
	l.filesMu.Lock()
	l.files[n] = f
	l.filesMu.Unlock()
	l.cur, l.curNum, l.curOff = f, n, 0
	return nil
}

// failLocked makes err sticky: after a failed sync nobody knows what the
// disk holds, so the store refuses further writes until it is reopened
// (which cuts back to what the index says is durable).
func (l *Local) failLocked(err error) error {
	if l.failed == nil {
		l.failed = err
		l.log.Error("store failed; writes refused until reopened", "err", err)
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("chunkstore: syncing directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("chunkstore: syncing directory: %w", err)
	}
	return nil
}

// Flush makes every chunk Put so far durable.
func (l *Local) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := l.enter(); err != nil {
		return err
	}
	defer l.exit()
	return l.flush(ctx)
}

// flush syncs the packs written since the last flush, then commits their
// chunks and durable lengths to the index in one synced batch. Puts carry on
// meanwhile: mu is held only to take the unflushed set.
func (l *Local) flush(ctx context.Context) error {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	if l.failed != nil {
		l.mu.Unlock()
		return l.failed
	}
	chunks, dirty := l.unflushed, l.dirty
	l.unflushed, l.dirty, l.unflushedBytes = nil, map[uint32]int64{}, 0
	l.mu.Unlock()
	if len(dirty) == 0 {
		return nil
	}
	// Past this point the snapshot must reach the index or the store fails:
	// no cancellation.
	if err := l.commit(chunks, dirty); err != nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.failLocked(err)
	}
	l.mu.Lock()
	for _, c := range chunks {
		delete(l.pending, c.id)
	}
	l.mu.Unlock()
	return nil
}

func (l *Local) commit(chunks []pendingChunk, dirty map[uint32]int64) error {
	for n := range dirty {
		f, err := l.packFile(n)
		if err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("chunkstore: syncing pack %08x: %w", n, err)
		}
	}
	b := l.db.NewBatchWithSize(len(chunks)*(chunkKeySize+locSize+16) + len(dirty)*32)
	defer b.Close()
	var k [chunkKeySize]byte
	var v [locSize]byte
	for _, c := range chunks {
		// Set copies key and value into the batch.
		if err := b.Set(appendChunkKey(k[:0], c.id), appendLoc(v[:0], c.loc), nil); err != nil {
			return fmt.Errorf("chunkstore: indexing: %w", err)
		}
	}
	for n, length := range dirty {
		if err := b.Set(packKey(n), appendPackLen(nil, length), nil); err != nil {
			return fmt.Errorf("chunkstore: indexing: %w", err)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("chunkstore: committing index: %w", err)
	}
	return nil
}

// Iterate calls fn for every durable chunk in ID order. fn may call the
// store's other methods.
func (l *Local) Iterate(ctx context.Context, fn func(chunk.ID, Info) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := l.enter(); err != nil {
		return err
	}
	defer l.exit()
	return l.iterateIndex(ctx, func(id chunk.ID, loc chunkLoc, err error) error {
		if err != nil {
			return err
		}
		return fn(id, loc.info())
	})
}

// iterateIndex walks the chunk keys in order. An entry that does not
// decode is passed to fn as a *CorruptChunkError.
func (l *Local) iterateIndex(ctx context.Context, fn func(chunk.ID, chunkLoc, error) error) error {
	it, err := l.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: chunkLower, UpperBound: chunkUpper})
	if err != nil {
		return fmt.Errorf("chunkstore: iterating index: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		id, ok := parseChunkKey(it.Key())
		if !ok {
			return fmt.Errorf("chunkstore: iterating index: %w: key %x", errBadIndex, it.Key())
		}
		loc, err := decodeLoc(it.Value())
		if err != nil {
			err = &chunk.CorruptChunkError{ID: id, Err: err}
		}
		if err := fn(id, loc, err); err != nil {
			return err
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("chunkstore: iterating index: %w", err)
	}
	return nil
}

// Verify reads back every chunk, durable or not yet flushed, and checks its
// hash. It does not flush. An I/O error other than corruption stops it.
func (l *Local) Verify(ctx context.Context, bad func(chunk.ID, error)) (VerifyStats, error) {
	var st VerifyStats
	if err := ctx.Err(); err != nil {
		return st, err
	}
	if err := l.enter(); err != nil {
		return st, err
	}
	defer l.exit()
	// Take the unflushed set before opening the index iterator: a chunk
	// leaving it has been committed, so the iterator sees it.
	l.mu.RLock()
	unflushed := make(map[chunk.ID]chunkLoc, len(l.pending))
	for id, loc := range l.pending {
		unflushed[id] = loc
	}
	l.mu.RUnlock()

	var buf []byte
	check := func(id chunk.ID, loc chunkLoc, err error) error {
		st.Chunks++
		if err == nil {
			st.PlainBytes += int64(loc.PlainLen)
			buf, err = l.read(id, loc, buf[:0])
		}
		var ce *chunk.CorruptChunkError
		if errors.As(err, &ce) {
			st.Corrupt++
			l.log.Warn("corrupt chunk", "chunk", id.String(), "err", err)
			if bad != nil {
				bad(id, err)
			}
			return nil
		}
		return err
	}
	err := l.iterateIndex(ctx, func(id chunk.ID, loc chunkLoc, err error) error {
		delete(unflushed, id)
		return check(id, loc, err)
	})
	if err != nil {
		return st, err
	}
	for id, loc := range unflushed {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		if err := check(id, loc, nil); err != nil {
			return st, err
		}
	}
	return st, nil
}

// Close flushes and releases the store. Calls in progress finish first;
// later calls get ErrClosed. A second Close returns nil.
func (l *Local) Close() error {
	l.stateMu.Lock()
	if l.closed {
		l.stateMu.Unlock()
		return nil
	}
	l.closed = true
	for l.active > 0 {
		l.stateCond.Wait()
	}
	l.stateMu.Unlock()
	return errors.Join(l.flush(context.Background()), l.release())
}

// release closes the files and the index without flushing.
func (l *Local) release() error {
	var errs []error
	l.filesMu.Lock()
	for n, f := range l.files {
		if err := f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("chunkstore: closing pack %08x: %w", n, err))
		}
	}
	l.files = nil
	l.filesMu.Unlock()
	if err := l.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("chunkstore: closing index: %w", err))
	}
	return errors.Join(errs...)
}

// Buffers for records, pooled: Put and Get would otherwise allocate a chunk's
// worth for each call. Buffers above maxPooledBuf are left to the GC so that
// a few huge chunks do not pin memory.
const maxPooledBuf = 1<<20 + recordHeaderSize

var bufPool = sync.Pool{New: func() any { return new([]byte) }}

func getBuf(n int) *[]byte {
	bp := bufPool.Get().(*[]byte)
	if cap(*bp) < n {
		*bp = make([]byte, 0, n)
	}
	return bp
}

func putBuf(bp *[]byte) {
	if cap(*bp) > maxPooledBuf {
		return
	}
	*bp = (*bp)[:0]
	bufPool.Put(bp)
}
