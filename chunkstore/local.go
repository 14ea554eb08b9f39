package chunkstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/chunkstore/objstore"
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
	// MaxMerge caps the entries one merge of index runs may write (0: no
	// cap). A writer whose flushes must stay short (wal-push, under
	// PostgreSQL's archive_command) leaves bigger merges to other writers.
	MaxMerge int
	// WriteOnly stores every chunk Put that this store has not written
	// itself, without looking at the index: a writer whose chunks must
	// not depend on what another process may remove meanwhile (wal-push,
	// beside a prune). Reads still work; the runs are listed on first use.
	WriteOnly bool
	// Remote, if set, holds the store's packs and index runs as objects
	// (remote.go); the directory then caches runs and spools the packs
	// being written. Nil: they are files in the directory.
	Remote objstore.Backend
	// BlockCacheBytes bounds the cache of pack blocks read from Remote
	// (blockcache.go; default DefaultBlockCacheBytes).
	BlockCacheBytes int64
	// DiskCacheBytes bounds the blocks read from Remote that this host
	// keeps on disk, in DIR/blocks, for every process reading the store
	// (blockdisk.go): 0 takes $PGPORTER_CACHE_SIZE, else
	// DefaultDiskCacheBytes; negative, or a variable of 0, keeps none.
	DiskCacheBytes int64
	// Key, if set, encrypts the store (docs/design/0010-repository-
	// encryption.md): its records are sealed and its index runs keyed by
	// object IDs and MACed, and every read authenticates before it uses a
	// byte. A store is created encrypted or not, and opened only the same
	// way: a key given to a plain store, none to an encrypted one, or
	// another store's key is refused at open. Nil: a plain store.
	Key *crypt.MasterKey
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
		if o.Remote != nil {
			o.PackSize = DefaultRemotePackSize
		}
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
	case o.MaxMerge < 0:
		return fmt.Errorf("chunkstore: max merge %d is negative", o.MaxMerge)
	case o.BlockCacheBytes < 0:
		return fmt.Errorf("chunkstore: block cache bytes %d is negative", o.BlockCacheBytes)
	}
	return nil
}

// Local is a chunk store in a local directory:
//
//	DIR/format               "pgporter-chunkstore-2"
//	DIR/packs/<hex>.pack     pack files of chunk records (pack.go)
//	DIR/idx/<hex>.idx        immutable index runs: chunk ID -> record location (runs.go)
//	DIR/compact.lock         held (flock) by the one process merging runs
//
// Any number of processes may open a directory at once, to read and to
// write (docs/design/0007-repository-concurrency.md). Each writer appends
// only to pack files it created itself, under fresh random names. A Put
// compresses the chunk (in the caller's goroutine, outside any lock) and
// appends it to the writer's current pack; it is readable at once in that
// process, through an in-memory set of unflushed chunks. Flush syncs the
// packs and only then writes their new chunks as a new index run (synced,
// then renamed into place), so no run ever points at bytes that a crash can
// lose. What a crashed writer appended past its last run is unreferenced:
// nobody appends to its pack again, and nothing reads it.
//
// A process sees the runs it lists; it lists them again when a Get misses,
// and when a Has misses after the index directory changed. A Local is safe
// for concurrent use.
type Local struct {
	dir    string
	opts   LocalOptions
	remote objstore.Backend // opts.Remote
	key    *crypt.MasterKey // opts.Key; nil in a plain store
	log    *slog.Logger
	owner  owner

	stateMu   sync.Mutex // guards closed, active
	stateCond *sync.Cond // on stateMu; signalled when active drops to zero
	closed    bool
	active    int // calls in progress; Close waits for them

	// flushMu serialises flushes and compactions. Held across fsync and
	// the run's write; never taken while holding mu.
	flushMu sync.Mutex

	mu             sync.RWMutex          // guards pending, unflushed, unflushedBytes, cur, curNum, curOff, dirty, failed
	pending        map[chunk.ID]chunkLoc // chunks in a pack but not yet in a run, so Get finds them
	unflushed      []runEntry            // the chunks of pending not yet taken by a flush, in write order
	unflushedBytes int64
	cur            *os.File // pack being appended to; nil until the first Put needs one
	curNum         uint64
	curOff         int64
	dirty          map[uint64]int64 // packs written since the last flush -> their length
	failed         error            // sticky: a sync or a run's write failed, so writes are refused

	runsMu    sync.RWMutex     // guards runs, runsMTime, damaged
	runs      map[string]*run  // the runs this process has open, by name
	damaged   map[string]error // runs that failed their checks, left alone
	runsMTime time.Time        // of the index directory when runs were listed
	// statAfter is when runsChanged may look at the directory again (unix
	// nanoseconds): a backup's many misses cost one stat per interval.
	statAfter atomic.Int64

	filesMu sync.RWMutex        // guards files
	files   map[uint64]*os.File // open pack files, for reads (and cur, for writes too)

	written atomic.Int64 // bytes of records appended to packs by this store

	// With a Remote: sealed packs being uploaded (guarded by mu), at most
	// maxUploads at once, each in a goroutine that uploadWG tracks.
	uploads   map[uint64]*packUpload
	uploadSem chan struct{}
	uploadWG  sync.WaitGroup
	rtt       atomic.Int64 // smoothed duration of a block's read from the Remote, ns
	blocks    *blockCache  // with a Remote: blocks of packs read
}

var (
	_ Store     = (*Local)(nil)
	_ RawReader = (*Local)(nil)
)

// storeFormat names this layout of a store's files, records and runs; it is
// written to DIR/format. An encrypted store's is sealedFormat (format.go).
const storeFormat = "pgporter-chunkstore-2"

// OpenLocal opens the store in dir, creating it if needed. A store in the
// previous layout (a pebble index) is converted once, by the first process
// that opens it.
func OpenLocal(dir string, opts LocalOptions) (*Local, error) {
	return openLocal(context.Background(), dir, opts)
}

// openLocal is OpenLocal whose requests to a Remote end with ctx.
func openLocal(ctx context.Context, dir string, opts LocalOptions) (*Local, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("chunkstore: creating store: %w", err)
	}
	o, err := ownerOf(dir)
	if err != nil {
		return nil, err
	}
	l := &Local{
		dir:     dir,
		opts:    opts,
		remote:  opts.Remote,
		key:     opts.Key,
		log:     opts.Logger.With("store", dir),
		owner:   o,
		pending: map[chunk.ID]chunkLoc{},
		dirty:   map[uint64]int64{},
		runs:    map[string]*run{},
		files:   map[uint64]*os.File{},
		uploads: map[uint64]*packUpload{},
	}
	if l.remote != nil {
		l.uploadSem = make(chan struct{}, maxUploads)
		l.blocks = newBlockCache(l.remote, cmp.Or(opts.BlockCacheBytes, DefaultBlockCacheBytes))
		l.blocks.fetched = l.noteRTT
		if n, err := opts.diskCacheBytes(); err != nil {
			return nil, err
		} else if n > 0 {
			l.blocks.disk = newDiskBlocks(filepath.Join(dir, "blocks"), n, o, l.log)
		}
	}
	l.stateCond = sync.NewCond(&l.stateMu)
	for _, sub := range []string{l.packsDir(), l.runsDir()} {
		if err := o.mkdir(sub, dir); err != nil {
			return nil, fmt.Errorf("creating store: %w", err)
		}
	}
	if l.remote != nil {
		// A cache's stale spools go; the store's format is the object's.
		if err := l.cleanSpools(); err != nil {
			return nil, err
		}
		if err := l.checkRemoteFormat(ctx); err != nil {
			return nil, err
		}
	} else {
		if l.key == nil {
			if err := l.migrate(); err != nil {
				return nil, err
			}
		} else if _, err := os.Stat(filepath.Join(dir, "index")); err == nil {
			return nil, fmt.Errorf("chunkstore: %s holds a store of format %q, which is not encrypted: %w", dir, v1Format, ErrNotEncrypted)
		}
		if err := l.checkFormat(); err != nil {
			return nil, err
		}
	}
	if !opts.WriteOnly {
		if err := l.refresh(ctx); err != nil {
			return nil, errors.Join(err, l.release())
		}
	}
	return l, nil
}

func (l *Local) packsDir() string         { return filepath.Join(l.dir, "packs") }
func (l *Local) runsDir() string          { return filepath.Join(l.dir, "idx") }
func (l *Local) packPath(n uint64) string { return filepath.Join(l.packsDir(), packName(n)) }

// checkFormat refuses a store of a layout this build does not read, and
// records the layout in a new one.
func (l *Local) checkFormat() error {
	p := filepath.Join(l.dir, "format")
	b, err := os.ReadFile(p)
	if err == nil {
		return l.checkFormatBody(l.dir, b)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("chunkstore: reading the store's format: %w", err)
	}
	f, err := os.CreateTemp(l.dir, ".tmp-format-")
	if err != nil {
		return fmt.Errorf("chunkstore: recording the store's format: %w", err)
	}
	_, err = f.Write(l.formatBody())
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = l.owner.file(f)
	}
	if err == nil {
		err = f.Sync()
	}
	err = errors.Join(err, f.Close())
	if err == nil {
		// Linked, never replaced: of processes creating the store at once,
		// one records its kind and the others check theirs against it.
		err = os.Link(f.Name(), p)
	}
	_ = os.Remove(f.Name())
	if errors.Is(err, fs.ErrExist) {
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("chunkstore: reading the store's format: %w", err)
		}
		return l.checkFormatBody(l.dir, b)
	}
	if err != nil {
		return fmt.Errorf("chunkstore: recording the store's format: %w", err)
	}
	return syncDir(l.dir)
}

// refresh lists the index runs again: it opens the new ones and drops those
// a compaction removed. New runs are opened (and checked) outside the lock,
// so that lookups go on meanwhile.
func (l *Local) refresh(ctx context.Context) error {
	// A run that vanished between the listing and its opening was merged
	// into a run linked before it was removed, which a listing taken
	// after the merge has: listed again, up to a few times, lest its
	// chunks read as missing until the next refresh.
	for tries := 1; ; tries++ {
		vanished, err := l.refreshOnce(ctx)
		if err != nil || !vanished || tries == 4 {
			return err
		}
	}
}

// refreshOnce is one listing of refresh: it reports whether a listed run
// was gone by the time it was opened.
func (l *Local) refreshOnce(ctx context.Context) (vanished bool, err error) {
	var (
		names []string
		mtime time.Time
	)
	if l.remote != nil {
		if names, err = l.listRemoteRuns(ctx); err != nil {
			return false, err
		}
		l.pruneRunCache(names)
	} else {
		fi, err := os.Stat(l.runsDir())
		if err != nil {
			return false, fmt.Errorf("chunkstore: listing index runs: %w", err)
		}
		if names, err = listRunNames(l.runsDir()); err != nil {
			return false, err
		}
		mtime = fi.ModTime()
	}
	l.runsMu.RLock()
	var fresh []string
	for _, name := range names {
		if _, ok := l.runs[name]; !ok {
			fresh = append(fresh, name)
		}
	}
	l.runsMu.RUnlock()
	opened := map[string]*run{}
	damaged := map[string]error{}
	for _, name := range fresh {
		var (
			r   *run
			err error
		)
		if l.remote != nil {
			r, err = l.openRemoteRun(ctx, name)
		} else {
			r, err = openRun(filepath.Join(l.runsDir(), name), l.key)
		}
		switch {
		case errors.Is(err, fs.ErrNotExist):
			vanished = true // merged and removed since the listing
			continue
		case errors.Is(err, errBadRun):
			// Never delete what we cannot account for; its chunks read as
			// missing, and Verify counts the file.
			l.log.Error("index run damaged: left alone, not used", "run", name, "err", err)
			damaged[name] = err
			continue
		case err != nil:
			for _, r := range opened {
				r.release()
			}
			return false, err
		}
		opened[name] = r
	}
	l.runsMu.Lock()
	defer l.runsMu.Unlock()
	keep := make(map[string]*run, len(names))
	for _, name := range names {
		if r, ok := l.runs[name]; ok {
			keep[name] = r
		} else if r, ok := opened[name]; ok {
			keep[name] = r
			delete(opened, name)
		}
	}
	for _, r := range opened {
		r.release() // a concurrent refresh got there first
	}
	for name, r := range l.runs {
		if _, ok := keep[name]; !ok {
			r.release()
		}
	}
	l.runs, l.runsMTime = keep, mtime
	if l.damaged == nil {
		l.damaged = map[string]error{}
	}
	for name, err := range damaged {
		l.damaged[name] = err
	}
	return vanished, nil
}

// Damaged returns the index runs that failed their checks (as of the last
// listing) with why: their chunks read as missing.
func (l *Local) Damaged() map[string]error {
	l.runsMu.RLock()
	defer l.runsMu.RUnlock()
	return maps.Clone(l.damaged)
}

// CheckLocations checks, without reading any chunk, that every indexed
// record lies inside an existing pack: the cheap half of a scrub. bad gets
// each chunk whose record cannot be there.
func (l *Local) CheckLocations(ctx context.Context, bad func(chunk.ID, error)) (int, error) {
	if err := l.enter(); err != nil {
		return 0, err
	}
	defer l.exit()
	sizes := map[uint64]int64{}
	n := 0
	err := l.iterateRuns(ctx, func(k chunk.ID, loc chunkLoc, err error) error {
		n++
		if err != nil {
			bad(l.knownID(k), err)
			return nil
		}
		size, ok := sizes[loc.Pack]
		if !ok {
			if size, err = l.packSize(ctx, loc.Pack); err != nil {
				return err
			}
			sizes[loc.Pack] = size
		}
		switch {
		case size < 0:
			bad(l.knownID(k), l.corruptAt(k, fmt.Errorf("pack %s is missing", packName(loc.Pack))))
		case loc.Offset+loc.recordSize() > size:
			bad(l.knownID(k), l.corruptAt(k, fmt.Errorf("%w: pack %s ends at %d, inside the record at %d", errBadRecord, packName(loc.Pack), size, loc.Offset)))
		}
		return nil
	})
	return n, err
}

// statEvery is how often runsChanged looks at the index directory. A Has
// that misses a chunk another process flushed less than this ago costs a
// duplicate record, never a wrong read: Get lists the runs on every miss.
const statEvery = 100 * time.Millisecond

// remoteListEvery is statEvery for a store on a Remote, where looking
// means listing the runs.
const remoteListEvery = time.Second

// runsChanged reports whether the index directory changed since the runs
// were listed; it looks at most once per statEvery.
func (l *Local) runsChanged() bool {
	now := time.Now().UnixNano()
	if now < l.statAfter.Load() {
		return false
	}
	if l.remote != nil {
		// No cheap change marker on an object store: list again, at most
		// once per remoteListEvery.
		l.statAfter.Store(now + int64(remoteListEvery))
		return true
	}
	l.statAfter.Store(now + int64(statEvery))
	fi, err := os.Stat(l.runsDir())
	if err != nil {
		return true
	}
	l.runsMu.RLock()
	defer l.runsMu.RUnlock()
	return !fi.ModTime().Equal(l.runsMTime)
}

// snapshot returns the open runs, each acquired: the caller releases them.
func (l *Local) snapshot() []*run {
	l.runsMu.RLock()
	defer l.runsMu.RUnlock()
	rs := make([]*run, 0, len(l.runs))
	for _, r := range l.runs {
		r.acquire()
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(a, b *run) int { return strings.Compare(a.name, b.name) })
	return rs
}

func releaseAll(rs []*run) {
	for _, r := range rs {
		r.release()
	}
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

// indexKey is what the store's runs and pending set are keyed by: the
// chunk's object ID in an encrypted store, so that no plain ID reaches a
// pack or a run, and the ID itself in a plain one. It keeps chunk.ID's type
// because runs hold either; only Local translates, here.
func (l *Local) indexKey(id chunk.ID) chunk.ID {
	if l.key == nil {
		return id
	}
	return chunk.ID(l.key.ObjectID(id))
}

// knownID is the chunk ID a walk of the runs knows for index key k before
// reading its record: k itself in a plain store, none (zero) in an
// encrypted one.
func (l *Local) knownID(k chunk.ID) chunk.ID {
	if l.key == nil {
		return k
	}
	return chunk.ID{}
}

// corruptAt is the error for the record indexed under k when its plain ID
// is not known: an encrypted store names the object ID in the text, never
// as a chunk ID.
func (l *Local) corruptAt(k chunk.ID, err error) *chunk.CorruptChunkError {
	if l.key == nil {
		return &chunk.CorruptChunkError{ID: k, Err: err}
	}
	return &chunk.CorruptChunkError{Err: fmt.Errorf("object %s: %w", crypt.ObjectID(k), err)}
}

// lookup finds where id, indexed under k (indexKey), is stored. The pending
// set is checked before the runs: a flush removes chunks from it only after
// their run is open, so a chunk this process wrote is always in one or the
// other. A miss lists the runs again when relist says so, to see other
// processes' writes.
func (l *Local) lookup(ctx context.Context, id, k chunk.ID, relist func() bool) (chunkLoc, bool, error) {
	l.mu.RLock()
	loc, ok := l.pending[k]
	l.mu.RUnlock()
	if ok {
		return loc, true, nil
	}
	loc, ok, err := l.lookupRuns(k)
	if !ok && err == nil && relist != nil && relist() {
		if err := l.refresh(ctx); err != nil {
			return chunkLoc{}, false, err
		}
		loc, ok, err = l.lookupRuns(k)
	}
	// errors.AsType, not errors.As: the latter's target escapes to the
	// heap, which every lookup (a Get, a Put) would pay.
	if ce, bad := errors.AsType[*chunk.CorruptChunkError](err); bad && l.key != nil {
		err = &chunk.CorruptChunkError{ID: id, Err: ce.Err}
	}
	return loc, ok, err
}

// lookupRuns looks index key k up in the open runs.
func (l *Local) lookupRuns(k chunk.ID) (chunkLoc, bool, error) {
	l.runsMu.RLock()
	defer l.runsMu.RUnlock()
	for _, r := range l.runs {
		if loc, ok, err := r.find(k); ok {
			return loc, ok, err
		}
	}
	return chunkLoc{}, false, nil
}

func always() bool { return true }

// Has reports whether the store holds id.
func (l *Local) Has(ctx context.Context, id chunk.ID) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := l.enter(); err != nil {
		return false, err
	}
	defer l.exit()
	_, ok, err := l.lookup(ctx, id, l.indexKey(id), l.runsChanged)
	if _, bad := errors.AsType[*chunk.CorruptChunkError](err); bad {
		return true, nil // held, badly: Get and Verify report it
	}
	return ok, err
}

// HasMany reports for each of ids whether the store holds it. The runs
// are listed again at most once, if the index directory changed.
func (l *Local) HasMany(ctx context.Context, ids []chunk.ID) ([]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := l.enter(); err != nil {
		return nil, err
	}
	defer l.exit()
	held := make([]bool, len(ids))
	keys := ids
	if l.key != nil {
		keys = make([]chunk.ID, len(ids))
		for i, id := range ids {
			keys[i] = l.indexKey(id)
		}
	}
	check := func(relisted bool) (misses int, err error) {
		for i, id := range ids {
			if held[i] {
				continue
			}
			if i%1024 == 1023 {
				if err := ctx.Err(); err != nil {
					return 0, err
				}
			}
			var ok bool
			if relisted {
				_, ok, err = l.lookupRuns(keys[i])
			} else {
				_, ok, err = l.lookup(ctx, id, keys[i], nil)
			}
			if _, bad := errors.AsType[*chunk.CorruptChunkError](err); bad {
				ok, err = true, nil // held, badly: Get and Verify report it
			}
			if err != nil {
				return 0, fmt.Errorf("chunkstore: has many: %w", err)
			}
			held[i] = ok
			if !ok {
				misses++
			}
		}
		return misses, nil
	}
	misses, err := check(false)
	if err != nil {
		return nil, err
	}
	if misses > 0 && l.runsChanged() {
		if err := l.refresh(ctx); err != nil {
			return nil, err
		}
		if _, err := check(true); err != nil {
			return nil, err
		}
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
	k := l.indexKey(id)
	loc, ok, err := l.lookup(ctx, id, k, always)
	if err != nil {
		return dst, err
	}
	if !ok {
		return dst, fmt.Errorf("%w: %s", chunk.ErrNotFound, id)
	}
	_, out, err := l.read(ctx, id, k, loc, dst)
	return out, err
}

// read appends the verified plain content of the record at loc, indexed
// under k, to dst, and returns the chunk's ID with it. id is the chunk's ID
// if the caller knows it, else zero (the record's own, once it is opened and
// authenticated, is then checked against k). A record that cannot be what
// was written for k gives a *CorruptChunkError; other errors are I/O
// failures.
func (l *Local) read(ctx context.Context, id, k chunk.ID, loc chunkLoc, dst []byte) (chunk.ID, []byte, error) {
	size := loc.recordSize()
	bp := getBuf(int(size))
	defer putBuf(bp)
	h, stored, err := l.readRecord(ctx, id, k, loc, (*bp)[:size], false)
	if err != nil {
		return id, dst, err
	}
	id = h.ID
	n := len(dst)
	out, err := chunk.Decompress(dst, stored, h.Codec, int(h.PlainLen))
	if err != nil {
		return id, dst, &chunk.CorruptChunkError{ID: id, Err: err}
	}
	if chunk.Sum(out[n:]) != id {
		return id, out[:n], &chunk.CorruptChunkError{ID: id, Err: chunk.ErrHashMismatch}
	}
	return id, out, nil
}

// readRecord reads the record at loc, indexed under k, into rec, which is
// exactly the record's size, and checks it against the index entry: a plain
// record's header; a sealed record's clear header, then (unless clearOnly)
// its seal, bound to k, and its inner header, whose chunk ID must have k for
// object ID. It returns the plain header and the stored bytes (aliasing
// rec; a sealed record is opened in place), neither decoded nor verified;
// with clearOnly, a sealed record's header is zero and rec stays sealed. id
// names the chunk in errors, as read's. A record that cannot be k's gives a
// *CorruptChunkError, never its bytes; other errors are I/O failures.
func (l *Local) readRecord(ctx context.Context, id, k chunk.ID, loc chunkLoc, rec []byte, clearOnly bool) (recordHeader, []byte, error) {
	corrupt := func(err error) (recordHeader, []byte, error) {
		if id == (chunk.ID{}) {
			return recordHeader{}, nil, l.corruptAt(k, err)
		}
		return recordHeader{}, nil, &chunk.CorruptChunkError{ID: id, Err: err}
	}
	if err := l.readPack(ctx, loc.Pack, rec, loc.Offset); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return corrupt(fmt.Errorf("pack %08x is missing", loc.Pack))
		}
		if errors.Is(err, io.EOF) {
			return corrupt(fmt.Errorf("%w: pack %08x ends inside the record at %d", errBadRecord, loc.Pack, loc.Offset))
		}
		return recordHeader{}, nil, fmt.Errorf("chunkstore: reading %s from pack %08x: %w", id.Short(), loc.Pack, err)
	}
	if !loc.Sealed {
		h, stored, err := decodeRecord(rec)
		if err != nil {
			return corrupt(err)
		}
		if h != loc.header(k) {
			return corrupt(fmt.Errorf("%w: record header %+v does not match index %+v", errBadRecord, h, loc))
		}
		return h, stored, nil
	}
	sh, err := decodeSealedRecordHeader(rec)
	if err != nil {
		return corrupt(err)
	}
	if sh.OID != crypt.ObjectID(k) || sh.SealedLen != loc.StoredLen {
		return corrupt(fmt.Errorf("%w: record of object %s, %d bytes sealed, where the index has object %s, %d bytes",
			errBadRecord, sh.OID, sh.SealedLen, crypt.ObjectID(k), loc.StoredLen))
	}
	if clearOnly {
		return recordHeader{}, nil, nil
	}
	inner, err := l.key.OpenInPlace(crypt.KindChunk, string(k[:]), rec[sealedHeaderSize:])
	if err != nil {
		return corrupt(fmt.Errorf("%w: %w", errBadRecord, err))
	}
	h, stored, err := decodeInner(inner)
	if err != nil {
		return corrupt(err)
	}
	if l.indexKey(h.ID) != k {
		return corrupt(fmt.Errorf("%w: the sealed record holds chunk %s, whose object ID is not the index's", errBadRecord, h.ID.Short()))
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
	k := l.indexKey(id)
	loc, ok, err := l.lookup(ctx, id, k, always)
	if err != nil {
		return dst, Info{}, err
	}
	if !ok {
		return dst, Info{}, fmt.Errorf("%w: %s", chunk.ErrNotFound, id)
	}
	// The record goes into dst's spare room (a sealed one is opened there)
	// and its stored bytes move down over the header: one copy, as through
	// a pooled buffer, and no buffer of the store's own.
	n, size := len(dst), int(loc.recordSize())
	buf := slices.Grow(dst, size)[:n+size]
	h, stored, err := l.readRecord(ctx, id, k, loc, buf[n:], false)
	if err != nil {
		return dst, Info{}, err
	}
	m := copy(buf[n:], stored)
	return buf[:n+m], h.info(), nil
}

// packFile returns the open file of pack n, opening it on first use.
func (l *Local) packFile(n uint64) (*os.File, error) {
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
	var (
		held bool
		err  error
		k    = l.indexKey(id)
	)
	if l.opts.WriteOnly {
		l.mu.RLock()
		_, held = l.pending[k]
		l.mu.RUnlock()
	} else {
		_, held, err = l.lookup(ctx, id, k, l.runsChanged)
	}
	if _, bad := errors.AsType[*chunk.CorruptChunkError](err); bad {
		// A bad index entry: write the chunk again, the new entry replaces it.
		held, err = false, nil
	}
	if err != nil || held {
		return err
	}

	var (
		bp  *[]byte
		rec []byte
		loc chunkLoc
	)
	if l.key == nil {
		bp = getBuf(recordHeaderSize + len(data) + len(data)>>6 + 64)
		var codec chunk.Codec
		rec, codec = chunk.Compress((*bp)[:recordHeaderSize], data, l.opts.Level)
		h := recordHeader{ID: id, Codec: codec, PlainLen: uint32(len(data)), StoredLen: uint32(len(rec) - recordHeaderSize)}
		putRecordHeader(rec, h)
		loc = chunkLoc{StoredLen: h.StoredLen, PlainLen: h.PlainLen, Codec: h.Codec}
	} else {
		bp, rec, loc = l.sealRecord(id, k, data)
	}
	flushNow, err := l.append(k, loc, rec)
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

// sealedPrefix is what a sealed record's buffer holds before the stored
// bytes: the clear header, the seal's header, the inner header.
const sealedPrefix = sealedHeaderSize + crypt.HeaderSize + innerHeaderSize

// sealRecord encodes data, the chunk id indexed under k, as a sealed record
// in a pooled buffer: compressed after room for the headers, then sealed in
// place. It returns the buffer (for putBuf), the record and its location
// but for the pack and offset.
func (l *Local) sealRecord(id, k chunk.ID, data []byte) (*[]byte, []byte, chunkLoc) {
	bp := getBuf(sealedPrefix + len(data) + len(data)>>6 + 64 + crypt.TagSize)
	rec, codec := chunk.Compress((*bp)[:sealedPrefix], data, l.opts.Level)
	inner := rec[sealedHeaderSize+crypt.HeaderSize:]
	putInner(inner, recordHeader{ID: id, Codec: codec, PlainLen: uint32(len(data))})
	rec = l.key.Seal(rec[:sealedHeaderSize], crypt.KindChunk, string(k[:]), inner)
	sh := sealedHeader{OID: crypt.ObjectID(k), SealedLen: uint32(len(rec) - sealedHeaderSize)}
	putSealedRecordHeader(rec, sh)
	return bp, rec, chunkLoc{StoredLen: sh.SealedLen, Sealed: true}
}

// append writes one encoded record, indexed under k, to the current pack
// and makes it readable; loc is its location but for the pack and offset.
// It reports whether enough is unflushed to flush now.
func (l *Local) append(k chunk.ID, loc chunkLoc, rec []byte) (flushNow bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failed != nil {
		return false, l.failed
	}
	if _, ok := l.pending[k]; ok {
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
	loc.Pack, loc.Offset = l.curNum, l.curOff
	l.pending[k] = loc
	l.unflushed = append(l.unflushed, runEntry{id: k, loc: loc})
	l.curOff += int64(len(rec))
	l.written.Add(int64(len(rec)))
	l.unflushedBytes += int64(len(rec))
	l.dirty[l.curNum] = l.curOff
	return l.unflushedBytes >= l.opts.FlushBytes, nil
}

// rollLocked starts a new pack if there is none or the current one cannot
// take need more bytes. A pack gets a fresh random name (O_EXCL), so that
// writers in other processes never append to it.
func (l *Local) rollLocked(need int64) error {
	if l.cur != nil && (l.curOff == 0 || l.curOff+need <= l.opts.PackSize) {
		return nil
	}
	if l.remote != nil && l.cur != nil {
		l.sealLocked() // full: its upload overlaps the next pack's writes
	}
	var (
		n   uint64
		f   *os.File
		err error
	)
	for {
		// The top bit keeps new names clear of the 8-digit numbered packs
		// of the previous layout.
		n = randUint64() | 1<<63
		f, err = os.OpenFile(l.packPath(n), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("chunkstore: creating pack: %w", err)
	}
	if err := l.owner.file(f); err != nil {
		f.Close()
		return err
	}
	if l.remote != nil {
		// A spool: nothing to sync, but held against cleanSpools.
		if err := lockSpool(f); err != nil {
			f.Close()
			return err
		}
	} else if err := syncDir(l.packsDir()); err != nil {
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

// flush syncs the packs written since the last flush, then writes their
// chunks as a new index run. Puts carry on meanwhile: mu is held only to
// take the unflushed set.
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
	l.unflushed, l.dirty, l.unflushedBytes = nil, map[uint64]int64{}, 0
	if l.remote != nil && l.cur != nil && l.curOff > 0 {
		// The packs this flush makes durable take no more records.
		l.sealLocked()
	}
	l.mu.Unlock()
	if len(dirty) == 0 {
		return nil
	}
	// Past this point the snapshot must reach a run or the store fails:
	// no cancellation.
	ctx = context.WithoutCancel(ctx)
	if err := l.commit(ctx, chunks, dirty); err != nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.failLocked(err)
	}
	l.mu.Lock()
	for _, c := range chunks {
		delete(l.pending, c.id)
	}
	l.mu.Unlock()
	if err := l.compact(ctx); err != nil {
		// The new run is durable: a failed merge loses nothing, and the
		// next one tries again.
		l.log.Warn("merging index runs", "err", err)
	}
	return nil
}

// commit syncs the dirty packs, then writes chunks as a run and opens it.
func (l *Local) commit(ctx context.Context, chunks []runEntry, dirty map[uint64]int64) error {
	for n := range dirty {
		var err error
		if l.remote != nil {
			err = l.awaitUpload(n)
		} else {
			var f *os.File
			if f, err = l.packFile(n); err == nil {
				if err = f.Sync(); err != nil {
					err = fmt.Errorf("chunkstore: syncing pack %s: %w", packName(n), err)
				}
			}
		}
		if err != nil {
			return err
		}
	}
	entries := slices.Clone(chunks)
	slices.SortFunc(entries, func(a, b runEntry) int { return bytes.Compare(a.id[:], b.id[:]) })
	r, err := writeRun(l.runsDir(), entries, l.owner, l.key)
	if err != nil {
		return err
	}
	if l.remote != nil {
		if err := l.uploadRun(ctx, r); err != nil {
			r.release()
			return err
		}
	}
	l.adopt(r)
	if l.remote != nil {
		l.dropUploaded(dirty)
	}
	return nil
}

// adopt adds a run this process just wrote to its set.
func (l *Local) adopt(r *run) {
	l.runsMu.Lock()
	defer l.runsMu.Unlock()
	if old := l.runs[r.name]; old != nil {
		old.release()
	}
	l.runs[r.name] = r
}

// compact merges index runs while some level holds compactFanIn of them
// (runs.go). Only one process
// merges at a time: if another holds the lock, compact returns at once.
// The merged run is durable before its inputs are removed; a process that
// still has them mapped keeps reading them.
func (l *Local) compact(ctx context.Context) error {
	lock, err := os.OpenFile(filepath.Join(l.dir, "compact.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("chunkstore: merging index runs: %w", err)
	}
	defer lock.Close()
	if err := l.owner.file(lock); err != nil {
		return err
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil
		}
		return fmt.Errorf("chunkstore: merging index runs: %w", err)
	}
	// Under the lock, the listing is the truth: no run goes away meanwhile.
	if err := l.refresh(ctx); err != nil {
		return err
	}
	for {
		rs := l.snapshot()
		pick := compactionPick(rs, l.opts.MaxMerge)
		if pick == nil {
			releaseAll(rs)
			return nil
		}
		err := l.merge(ctx, pick)
		releaseAll(rs)
		if err != nil {
			return err
		}
	}
}

// merge writes the entries of rs as one run, then removes rs.
func (l *Local) merge(ctx context.Context, rs []*run) error {
	rw, err := newRunWriter(l.runsDir(), l.owner, 0, l.key)
	if err != nil {
		return err
	}
	err = mergeRuns(rs, func(id chunk.ID, e []byte) error {
		loc, err := decodeRunLoc(e)
		if err != nil {
			// A damaged entry is dropped from the merge (the chunk reads
			// as missing rather than as corrupt); say which.
			l.log.Error("index entry damaged: dropped while merging runs", "chunk", id.String(), "err", err)
			return nil
		}
		return rw.add(runEntry{id: id, loc: loc})
	})
	if err != nil {
		rw.abort()
		return err
	}
	merged, err := rw.commit()
	if err != nil {
		return err
	}
	if l.remote != nil {
		if err := l.uploadRun(ctx, merged); err != nil {
			merged.release()
			return err
		}
	}
	l.adopt(merged)
	for _, r := range rs {
		if err := l.removeRun(ctx, r.name); err != nil {
			return err
		}
	}
	if err := syncDir(l.runsDir()); err != nil {
		return err
	}
	l.log.Debug("merged index runs", "runs", len(rs), "into", merged.name)
	return l.refresh(ctx)
}

// Iterate calls fn for every durable chunk, those of the runs listed when
// it starts: in ID order in a plain store, in object ID order (stable, not
// by chunk ID) in an encrypted one, which opens each record to learn its
// chunk ID and Info; a record that fails there stops Iterate with its
// *CorruptChunkError. fn may call the store's other methods.
func (l *Local) Iterate(ctx context.Context, fn func(chunk.ID, Info) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := l.enter(); err != nil {
		return err
	}
	defer l.exit()
	var buf []byte
	return l.iterateRuns(ctx, func(k chunk.ID, loc chunkLoc, err error) error {
		if err != nil {
			return err
		}
		if l.key == nil {
			return fn(k, loc.info())
		}
		buf = slices.Grow(buf[:0], int(loc.recordSize()))[:loc.recordSize()]
		h, _, err := l.readRecord(ctx, chunk.ID{}, k, loc, buf, false)
		if err != nil {
			return err
		}
		return fn(h.ID, h.info())
	})
}

// iterateRuns walks the entries of every run in index key order, each
// once. An entry that does not decode is passed to fn as a
// *CorruptChunkError.
func (l *Local) iterateRuns(ctx context.Context, fn func(chunk.ID, chunkLoc, error) error) error {
	if err := l.refresh(ctx); err != nil {
		return err
	}
	rs := l.snapshot()
	defer releaseAll(rs)
	return mergeRuns(rs, func(k chunk.ID, e []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		loc, err := decodeRunLoc(e)
		if err != nil {
			err = l.corruptAt(k, err)
		}
		return fn(k, loc, err)
	})
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
	ctx = withBucketOnly(ctx) // the bucket's packs, not this host's blocks
	// Take the unflushed set before listing the runs: a chunk leaving it
	// is in a run this process has open, so the walk sees it.
	l.mu.RLock()
	unflushed := make(map[chunk.ID]chunkLoc, len(l.pending))
	for id, loc := range l.pending {
		unflushed[id] = loc
	}
	l.mu.RUnlock()

	var buf []byte
	check := func(k chunk.ID, loc chunkLoc, err error) error {
		st.Chunks++
		id := l.knownID(k)
		if err == nil {
			id, buf, err = l.read(ctx, id, k, loc, buf[:0])
			if err == nil {
				st.PlainBytes += int64(len(buf))
			}
		}
		if _, corrupt := errors.AsType[*chunk.CorruptChunkError](err); corrupt {
			st.Corrupt++
			l.log.Warn("corrupt chunk", "chunk", id.String(), "err", err) // id is zero for a sealed record that did not open: err names its object
			if bad != nil {
				bad(id, err)
			}
			return nil
		}
		return err
	}
	// The runs list chunks by ID, scattered over the packs: read in that
	// order, a store on object storage would fetch a block per chunk (2 MiB
	// for one chunk of 64 KiB), and a directory would seek for each. Read
	// in pack order, each pack is read front to back, a block at a time
	// with the next one read ahead. The price is the list: 64 bytes a chunk.
	var entries []runEntry
	err := l.iterateRuns(ctx, func(k chunk.ID, loc chunkLoc, err error) error {
		delete(unflushed, k)
		if err != nil {
			return check(k, loc, err)
		}
		entries = append(entries, runEntry{k, loc})
		return nil
	})
	if err != nil {
		return st, err
	}
	slices.SortFunc(entries, func(a, b runEntry) int {
		return cmp.Or(cmp.Compare(a.loc.Pack, b.loc.Pack), cmp.Compare(a.loc.Offset, b.loc.Offset))
	})
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		if err := check(e.id, e.loc, nil); err != nil {
			return st, err
		}
	}
	for k, loc := range unflushed {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		if err := check(k, loc, nil); err != nil {
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

// release closes the files and unmaps the runs without flushing.
func (l *Local) release() error {
	l.uploadWG.Wait()
	if l.blocks != nil {
		l.blocks.close()
	}
	var errs []error
	l.filesMu.Lock()
	for n, f := range l.files {
		if err := f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("chunkstore: closing pack %s: %w", packName(n), err))
		}
	}
	l.files = nil
	l.filesMu.Unlock()
	l.runsMu.Lock()
	for _, r := range l.runs {
		r.release()
	}
	l.runs = nil
	l.runsMu.Unlock()
	return errors.Join(errs...)
}

// Buffers for records, pooled: Put and Get would otherwise allocate a chunk's
// worth for each call. Buffers above maxPooledBuf are left to the GC so that
// a few huge chunks do not pin memory.
const maxPooledBuf = 1<<20 + sealedHeaderSize + minSealedLen

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

// copyRecord appends the record of id, as it is stored, to this store's
// current pack, whatever the index says: a prune's repacking of a chunk
// that stays. It is readable at once and durable after Flush.
func (l *Local) copyRecord(ctx context.Context, id chunk.ID) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.exit()
	k := l.indexKey(id)
	loc, ok, err := l.lookup(ctx, id, k, always)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s", chunk.ErrNotFound, id)
	}
	bp := getBuf(int(loc.recordSize()))
	defer putBuf(bp)
	rec := (*bp)[:loc.recordSize()]
	// A sealed record is copied sealed: opening it in place would leave
	// plaintext in what is written out.
	if _, _, err := l.readRecord(ctx, id, k, loc, rec, true); err != nil {
		return err
	}
	flushNow, err := l.append(k, loc, rec) // a chunk copied already is pending: skipped

	if err != nil || !flushNow {
		return err
	}
	return l.flush(ctx)
}
