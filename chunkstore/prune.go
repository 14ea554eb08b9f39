package chunkstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/objstore"
)

// ForgetPolicy says which restore points to keep, as restic's forget does:
// the union of the newest KeepLast, the newest of each of the KeepDaily
// most recent days that have one, and of each of the KeepWeekly most recent
// ISO weeks (days and weeks in UTC). IDs forgets those points whatever the
// policy. A policy with no rule and no ID forgets nothing.
type ForgetPolicy struct {
	KeepLast, KeepDaily, KeepWeekly int
	IDs                             []string
}

func (p ForgetPolicy) hasRule() bool { return p.KeepLast > 0 || p.KeepDaily > 0 || p.KeepWeekly > 0 }

// Plan splits rps (oldest first) into the points to keep and to forget.
func (p ForgetPolicy) Plan(rps []RestorePoint) (keep, forget []RestorePoint, err error) {
	byID := map[string]bool{}
	for _, id := range p.IDs {
		if !slices.ContainsFunc(rps, func(rp RestorePoint) bool { return rp.ID == id }) {
			return nil, nil, fmt.Errorf("%w: %q", ErrNoRestorePoint, id)
		}
		byID[id] = true
	}
	kept := map[string]bool{}
	if p.hasRule() {
		newest := slices.Clone(rps)
		slices.SortFunc(newest, func(a, b RestorePoint) int { return cmp.Or(b.Time.Compare(a.Time), strings.Compare(b.ID, a.ID)) })
		for i, rp := range newest {
			if i < p.KeepLast {
				kept[rp.ID] = true
			}
		}
		keepPer := func(n int, bucket func(time.Time) string) {
			seen := map[string]bool{}
			for _, rp := range newest {
				b := bucket(rp.Time.UTC())
				if seen[b] {
					continue
				}
				if len(seen) == n {
					return
				}
				seen[b] = true
				kept[rp.ID] = true
			}
		}
		keepPer(p.KeepDaily, func(t time.Time) string { return t.Format("2006-01-02") })
		keepPer(p.KeepWeekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-%02d", y, w) })
	}
	for _, rp := range rps {
		if byID[rp.ID] || (p.hasRule() && !kept[rp.ID]) {
			forget = append(forget, rp)
		} else {
			keep = append(keep, rp)
		}
	}
	return keep, forget, nil
}

// Forget removes the catalog entries of points. Their chunks stay until
// Prune. The repository must be open with LockExclusive.
func (r *Repo) Forget(points []RestorePoint) error {
	if r.lock == nil || !r.lock.info.Exclusive {
		return errors.New("chunkstore: forget needs the repository's exclusive lock")
	}
	if r.remote != nil {
		return r.forgetRemote(points)
	}
	for _, rp := range points {
		if err := os.Remove(filepath.Join(r.pointsDir(), rp.ID+".json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("chunkstore: forgetting %s: %w", rp.ID, err)
		}
	}
	return syncDir(r.pointsDir())
}

// PruneStats are what Prune removed (or, dry, would remove).
type PruneStats struct {
	RestorePoints  int   `json:"restore_points"`   // kept, whose chunks stay
	LiveChunks     int   `json:"live_chunks"`      // chunks they and the kept WAL reference
	DeadChunks     int   `json:"dead_chunks"`      // chunks nothing references
	PacksDeleted   int   `json:"packs_deleted"`    // packs with nothing live
	PacksRepacked  int   `json:"packs_repacked"`   // packs mostly dead: their live chunks copied, then deleted
	PacksOrphaned  int   `json:"packs_orphaned"`   // packs no index run names, an hour old (crashed writers)
	BytesFreed     int64 `json:"bytes_freed"`      // pack bytes deleted, less what repacking wrote
	BytesKeptDead  int64 `json:"bytes_kept_dead"`  // dead bytes left in packs mostly live
	WALFilesPruned int   `json:"wal_files_pruned"` // WAL older than the oldest kept point's start
	// UploadsAborted are the multipart uploads started a staleUploadAge
	// ago that a killed writer left (object storage only): parts the
	// bucket keeps, and bills, until they are aborted.
	UploadsAborted int `json:"uploads_aborted"`
}

// repackBelow is the share of live bytes under which a pack is repacked.
const repackBelow = 0.5

// orphanAge is how old a pack no index run names must be before Prune
// removes it: younger, it may be a writer's that has not flushed yet.
const orphanAge = time.Hour

type packUse struct {
	live, dead int64
	liveIDs    []chunk.ID
}

// Prune removes what no kept restore point needs: chunks no tree
// references, the WAL older than the oldest kept point's start, packs left
// by crashed writers. Packs with no live chunk are deleted; packs mostly
// dead are repacked (their live records copied as they are). The order
// keeps every step safe to interrupt, and a rerun finishes the work: new
// packs and their run are durable, then the new run of the live entries,
// then the old runs go, then the WAL records, then the packs. It needs
// the exclusive lock, and holds the merge lock throughout, so that no
// merge runs meanwhile; wal-push goes on (it adds packs and runs of its
// own, which Prune leaves alone).
func (r *Repo) Prune(ctx context.Context, dryRun bool) (*PruneStats, error) {
	if r.lock == nil || !r.lock.info.Exclusive {
		return nil, errors.New("chunkstore: prune needs the repository's exclusive lock")
	}
	l := r.store
	lockf, err := os.OpenFile(filepath.Join(l.dir, "compact.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	defer lockf.Close()
	if err := unix.Flock(int(lockf.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("chunkstore: waiting for the merge lock: %w", err)
	}
	start := time.Now()
	if err := l.refresh(ctx); err != nil {
		return nil, err
	}
	if d := l.Damaged(); len(d) > 0 {
		// Their packs would look unused; a person may still recover them.
		return nil, fmt.Errorf("chunkstore: prune stops: %d index runs are damaged (run 'pgporter check')", len(d))
	}
	runs := l.snapshot()
	defer releaseAll(runs)

	st := &PruneStats{}
	live, walDrop, err := r.liveChunks(ctx, st)
	if err != nil {
		return nil, err
	}
	st.LiveChunks = len(live)
	// The runs are keyed by index key: in an encrypted store the object
	// ID, which the plain IDs of the mark set are mapped to (and back, for
	// copyRecord).
	plainOf := func(k chunk.ID) (chunk.ID, bool) { _, ok := live[k]; return k, ok }
	if l.key != nil {
		keyed := make(map[chunk.ID]chunk.ID, len(live))
		for id := range live {
			keyed[l.indexKey(id)] = id
		}
		plainOf = func(k chunk.ID) (chunk.ID, bool) { id, ok := keyed[k]; return id, ok }
	}
	packs := map[uint64]*packUse{}
	var keepEntries []runEntry
	err = mergeRuns(runs, func(id chunk.ID, e []byte) error {
		loc, err := decodeRunLoc(e)
		if err != nil {
			return nil // a damaged entry: dropped from the new run
		}
		u := packs[loc.Pack]
		if u == nil {
			u = &packUse{}
			packs[loc.Pack] = u
		}
		size := loc.recordSize()
		if plain, ok := plainOf(id); ok {
			u.live += size
			u.liveIDs = append(u.liveIDs, plain)
			keepEntries = append(keepEntries, runEntry{id, loc})
		} else {
			u.dead += size
			st.DeadChunks++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	drop := map[uint64]bool{} // packs to delete
	var repack []chunk.ID
	for n, u := range packs {
		switch {
		case u.live == 0:
			drop[n] = true
			st.PacksDeleted++
			st.BytesFreed += u.dead
		case float64(u.live)/float64(u.live+u.dead) < repackBelow:
			drop[n] = true
			repack = append(repack, u.liveIDs...)
			st.PacksRepacked++
			st.BytesFreed += u.dead
		default:
			st.BytesKeptDead += u.dead
		}
	}
	pending, err := readPrunePending(ctx, l)
	if err != nil {
		return nil, err
	}
	orphans, err := orphanPacks(ctx, l, packs, pending, start)
	if err != nil {
		return nil, err
	}
	for n, size := range orphans {
		drop[n] = true
		st.PacksOrphaned++
		st.BytesFreed += size
	}
	st.WALFilesPruned = len(walDrop)
	if dryRun {
		st.UploadsAborted = r.abortStaleUploads(ctx, start, true)
		return st, nil
	}

	// 1. The live records of mostly dead packs, copied to new packs and
	// indexed by runs of their own (durable at Flush).
	rctx := withBucketOnly(ctx) // the packs' blocks are of no use on disk after
	for _, id := range repack {
		if err := l.copyRecord(rctx, id); err != nil {
			return nil, fmt.Errorf("chunkstore: repacking %s: %w", id.Short(), err)
		}
		pruneCrash("repacking")
	}
	if err := l.Flush(ctx); err != nil {
		return nil, err
	}
	pruneCrash("repacked")
	// 2. One run of the live entries in packs that stay.
	keepEntries = slices.DeleteFunc(keepEntries, func(e runEntry) bool { return drop[e.loc.Pack] })
	kept, err := writeRun(l.runsDir(), keepEntries, l.owner, l.key)
	if err != nil {
		return nil, err
	}
	if l.remote != nil {
		if err := l.uploadRun(ctx, kept); err != nil {
			kept.release()
			return nil, err
		}
	}
	l.adopt(kept)
	pruneCrash("kept-run")
	// Once the old runs go, no run names the packs to delete: a rerun
	// after a crash from here on must know them to be dead, not packs
	// another process is still writing (which look the same, and are
	// left until they are an orphanAge old).
	if err := writePrunePending(ctx, l, drop); err != nil {
		return nil, err
	}
	// 3. The old runs.
	for _, rn := range runs {
		if err := l.removeRun(ctx, rn.name); err != nil {
			return nil, err
		}
		pruneCrash("old-runs")
	}
	if err := syncDir(l.runsDir()); err != nil {
		return nil, err
	}
	if err := l.refresh(ctx); err != nil {
		return nil, err
	}
	// 4. The WAL records nothing needs, before the packs of their chunks.
	for _, name := range walDrop {
		if err := r.removeWAL(ctx, name); err != nil {
			return nil, err
		}
		pruneCrash("wal")
	}
	// 5. The packs.
	l.filesMu.Lock()
	for n := range drop {
		if f := l.files[n]; f != nil {
			f.Close()
			delete(l.files, n)
		}
	}
	l.filesMu.Unlock()
	for n := range drop {
		if err := l.removePack(ctx, n); err != nil {
			return nil, err
		}
		pruneCrash("packs")
	}
	if err := syncDir(l.packsDir()); err != nil {
		return nil, err
	}
	if err := removePrunePending(ctx, l); err != nil {
		return nil, err
	}
	st.UploadsAborted = r.abortStaleUploads(ctx, start, false)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.log.Info("pruned", "packs_deleted", st.PacksDeleted, "packs_repacked", st.PacksRepacked, "packs_orphaned", st.PacksOrphaned,
		"bytes_freed", st.BytesFreed, "wal_files", st.WALFilesPruned, "uploads_aborted", st.UploadsAborted)
	return st, nil
}

// staleUploadAge is how long ago a multipart upload must have started for
// Prune to abort it: a live upload of a 16 MiB pack takes seconds, so one
// a day old is a killed writer's, whatever the clocks' skew. A variable
// for tests.
var staleUploadAge = 24 * time.Hour

// staleUploads is what a backend with multipart uploads (objstore.S3)
// offers to find and abort those that killed writers left.
type staleUploads interface {
	StaleUploads(ctx context.Context, prefix string, cutoff time.Time) iter.Seq2[objstore.Upload, error]
	AbortUpload(ctx context.Context, u objstore.Upload) error
}

// abortStaleUploads aborts (dry: counts) the multipart uploads under the
// repository's prefix that started a staleUploadAge before start, and
// returns how many. Prune holds the exclusive lock, so no backup writes;
// wal-push may, but its uploads are young. Failures are logged, not
// returned: the uploads are no part of the repository (nothing lists or
// reads them), the next prune tries again, and a bucket policy may deny
// listing them (s3:ListBucketMultipartUploads). Its requests are not
// retried, for the same reasons.
func (r *Repo) abortStaleUploads(ctx context.Context, start time.Time, dryRun bool) int {
	if r.store.remote == nil {
		return 0 // a directory has no multipart uploads
	}
	b, ok := objstore.As[staleUploads](r.store.remote)
	if !ok {
		return 0
	}
	n := 0
	var failed error // the first: the next prune tries again
	for u, err := range b.StaleUploads(ctx, "", start.Add(-staleUploadAge)) {
		if err == nil && !dryRun {
			err = b.AbortUpload(ctx, u)
		}
		if err != nil {
			failed = err
			break
		}
		n++
	}
	if failed != nil && ctx.Err() == nil {
		r.log.Warn("aborting the multipart uploads of killed writers", "aborted", n, "err", failed)
	} else if n > 0 && !dryRun {
		r.log.Info("aborted the multipart uploads of killed writers", "uploads", n)
	}
	return n
}

// pruneCrashHook, set by tests only, is called at each point of Prune's
// work that a crash may interrupt (pruneCrashPoints), to kill the process
// there.
var pruneCrashHook func(point string)

// pruneCrashPoints are the points Prune calls pruneCrashHook at: within
// and after the repack, after the new run, within the removal of the old
// runs, the WAL records and the packs.
var pruneCrashPoints = []string{"repacking", "repacked", "kept-run", "old-runs", "wal", "packs"}

func pruneCrash(point string) {
	if pruneCrashHook != nil {
		pruneCrashHook(point)
	}
}

// liveChunks returns the chunks the restore points and the kept WAL
// reference, and the WAL records to drop: segments (and their .partial and
// .backup files) of before the oldest restore point's start, when that
// point has a WAL range; all WAL is kept otherwise, and .history files
// always.
func (r *Repo) liveChunks(ctx context.Context, st *PruneStats) (map[chunk.ID]struct{}, []string, error) {
	rps, err := r.List()
	if err != nil {
		return nil, nil, err
	}
	st.RestorePoints = len(rps)
	live := map[chunk.ID]struct{}{}
	for i := range rps {
		for _, id := range rps[i].Tree {
			live[id] = struct{}{}
		}
		nodes, err := r.Tree(ctx, &rps[i])
		if err != nil {
			return nil, nil, fmt.Errorf("chunkstore: prune stops: %w (run 'pgporter check')", err)
		}
		for _, n := range nodes {
			for _, c := range n.Chunks {
				live[c.ID] = struct{}{}
			}
		}
	}
	keepFrom := "" // the first segment (without its timeline) the kept points need
	if len(rps) > 0 && rps[0].WAL != nil {
		w := rps[0].WAL
		if lsn, err := ParseLSN(w.Start); err == nil && w.SegmentSize > 0 {
			keepFrom = segmentName(w.Timeline, lsn/uint64(w.SegmentSize), w.SegmentSize)[8:]
		}
	}
	names, err := r.walNames(ctx)
	if err != nil {
		return nil, nil, err
	}
	var drop []string
	for _, name := range names {
		if keepFrom != "" && len(name) >= 24 && name[8:24] < keepFrom {
			drop = append(drop, name)
			continue
		}
		w, err := r.readWAL(ctx, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("chunkstore: prune stops: %w (run 'pgporter check')", err)
		}
		for _, c := range w.Chunks {
			live[c.ID] = struct{}{}
		}
	}
	return live, drop, nil
}

// prunePendingPath is the file that lists the packs an unfinished prune
// deletes.
func prunePendingPath(l *Local) string { return filepath.Join(l.dir, "prune-pending.json") }

// writePrunePending durably lists the packs in drop as ones a prune
// deletes.
func writePrunePending(ctx context.Context, l *Local, drop map[uint64]bool) error {
	names := make([]string, 0, len(drop))
	for n := range drop {
		names = append(names, packName(n))
	}
	slices.Sort(names)
	b, err := json.Marshal(map[string][]string{"packs": names})
	if err != nil {
		return err
	}
	if l.remote != nil {
		return writeRemotePrunePending(ctx, l, b)
	}
	f, err := os.CreateTemp(l.dir, ".tmp-prune-")
	if err != nil {
		return fmt.Errorf("chunkstore: writing the prune's list of packs: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = l.owner.file(f)
	}
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err == nil {
		err = os.Rename(tmp, prunePendingPath(l))
	}
	if err != nil {
		return fmt.Errorf("chunkstore: writing the prune's list of packs: %w", err)
	}
	return syncDir(l.dir)
}

// readPrunePending returns the packs an interrupted prune was deleting.
func readPrunePending(ctx context.Context, l *Local) (map[uint64]bool, error) {
	var (
		b   []byte
		err error
	)
	if l.remote != nil {
		b, err = readRemotePrunePending(ctx, l)
	} else {
		b, err = os.ReadFile(prunePendingPath(l))
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("chunkstore: reading the prune's list of packs: %w", err)
	}
	var v struct{ Packs []string }
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("chunkstore: reading the prune's list of packs: %w", err)
	}
	out := map[uint64]bool{}
	for _, name := range v.Packs {
		if n, ok := parsePackName(name); ok {
			out[n] = true
		}
	}
	return out, nil
}

// orphanPacks returns the packs no index run names (so not in used) and
// last written an orphanAge before start, or that an interrupted prune was
// deleting (pending), with their sizes.
func orphanPacks(ctx context.Context, l *Local, used map[uint64]*packUse, pending map[uint64]bool, start time.Time) (map[uint64]int64, error) {
	packs, err := l.listPacks(ctx)
	if err != nil {
		return nil, err
	}
	out := map[uint64]int64{}
	for _, p := range packs {
		if used[p.n] != nil || start.Sub(p.mtime) < orphanAge && !pending[p.n] {
			continue
		}
		out[p.n] = p.size
	}
	return out, nil
}

// removePrunePending removes the list of packs a finished prune deleted.
func removePrunePending(ctx context.Context, l *Local) error {
	if l.remote != nil {
		return deleteRemotePrunePending(ctx, l)
	}
	if err := os.Remove(prunePendingPath(l)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("chunkstore: removing the prune's list of packs: %w", err)
	}
	return nil
}
