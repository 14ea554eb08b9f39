package mover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/protocol"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"golang.org/x/sys/unix"
)

// loc is where a verified copy of a chunk can be read in DEST.partial.
type loc struct {
	path string // relative to the partial dir
	off  int64
	n    uint32
}

// pos is one chunk position of the manifest being received, waiting for
// its data. Only positions waiting are held in memory (and charged to the
// peer's budget); the rest of a manifest is in pebble once written.
type pos struct {
	file, chunk uint32
	off         int64
	n           uint32
}

// wpos is a position written and waiting for the next durability barrier.
type wpos struct {
	path  string
	chunk uint32
	rec   posRecord
}

type rfile struct {
	hdr     protocol.FileHeader
	nchunks int                 // chunks listed so far
	end     int64               // bytes they cover
	list    *chunk.FileListHash // of the chunks listed so far; nil once ended, and for a growing file
	hash    [32]byte            // the chunk-list hash FileEnd gave, checked against list (a growing file's at commit)
	ended   bool
	short   bool // the last chunk listed is shorter than the minimum: it must be the file's last
}

// receiver is the receiving side of one transfer on one connection.
type receiver struct {
	s        *Server
	progress prometheus.Gauge // this transfer's durable bytes (runTransfer)
	log      *slog.Logger
	tid      string
	peer     PeerID
	meta     transferMeta
	root     *os.Root // the --root that holds DEST
	rootDir  string
	rel      string   // DEST relative to rootDir (OS separators)
	partial  string   // rel + ".partial"
	proot    *os.Root // DEST.partial, opened once checked: every write of the transfer goes through it
	cs       *controlStream
	ctx      context.Context // the transfer's; cancelled with the reason it failed
	cancel   context.CancelCauseFunc

	files    []*rfile
	paths    map[string]bool   // paths of files, to refuse duplicates
	dirs     map[string]uint32 // directories the sender listed (protocol 8), with their modes; "." is DEST
	dirTimes map[string]int64  // their modification times (protocol 10), Unix ns
	replace  bool              // FlagOverwrite: an existing DEST is moved aside at commit
	resuming bool              // positions were durable before this connection (they are looked up in pebble)
	fc       *fileCache
	kick     chan struct{} // asks the sync loop to sync now
	bufs     sync.Pool     // of *[]byte, cap meta.Params.Max
	arrived  chan struct{} // a chunk was processed

	mu            sync.Mutex // guards everything below
	pending       map[chunk.ID][]pos
	requested     int64      // bytes of the chunks in pending: asked for, not arrived yet
	copies        *copyTable // nil until the first chunk is written
	written       []wpos
	durableBytes  int64
	durableChunks int64
	unsynced      int64
	received      uint64
	inflight      int // chunks taken off pending and still being written
	writeErr      error
	pendingPos    int   // positions in pending
	posHeld       int64 // bytes of the positions budget held: pending positions, files
	budgetClosed  bool  // the transfer ended and returned posHeld

	budget int64 // bytes a growing tree's files may add up to (free space at open)
	listed int64 // bytes of the files listed so far

	streams atomic.Int32 // data streams open

	// syncMu serializes sync: a barrier returns only once every earlier
	// one has recorded its positions, which the commit's check reads.
	syncMu sync.Mutex

	failOnce sync.Once
}

// hasPending reports whether positions of this transfer wait for data:
// their arrival releases budget, so waiting for it can help.
func (r *receiver) hasPending() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pendingPos > 0
}

// reservePositions takes n bytes of the positions budget for this
// transfer, waiting while chunks it asked for are on their way.
func (r *receiver) reservePositions(ctx context.Context, n int64) error {
	if !r.s.positions.tryAcquire(r.peer, n) {
		// The chunks whose arrival frees budget must have been asked for.
		if err := r.cs.flush(); err != nil {
			return err
		}
		if err := r.s.positions.acquire(ctx, r.peer, n, r.hasPending); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.budgetClosed {
		r.s.positions.release(r.peer, n)
		if err := context.Cause(r.ctx); err != nil {
			return err
		}
		return errors.New("mover: the transfer has ended")
	}
	r.posHeld += n
	return nil
}

// releasePositions returns n bytes of what reservePositions took.
func (r *receiver) releasePositions(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.budgetClosed || n == 0 {
		return
	}
	r.posHeld -= n
	r.s.positions.release(r.peer, n)
}

// closeBudget returns everything the transfer holds of the positions budget.
func (r *receiver) closeBudget() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.budgetClosed {
		r.budgetClosed = true
		r.s.positions.release(r.peer, r.posHeld)
		r.posHeld = 0
	}
}

// fail ends the transfer. The sender is told why first: cancelling resets
// the data streams, and a sender that saw only the reset would retry
// something that cannot succeed.
func (r *receiver) fail(err error) {
	r.failOnce.Do(func() {
		if !errors.Is(err, errPreempted) && !errors.Is(err, context.Canceled) {
			r.cs.sendError(err)
		}
	})
	r.cancel(err)
}

// run drives the transfer from the first manifest message to Committed.
func (r *receiver) run(ctx context.Context) error {
	r.fc.openFS() // before this connection writes anything
	var wg sync.WaitGroup
	sctx, stopSync := context.WithCancel(ctx)
	defer stopSync()
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.syncLoop(sctx)
	}()
	err := r.control(ctx)
	if err != nil {
		r.fail(err)
	}
	stopSync()
	wg.Wait()
	r.fc.close()
	r.proot.Close()
	r.closeBudget()
	c := r.cs.counts()
	r.s.metrics.controlMsgs.Add(float64(c.Msgs))
	r.s.metrics.controlWrites.Add(float64(c.Writes))
	return err
}

// syncLoop makes written chunks durable: fsync the files, then record the
// positions in pebble. It runs until ctx ends, then syncs once more so that
// everything already written survives the interruption.
func (r *receiver) syncLoop(ctx context.Context) {
	t := time.NewTicker(r.s.o.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := r.sync(); err != nil {
				r.log.Warn("final sync failed", "transfer", r.tid, "err", err)
			}
			return
		case <-t.C:
		case <-r.kick:
		}
		if err := r.sync(); err != nil {
			r.fail(err)
			return
		}
	}
}

// sync is the durability barrier: data first, then the index that points at it.
func (r *receiver) sync() error {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	r.mu.Lock()
	batch := r.written
	r.written = nil
	r.unsynced = 0
	werr := r.writeErr
	r.mu.Unlock()
	if len(batch) == 0 {
		return werr
	}
	if err := r.syncFiles(batch); err != nil {
		return err
	}
	b := r.s.db.NewBatch()
	defer b.Close()
	var n int64
	for _, w := range batch {
		if err := b.Set(keyPos(r.tid, w.path, w.chunk), encodePos(w.rec), nil); err != nil {
			return err
		}
		n += int64(w.rec.n)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("recording durable chunks: %w", err)
	}
	r.mu.Lock()
	r.durableBytes += n
	r.durableChunks += int64(len(batch))
	db, dc := r.durableBytes, r.durableChunks
	r.mu.Unlock()
	r.s.metrics.durableBytes.Add(float64(n))
	if r.progress != nil {
		r.progress.Set(float64(db))
	}
	if r.s.o.OnDurable != nil {
		r.s.o.OnDurable(r.tid, db)
	}
	_ = r.cs.write(&protocol.Progress{DurableChunks: uint64(dc), DurableBytes: uint64(db)})
	return werr
}

// syncfsMin is the most files a barrier fsyncs one by one: past it, one
// syncfs of the partial root's file system costs less.
const syncfsMin = 16

// syncFiles makes the files batch wrote durable: an fsync each (4 at a
// time) when they are few, else one syncfs. Either way the data and inode
// of every file in batch are on disk when it returns nil, so 0001's rule
// (a position is recorded only after the file holding it was synced) holds:
// syncfs writes back and waits on every dirty inode of the file system and
// commits its journal, and since Linux 5.8 it reports a writeback error of
// any of them (older kernels keep the fsyncs; see syncfsReports).
func (r *receiver) syncFiles(batch []wpos) error {
	touched := map[string]bool{}
	var paths []string
	for _, w := range batch {
		if !touched[w.path] {
			touched[w.path] = true
			paths = append(paths, w.path)
		}
	}
	if len(paths) > syncfsMin && r.fc.canSyncAll() {
		if err := r.fc.syncAll(); err != nil {
			return r.noSpace("", fmt.Errorf("syncing %d files of %s.partial: %w", len(paths), r.meta.Dest, err))
		}
		return nil
	}
	if p, err := r.fc.syncEach(paths, 4); err != nil {
		return r.noSpace(p, fmt.Errorf("syncing %s: %w", p, err))
	}
	return nil
}

// control reads the manifest, answers Need, and commits when every chunk is
// durable.
func (r *receiver) control(ctx context.Context) error {
	var sendDone *protocol.SendDone
	manifestDone := false
	for {
		if manifestDone && sendDone != nil {
			return r.finish(ctx, sendDone)
		}
		// Needs are queued while more of the manifest is already here,
		// and written before the read waits for the sender.
		m, err := r.cs.nextFlushing()
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
				return cause
			}
			return err
		}
		switch m := m.(type) {
		case *protocol.Dir:
			if err := r.addDir(m); err != nil {
				return err
			}
		case *protocol.DirTime:
			if err := r.addDirTime(m); err != nil {
				return err
			}
		case *protocol.FileHeader:
			if manifestDone || int(m.Index) != len(r.files) || (len(r.files) > 0 && !r.files[len(r.files)-1].ended) {
				return fmt.Errorf("%w: file header %d out of order", protocol.ErrProtocol, m.Index)
			}
			if err := r.checkHeader(m); err != nil {
				return err
			}
			size, list := int64(m.Size), chunk.NewFileListHash(m.Size)
			if m.Growing {
				// Its size comes with FileEnd; the list hash starts with
				// it, so it is checked by the commit's position scan.
				size, list = -1, nil
			}
			if err := r.fc.create(m.Path, size); err != nil {
				return err
			}
			r.mu.Lock()
			r.files = append(r.files, &rfile{hdr: *m, list: list})
			r.mu.Unlock()
		case *protocol.FileChunks:
			f, err := r.current(m.Index)
			if err != nil {
				return err
			}
			if err := r.addChunks(ctx, f, m); err != nil {
				return err
			}
		case *protocol.FileEnd:
			f, err := r.current(m.Index)
			if err != nil {
				return err
			}
			if err := r.endFile(f, m); err != nil {
				return err
			}
		case *protocol.ManifestEnd:
			if int(m.Files) != len(r.files) || (!r.growing() && int(m.Files) != int(r.meta.Files)) || (len(r.files) > 0 && !r.files[len(r.files)-1].ended) {
				return fmt.Errorf("%w: manifest ended after %d files, expected %d", protocol.ErrProtocol, len(r.files), r.meta.Files)
			}
			if err := r.checkDirs(); err != nil {
				return err
			}
			manifestDone = true
			if err := r.cs.write(&protocol.NeedEnd{}); err != nil {
				return err
			}
		case *protocol.SendDone:
			if !manifestDone {
				return fmt.Errorf("%w: SendDone before the manifest ended", protocol.ErrProtocol)
			}
			sendDone = m
		default:
			return fmt.Errorf("%w: unexpected %s during a transfer", protocol.ErrProtocol, m.Type())
		}
	}
}

// maxFileMode masks the modes senders choose: group and others never get
// write permission on a received file or directory, and nothing is
// setuid, setgid or sticky, whatever the sender's tree had.
const maxFileMode = 0o755

// minDirMode is kept on every received directory: the mover writes into
// them when a transfer resumes and removes them when one is replaced.
const minDirMode = 0o700

// dirMode is the mode a received directory gets from the sender's mode.
func dirMode(m uint32) fs.FileMode { return fs.FileMode(m&maxFileMode | minDirMode) }

// maxDirs bounds the directories of a transfer: each costs the receiver
// memory and an inode.
var maxDirs = 1 << 20 // a variable for tests

// addDir takes a directory the sender lists (protocol 8): before the first
// file, each once, within maxDirs and the peer's budget.
func (r *receiver) addDir(m *protocol.Dir) error {
	switch {
	case r.cs.version < protocol.DirVersion:
		return fmt.Errorf("%w: Dir needs protocol %d", protocol.ErrProtocol, protocol.DirVersion)
	case len(r.files) > 0:
		return fmt.Errorf("%w: Dir %s after the first file", protocol.ErrProtocol, m.Path)
	case m.Path != "." && protocol.ValidPath(m.Path) != nil:
		return fmt.Errorf("directory %q: %w", m.Path, protocol.ValidPath(m.Path))
	case m.Path == ManifestName:
		return fmt.Errorf("%w: %s is reserved for the receiver's manifest", protocol.ErrBadPath, ManifestName)
	case len(r.dirs) >= maxDirs:
		return fmt.Errorf("%w: more than %d directories", protocol.ErrTooLarge, maxDirs)
	}
	if _, ok := r.dirs[m.Path]; ok {
		return fmt.Errorf("%w: directory %s listed twice", protocol.ErrBadPath, m.Path)
	}
	if err := r.reservePositions(r.ctx, fileCost+int64(len(m.Path))); err != nil {
		return fmt.Errorf("directory %s: %w", m.Path, err)
	}
	if r.dirs == nil {
		r.dirs = map[string]uint32{}
	}
	r.dirs[m.Path] = m.Mode
	return nil
}

// addDirTime takes a listed directory's modification time (protocol 10):
// after its Dir, once, before the first file.
func (r *receiver) addDirTime(m *protocol.DirTime) error {
	switch _, listed := r.dirs[m.Path]; {
	case r.cs.version < protocol.DirTimeVersion:
		return fmt.Errorf("%w: DirTime needs protocol %d", protocol.ErrProtocol, protocol.DirTimeVersion)
	case len(r.files) > 0:
		return fmt.Errorf("%w: DirTime %s after the first file", protocol.ErrProtocol, m.Path)
	case !listed:
		return fmt.Errorf("%w: DirTime of %s, which no Dir listed", protocol.ErrProtocol, m.Path)
	}
	if _, ok := r.dirTimes[m.Path]; ok {
		return fmt.Errorf("%w: the time of directory %s given twice", protocol.ErrProtocol, m.Path)
	}
	if r.dirTimes == nil {
		r.dirTimes = map[string]int64{}
	}
	r.dirTimes[m.Path] = m.MTime
	return nil
}

// setDirTimes gives the directories their modification times, deepest
// first, once nothing more is written in them.
func (r *receiver) setDirTimes() error {
	dirs := slices.Sorted(maps.Keys(r.dirTimes))
	for i := len(dirs) - 1; i >= 0; i-- { // a directory sorts before what it holds
		mt := time.Unix(0, r.dirTimes[dirs[i]])
		if err := r.proot.Chtimes(filepath.FromSlash(dirs[i]), mt, mt); err != nil {
			return fmt.Errorf("setting the time of directory %s: %w", dirs[i], err)
		}
	}
	return nil
}

// checkDirs refuses, once the manifest is complete, a directory listed
// inside a path that is a file.
func (r *receiver) checkDirs() error {
	for d := range r.dirs {
		for p := d; p != "."; p = path.Dir(p) {
			if r.paths[p] {
				return fmt.Errorf("%w: directory %s is inside the file %s", protocol.ErrBadPath, d, p)
			}
		}
	}
	return nil
}

// makeDirs creates the directories the sender listed in DEST.partial, empty
// ones included, and gives each its mode, masked (dirMode).
func (r *receiver) makeDirs() error {
	for d, m := range r.dirs {
		p := filepath.FromSlash(d)
		if d != "." {
			if err := r.proot.MkdirAll(p, minDirMode); err != nil {
				return r.noSpace(d, fmt.Errorf("creating directory %s: %w", d, err))
			}
		}
		if err := r.proot.Chmod(p, dirMode(m)); err != nil {
			return fmt.Errorf("setting the mode of %s: %w", d, err)
		}
	}
	return nil
}

// maxFiles bounds the files of a transfer, announced or not: each costs the
// receiver memory and an inode.
const maxFiles = 1 << 20

// growing reports whether the sender announced no file and byte counts: a
// tree still being written, whose files come as they are completed (the
// free space check happens as data is written).
func (r *receiver) growing() bool { return r.meta.Files == 0 && r.meta.Bytes == 0 }

func (r *receiver) checkHeader(h *protocol.FileHeader) error {
	if err := protocol.ValidPath(h.Path); err != nil {
		return fmt.Errorf("file %q: %w", h.Path, err)
	}
	if h.Path == ManifestName {
		return fmt.Errorf("%w: %s is reserved for the receiver's manifest", protocol.ErrBadPath, ManifestName)
	}
	if r.paths[h.Path] {
		return fmt.Errorf("%w: %s listed twice", protocol.ErrBadPath, h.Path)
	}
	if _, ok := r.dirs[h.Path]; ok {
		return fmt.Errorf("%w: %s listed as a directory and as a file", protocol.ErrBadPath, h.Path)
	}
	if r.growing() && len(r.files) >= maxFiles {
		return fmt.Errorf("%w: more than %d files", protocol.ErrTooLarge, maxFiles)
	}
	if !r.growing() && uint64(len(r.files)) >= r.meta.Files {
		return fmt.Errorf("%w: more files than the %d announced", protocol.ErrProtocol, r.meta.Files)
	}
	if h.Growing && !r.growing() {
		return fmt.Errorf("%w: %s is growing in a transfer of announced size", protocol.ErrProtocol, h.Path)
	}
	if r.growing() {
		if r.listed += int64(min(h.Size, 1<<62)); r.listed > r.budget {
			return fmt.Errorf("%w: the files listed so far need %s but only %s fit in %s (its free space when the transfer opened, less the %s reserve)",
				protocol.ErrNoSpace, bytesize.Format(r.listed), bytesize.Format(max(r.budget, 0)), r.meta.Dest, bytesize.Format(r.s.o.Reserve))
		}
	}
	if err := r.reservePositions(r.ctx, fileCost+int64(len(h.Path))); err != nil {
		return fmt.Errorf("file %s: %w", h.Path, err)
	}
	r.paths[h.Path] = true
	if (!r.growing() && h.Size > r.meta.Bytes) || (h.NumChunks > 0 && uint64(h.NumChunks)*uint64(r.meta.Params.Max) < h.Size) || uint64(h.NumChunks) > h.Size {
		return fmt.Errorf("%w: %s: %d chunks cannot make %d bytes", protocol.ErrProtocol, h.Path, h.NumChunks, h.Size)
	}
	return nil
}

func (r *receiver) current(idx uint32) (*rfile, error) {
	if len(r.files) == 0 || int(idx) != len(r.files)-1 || r.files[idx].ended {
		return nil, fmt.Errorf("%w: message for file %d out of order", protocol.ErrProtocol, idx)
	}
	return r.files[idx], nil
}

// posBatch is how many positions addChunks takes on at a time: it asks for
// their chunks before it reserves budget for the next ones, so the chunks
// that arrive free what the next batch needs.
const posBatch = 4096

// addChunks takes the next part of a file's chunk list and asks for the
// chunks that are neither durable in DEST.partial already nor copyable
// locally: the sender may still be reading the rest of the file.
func (r *receiver) addChunks(ctx context.Context, f *rfile, m *protocol.FileChunks) error {
	if int(m.First) != f.nchunks || (f.hdr.NumChunks > 0 && f.nchunks+len(m.Chunks) > int(f.hdr.NumChunks)) {
		return fmt.Errorf("%w: chunk list of %s out of order", protocol.ErrProtocol, f.hdr.Path)
	}
	off := f.end
	if f.hdr.Growing {
		return r.addGrowing(ctx, f, m)
	}
	for _, c := range m.Chunks {
		if c.Len == 0 || int(c.Len) > r.meta.Params.Max {
			return fmt.Errorf("%w: chunk of %d bytes in %s (max %d)", protocol.ErrProtocol, c.Len, f.hdr.Path, r.meta.Params.Max)
		}
		if off += int64(c.Len); off > int64(f.hdr.Size) {
			return fmt.Errorf("%w: chunks of %s add up to more than its %d bytes", protocol.ErrProtocol, f.hdr.Path, f.hdr.Size)
		}
		// Only a file's last chunk may be shorter than the minimum: this
		// bounds the positions a manifest can make us track.
		if int(c.Len) < r.meta.Params.Min && off != int64(f.hdr.Size) {
			return fmt.Errorf("%w: chunk of %d bytes in the middle of %s (min %d)", protocol.ErrProtocol, c.Len, f.hdr.Path, r.meta.Params.Min)
		}
	}
	for _, c := range m.Chunks {
		f.list.Add(c.ID, c.Len)
	}
	return r.addRefs(ctx, f, m.Chunks)
}

// addGrowing takes the next part of the chunk list of a file still being
// written: its size is unknown until FileEnd, so the growing tree's space
// budget is charged as its chunks are listed.
func (r *receiver) addGrowing(ctx context.Context, f *rfile, m *protocol.FileChunks) error {
	var n int64
	for _, c := range m.Chunks {
		if c.Len == 0 || int(c.Len) > r.meta.Params.Max {
			return fmt.Errorf("%w: chunk of %d bytes in %s (max %d)", protocol.ErrProtocol, c.Len, f.hdr.Path, r.meta.Params.Max)
		}
		if f.short {
			return fmt.Errorf("%w: chunk of less than %d bytes in the middle of %s", protocol.ErrProtocol, r.meta.Params.Min, f.hdr.Path)
		}
		f.short = int(c.Len) < r.meta.Params.Min
		n += int64(c.Len)
	}
	if r.listed += n; r.listed > r.budget {
		return fmt.Errorf("%w: the files listed so far need %s but only %s fit in %s (its free space when the transfer opened, less the %s reserve)",
			protocol.ErrNoSpace, bytesize.Format(r.listed), bytesize.Format(max(r.budget, 0)), r.meta.Dest, bytesize.Format(r.s.o.Reserve))
	}
	return r.addRefs(ctx, f, m.Chunks)
}

// addRefs takes on the positions of the next chunks of the current file.
func (r *receiver) addRefs(ctx context.Context, f *rfile, chunks []protocol.ChunkRef) error {
	idx := uint32(len(r.files) - 1)
	for refs := chunks; len(refs) > 0; {
		batch := refs[:min(len(refs), posBatch)]
		refs = refs[len(batch):]
		if err := r.addBatch(ctx, f, idx, batch); err != nil {
			return err
		}
	}
	return nil
}

// maxRequested bounds the bytes of the chunks a receiver has asked for and
// not received yet. The manifest runs ahead of the data at the speed of
// chunking; without it, what waits for data (pending positions here, the
// job queue at the sender) grew with the part of the tree not sent yet.
// 64 MiB covers the bandwidth-delay product of 5 Gbit/s across 100 ms.
const maxRequested = 64 << 20

// overRequested reports whether the chunks asked for and not yet arrived
// add up to maxRequested or more.
func (r *receiver) overRequested() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requested >= maxRequested
}

// waitRequested blocks while overRequested; arrivals make room.
func (r *receiver) waitRequested(ctx context.Context) error {
	for r.overRequested() {
		select {
		case <-r.arrived:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return nil
}

// addBatch takes on the positions of refs, the next chunks of file idx,
// and asks for the chunks it lacks.
func (r *receiver) addBatch(ctx context.Context, f *rfile, idx uint32, refs []protocol.ChunkRef) error {
	want := int64(len(refs)) * posCost
	if err := r.reservePositions(ctx, want); err != nil {
		return err
	}
	used := int64(0)
	stale := r.s.db.NewBatch()
	defer stale.Close()
	var need []uint32
	// ask drops the stale positions, then asks for the chunks in need: in
	// that order, so that a chunk arriving cannot have its new position
	// deleted. It sends one Need at least, even with nothing needed: its
	// Decided lets the sender drop the bytes it keeps for the chunks not
	// asked for.
	ask := func() error {
		if !stale.Empty() {
			if err := stale.Commit(pebble.Sync); err != nil {
				return err
			}
			stale.Reset()
		}
		for {
			n := min(len(need), protocol.MaxNeedChunks)
			m := &protocol.Need{Index: idx, Chunks: need[:n]}
			if n == len(need) {
				m.Decided = uint32(f.nchunks)
			}
			if err := r.cs.queue(m); err != nil {
				return err
			}
			if need = need[n:]; len(need) == 0 {
				return nil
			}
		}
	}
	for _, ref := range refs {
		if err := ctx.Err(); err != nil {
			r.releasePositions(want - used)
			return context.Cause(ctx)
		}
		if r.overRequested() {
			err := ask()
			if err == nil {
				// The chunks waited for must have been asked for.
				err = r.cs.flush()
			}
			if err == nil {
				err = r.waitRequested(ctx)
			}
			if err != nil {
				r.releasePositions(want - used)
				return err
			}
		}
		i := uint32(f.nchunks)
		p := pos{file: idx, chunk: i, off: f.end, n: ref.Len}
		f.nchunks++
		f.end += int64(ref.Len)
		if r.resuming {
			rec, ok, err := r.storedPos(f.hdr.Path, i)
			if err != nil {
				r.releasePositions(want - used)
				return err
			}
			if ok {
				if rec.id == ref.ID && rec.off == p.off && rec.n == ref.Len && r.stillThere(f.hdr.Path, rec) {
					continue // durable here already
				}
				// The source changed since that position was written, or
				// its bytes in DEST.partial did.
				stale.Delete(keyPos(r.tid, f.hdr.Path, i), nil)
				r.mu.Lock()
				r.durableBytes -= int64(rec.n)
				r.durableChunks--
				r.mu.Unlock()
			}
		}
		r.mu.Lock()
		if w, ok := r.pending[ref.ID]; ok {
			r.pending[ref.ID] = append(w, p)
			r.pendingPos++
			used += posCost
			r.mu.Unlock()
			continue
		}
		r.mu.Unlock()
		if l, ok := r.copyOf(ref.ID); ok && r.copyLocal(l, p, ref.ID) {
			continue
		}
		if r.copyDeduped(p, ref.ID) {
			continue
		}
		r.mu.Lock()
		r.pending[ref.ID] = []pos{p}
		r.pendingPos++
		r.requested += int64(ref.Len)
		used += posCost
		r.mu.Unlock()
		need = append(need, i)
	}
	r.releasePositions(want - used)
	return ask()
}

// stillThere reports whether the bytes a position durable before this
// connection vouches for still hash to its chunk: DEST.partial may have been
// edited or removed between runs, and the commit does not read files again.
func (r *receiver) stillThere(path string, rec posRecord) bool {
	if int(rec.n) > r.meta.Params.Max {
		return false
	}
	bp := r.buf()
	defer r.bufs.Put(bp)
	buf := (*bp)[:rec.n]
	if err := r.fc.readAt(path, buf, rec.off); err != nil || chunk.Sum(buf) != rec.id {
		r.log.Info("a chunk durable from an earlier run changed on disk; asking for it again", "transfer", r.tid, "path", path, "offset", rec.off, "chunk", rec.id.Short())
		return false
	}
	return true
}

// endFile checks that a file's chunk list is complete and is the one the
// sender hashed, and drops durable positions past its end (left by a longer
// version of the file).
func (r *receiver) endFile(f *rfile, m *protocol.FileEnd) error {
	hash := m.Hash
	if f.hdr.Growing {
		if f.end != int64(m.Size) {
			return fmt.Errorf("%w: %s: %d chunks covering %d bytes, FileEnd says %d bytes", protocol.ErrProtocol, f.hdr.Path, f.nchunks, f.end, m.Size)
		}
		f.hdr.Size, f.hdr.MTime = m.Size, m.MTime
		// Drop what an earlier run left past the end.
		if err := r.fc.create(f.hdr.Path, int64(m.Size)); err != nil {
			return err
		}
	} else {
		if f.end != int64(f.hdr.Size) || (f.hdr.NumChunks > 0 && f.nchunks != int(f.hdr.NumChunks)) || m.Size != f.hdr.Size || m.MTime != f.hdr.MTime {
			return fmt.Errorf("%w: %s: %d chunks covering %d bytes, header says %d chunks, %d bytes, FileEnd %d bytes", protocol.ErrProtocol, f.hdr.Path, f.nchunks, f.end, f.hdr.NumChunks, f.hdr.Size, m.Size)
		}
		if got := f.list.Sum(); got != hash {
			return fmt.Errorf("%w: %s: FileEnd gives chunk-list hash %x, its %d chunks hash to %x", protocol.ErrProtocol, f.hdr.Path, hash[:8], f.nchunks, got[:8])
		}
	}
	f.hash, f.ended, f.list = hash, true, nil
	if !r.resuming {
		return nil
	}
	prefix := []byte("t/" + r.tid + "/p/" + f.hdr.Path + "\x00")
	it, err := r.s.db.NewIter(&pebble.IterOptions{LowerBound: keyPos(r.tid, f.hdr.Path, uint32(f.nchunks)), UpperBound: prefixEnd(prefix)})
	if err != nil {
		return err
	}
	stale := r.s.db.NewBatch()
	defer stale.Close()
	for it.First(); it.Valid(); it.Next() {
		rec, ok := decodePos(it.Value())
		stale.Delete(slices.Clone(it.Key()), nil)
		if ok {
			r.mu.Lock()
			r.durableBytes -= int64(rec.n)
			r.durableChunks--
			r.mu.Unlock()
		}
	}
	err = it.Error()
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil || stale.Empty() {
		return err
	}
	return stale.Commit(pebble.Sync)
}

// buf returns a chunk buffer of the transfer's maximum chunk size from the
// receiver's pool; put it back with r.bufs.Put.
func (r *receiver) buf() *[]byte {
	if b, ok := r.bufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, r.meta.Params.Max)
	return &b
}

// noSpace turns a failure to write file p (or, p empty, several files) for
// lack of space into an error that names the destination that is full;
// other errors pass unchanged.
func (r *receiver) noSpace(p string, err error) error {
	if !errors.Is(err, unix.ENOSPC) && !errors.Is(err, unix.EDQUOT) {
		return err
	}
	writing := ""
	if p != "" {
		writing = " (writing " + p + ")"
	}
	return fmt.Errorf("%w: no space left on %s%s; free space there and rerun to resume: %v", protocol.ErrNoSpace, r.meta.Dest, writing, err)
}

// writeChunk writes verified plain content (chunk id) at every position
// in ps.
func (r *receiver) writeChunk(plain []byte, id chunk.ID, ps []pos) error {
	ws := make([]wpos, len(ps))
	r.mu.Lock() // the control goroutine appends to files
	for i, p := range ps {
		ws[i] = wpos{path: r.files[p.file].hdr.Path, chunk: p.chunk, rec: posRecord{id: id, off: p.off, n: p.n}}
	}
	r.mu.Unlock()
	for _, w := range ws {
		if err := r.fc.writeAt(w.path, plain, w.rec.off); err != nil {
			err = r.noSpace(w.path, err)
			r.mu.Lock()
			r.writeErr = err
			r.mu.Unlock()
			return err
		}
	}
	// Before the positions go to the sync: once the sender hears they
	// are durable, the copy is known.
	r.addCopy(ws[0].path, ws[0].rec)
	r.mu.Lock()
	r.written = append(r.written, ws...)
	r.unsynced += int64(len(plain) * len(ws))
	kick := r.unsynced >= r.s.o.SyncBytes
	r.mu.Unlock()
	if kick {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// readData handles one data stream of a connection speaking version: verify
// every chunk, write it wherever the manifest needs it.
func (r *receiver) readData(ctx context.Context, st io.Reader, version uint16) error {
	// No frame of this transfer's data is larger than its largest chunk.
	rd := protocol.NewReader(st, r.meta.Params.Max+protocol.DataFrameOverhead)
	rd.SetFrameTimeout(r.s.o.FrameTimeout)
	var bp *[]byte // taken at the first chunk: an idle stream holds no buffer
	defer func() {
		if bp != nil {
			r.bufs.Put(bp)
		}
	}()
	for {
		m, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("reading data stream: %w", err)
		}
		cd, ok := m.(*protocol.ChunkData)
		if !ok {
			return fmt.Errorf("%w: %s on a data stream", protocol.ErrProtocol, m.Type())
		}
		if int(cd.PlainLen) > r.meta.Params.Max {
			return fmt.Errorf("%w: chunk %s of %d bytes exceeds the transfer's max %d", protocol.ErrProtocol, cd.ID.Short(), cd.PlainLen, r.meta.Params.Max)
		}
		// A sender that negotiated a version without this codec breaks the
		// protocol, even if this build could decode it.
		if !protocol.KnowsCodec(version, cd.Codec) {
			return fmt.Errorf("%w: chunk %s in codec %s, which protocol %d does not have", protocol.ErrProtocol, cd.ID.Short(), cd.Codec, version)
		}
		if bp == nil {
			bp = r.buf()
		}
		plain, err := chunk.Decompress((*bp)[:0], cd.Payload, cd.Codec, int(cd.PlainLen))
		if err != nil {
			return &chunk.CorruptChunkError{ID: cd.ID, Err: err}
		}
		if err := chunk.VerifyContent(cd.ID, plain); err != nil {
			r.s.metrics.corruptChunks.Inc()
			return fmt.Errorf("sender sent bad data: %w", err)
		}
		r.mu.Lock()
		ps, ok := r.pending[cd.ID]
		delete(r.pending, cd.ID)
		r.received++
		if ok {
			r.inflight++
			r.pendingPos -= len(ps)
			r.requested -= int64(ps[0].n)
		}
		r.mu.Unlock()
		if !ok {
			return fmt.Errorf("%w: chunk %s was not asked for", protocol.ErrProtocol, cd.ID.Short())
		}
		err = r.writeChunk(plain, cd.ID, ps)
		r.mu.Lock()
		r.inflight--
		r.mu.Unlock()
		r.releasePositions(int64(len(ps)) * posCost)
		if err != nil {
			return err
		}
		r.s.metrics.chunksReceived.Inc()
		r.s.metrics.wireBytes.Add(float64(len(cd.Payload)))
		select {
		case r.arrived <- struct{}{}:
		default:
		}
	}
}

// closeStream ends a stream the other side may still write to.
func closeStream(st *quic.Stream) {
	st.CancelRead(0)
	st.Close()
}
