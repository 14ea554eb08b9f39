package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgporter/pgporter/chunkstore/objstore"
)

// A Local with LocalOptions.Remote keeps its packs and index runs as
// objects of a Backend (docs/design/0011-object-storage.md, "The layout on
// objects"), under these names:
//
//	chunks/format              storeFormat, created once
//	chunks/packs/<16 hex>.pack whole packs, uploaded once when sealed
//	chunks/idx/<16 hex>.idx    index runs, uploaded after the packs they name
//
// Its directory is then a cache, never the truth: idx/ holds copies of the
// runs it has listed (checked by their own hash when mapped, as any run),
// and packs/ spools the packs this process is writing. A pack is sealed
// when it is full (its upload then overlaps the next one's writes) or when
// a flush makes it durable, and a later Put starts a new one; a flush waits
// for the uploads of its packs before it uploads their run. So a pack
// object is never appended to, and a listed run names only packs that
// exist. A crash leaves
// at worst a pack no run names (a prune's orphan) and a spool file, which
// the next Local opening the cache removes (a spool is locked while written).
//
// Compaction is serialised only among the processes sharing the cache
// (compact.lock). Merges on two hosts at once are safe: each writes a run
// holding every entry of the runs it read, and removes only those; at
// worst some entries are held twice for a while.
const (
	remoteFormat = "chunks/format"
	remotePacks  = "chunks/packs/"
	remoteRuns   = "chunks/idx/"
)

// DefaultRemotePackSize is a Local's PackSize on a Remote: a single PUT
// to S3 (objstore.DefaultPartSize), small enough that uploads overlap a
// backup's writes (a flush seals smaller ones).
const DefaultRemotePackSize = 16 << 20

// maxUploads bounds a Local's pack uploads in flight.
const maxUploads = 2

// packUpload is the upload of one sealed pack; err is set when done closes.
type packUpload struct {
	done chan struct{}
	err  error
}

// sealLocked ends the current pack and starts its upload. l.mu is held.
func (l *Local) sealLocked() {
	n, f, size := l.curNum, l.cur, l.curOff
	l.cur = nil
	u := &packUpload{done: make(chan struct{})}
	l.uploads[n] = u
	l.uploadWG.Add(1)
	go func() {
		defer l.uploadWG.Done()
		defer close(u.done)
		l.uploadSem <- struct{}{}
		defer func() { <-l.uploadSem }()
		// Not the caller's context: a pack goes up whole or the store
		// fails at the flush that waits for it (objstore bounds the retries).
		u.err = l.uploadPack(context.Background(), n, f, size)
	}()
}

// awaitUpload waits for the upload of sealed pack n.
func (l *Local) awaitUpload(n uint64) error {
	l.mu.Lock()
	u := l.uploads[n]
	delete(l.uploads, n)
	l.mu.Unlock()
	if u == nil {
		return fmt.Errorf("chunkstore: pack %s was never sealed", packName(n))
	}
	<-u.done
	return u.err
}

func packObject(n uint64) string { return remotePacks + packName(n) }

// checkRemoteFormat refuses a remote store of a layout this build does not
// read, and records the layout in a new one.
func (l *Local) checkRemoteFormat(ctx context.Context) error {
	for range 2 {
		b, err := l.remote.Get(ctx, remoteFormat, nil)
		if err == nil {
			return l.checkFormatBody("the object store", b)
		}
		if !errors.Is(err, objstore.ErrNotFound) {
			return fmt.Errorf("chunkstore: reading the store's format: %w", err)
		}
		body := l.formatBody()
		err = l.remote.PutIfAbsent(ctx, remoteFormat, bytes.NewReader(body), int64(len(body)))
		if err == nil {
			return nil
		}
		if !errors.Is(err, objstore.ErrExists) {
			return fmt.Errorf("chunkstore: recording the store's format: %w", err)
		}
		// Another process created the store meanwhile: read theirs.
	}
	return errors.New("chunkstore: the store's format object appears and vanishes")
}

// listRemoteRuns returns the names of the runs in the object store, as
// listRunNames does for a directory; names no writer makes are ignored.
func (l *Local) listRemoteRuns(ctx context.Context) ([]string, error) {
	var names []string
	for o, err := range l.remote.List(ctx, remoteRuns) {
		if err != nil {
			return nil, fmt.Errorf("chunkstore: listing index runs: %w", err)
		}
		name := strings.TrimPrefix(o.Name, remoteRuns)
		if isRunName(name) {
			names = append(names, name)
		}
	}
	return names, nil // List yields names in order
}

// isRunName reports whether name is one renameNew gives a run.
func isRunName(name string) bool {
	h, ok := strings.CutSuffix(name, runExt)
	if !ok || len(h) != 16 {
		return false
	}
	for i := 0; i < len(h); i++ {
		if !('0' <= h[i] && h[i] <= '9' || 'a' <= h[i] && h[i] <= 'f') {
			return false
		}
	}
	return true
}

// fetchRun makes sure the cache holds run name and returns its path. A run
// the store no longer has gives an error matching fs.ErrNotExist (a merge
// removed it since the listing), as openRun's does for a directory.
func (l *Local) fetchRun(ctx context.Context, name string) (string, error) {
	p := filepath.Join(l.runsDir(), name)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	b, err := l.remote.Get(ctx, remoteRuns+name, nil)
	if errors.Is(err, objstore.ErrNotFound) {
		return "", fmt.Errorf("chunkstore: fetching index run %s: %w", name, fs.ErrNotExist)
	}
	if err != nil {
		return "", fmt.Errorf("chunkstore: fetching index run %s: %w", name, err)
	}
	f, err := os.CreateTemp(l.runsDir(), runTmpPrefix)
	if err != nil {
		return "", fmt.Errorf("chunkstore: caching index run: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = l.owner.file(f)
	}
	err = errors.Join(err, f.Close())
	if err == nil {
		// A cache: no fsync. A torn copy after a crash fails openRun's
		// hash check and is fetched again (see dropDamagedCache).
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return "", fmt.Errorf("chunkstore: caching index run: %w", err)
	}
	return p, nil
}

// openRemoteRun opens run name from the cache, fetching it first if need
// be. A cached copy that fails its checks is fetched again once: the
// cache is not the truth, the object is.
func (l *Local) openRemoteRun(ctx context.Context, name string) (*run, error) {
	p, err := l.fetchRun(ctx, name)
	if err != nil {
		return nil, err
	}
	r, err := openRun(p, l.key)
	if !errors.Is(err, errBadRun) {
		return r, err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("chunkstore: dropping a damaged cached run: %w", err)
	}
	if p, err = l.fetchRun(ctx, name); err != nil {
		return nil, err
	}
	return openRun(p, l.key)
}

// pruneRunCache removes cached runs the store no longer lists (merged or
// pruned by someone). Runs this process has open stay mapped whatever
// happens to their files.
func (l *Local) pruneRunCache(listed []string) {
	keep := make(map[string]bool, len(listed))
	for _, n := range listed {
		keep[n] = true
	}
	cached, err := listRunNames(l.runsDir())
	if err != nil {
		return // a cache: the next listing tries again
	}
	for _, n := range cached {
		if !keep[n] {
			_ = os.Remove(filepath.Join(l.runsDir(), n))
		}
	}
}

// uploadRun puts run r, which this process wrote into its cache, into the
// object store.
func (l *Local) uploadRun(ctx context.Context, r *run) error {
	if err := l.remote.PutIfAbsent(ctx, remoteRuns+r.name, bytes.NewReader(r.data), int64(len(r.data))); err != nil {
		return fmt.Errorf("chunkstore: uploading index run %s: %w", r.name, err)
	}
	return nil
}

// removeRun removes a run that a merge has replaced, from the store and
// from the cache.
func (l *Local) removeRun(ctx context.Context, name string) error {
	if l.remote == nil {
		if err := os.Remove(filepath.Join(l.runsDir(), name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("chunkstore: removing merged index run: %w", err)
		}
		return nil
	}
	if err := l.remote.Delete(ctx, remoteRuns+name); err != nil {
		return fmt.Errorf("chunkstore: removing merged index run: %w", err)
	}
	_ = os.Remove(filepath.Join(l.runsDir(), name))
	return nil
}

// uploadPack puts sealed pack n, size bytes spooled in f, into the object
// store, then drops its spool file. f stays open, for the reads of its
// chunks until their run is adopted (readPack falls back to the object).
func (l *Local) uploadPack(ctx context.Context, n uint64, f *os.File, size int64) error {
	if err := l.remote.PutIfAbsent(ctx, packObject(n), io.NewSectionReader(f, 0, size), size); err != nil {
		return fmt.Errorf("chunkstore: uploading pack %s: %w", packName(n), err)
	}
	if err := os.Remove(l.packPath(n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("chunkstore: removing the spool of pack %s: %w", packName(n), err)
	}
	return nil
}

// dropUploaded closes the spool files of packs uploaded and indexed: their
// chunks are read from the object store from now on.
func (l *Local) dropUploaded(packs map[uint64]int64) {
	l.filesMu.Lock()
	defer l.filesMu.Unlock()
	for n := range packs {
		if f := l.files[n]; f != nil {
			f.Close()
			delete(l.files, n)
		}
	}
}

// readPack reads len(p) bytes of pack n at off: from the spool file while
// this process holds it, else from the object store (or the pack file of a
// directory store).
func (l *Local) readPack(ctx context.Context, n uint64, p []byte, off int64) error {
	if l.remote == nil {
		f, err := l.packFile(n)
		if err != nil {
			return err
		}
		_, err = f.ReadAt(p, off)
		return err
	}
	l.filesMu.RLock()
	f := l.files[n]
	l.filesMu.RUnlock()
	if f != nil {
		_, err := f.ReadAt(p, off)
		if !errors.Is(err, os.ErrClosed) {
			return err
		}
		// Uploaded and dropped meanwhile: read the object.
	}
	err := l.blocks.readAt(ctx, n, p, off)
	if errors.Is(err, objstore.ErrRange) {
		return io.EOF
	}
	return err
}

// noteRTT folds the duration of one block's read from the object store into the
// smoothed figure RemoteStore.RTT reports (an eighth of each new one).
func (l *Local) noteRTT(d time.Duration) {
	for {
		old := l.rtt.Load()
		v := int64(d)
		if old != 0 {
			v = old + (int64(d)-old)/8
		}
		if l.rtt.CompareAndSwap(old, v) {
			return
		}
	}
}

// RemoteStore is the Store of a repository on object storage. Its RTT
// (the smoothed time a block's read takes) makes a mount of it read ahead
// by the latency times the rate (staging.LatencyReader), as a mount over
// a repository mover does, rather than by a local store's few chunks.
type RemoteStore struct{ *Local }

// RTT returns the smoothed duration of a block's read from the object
// store, 0 before the first.
func (s RemoteStore) RTT() time.Duration { return time.Duration(s.rtt.Load()) }

// packSize returns the size of pack n, or -1 if the store has no such pack.
func (l *Local) packSize(ctx context.Context, n uint64) (int64, error) {
	if l.remote != nil {
		size, err := l.remote.Stat(ctx, packObject(n))
		if errors.Is(err, objstore.ErrNotFound) {
			return -1, nil
		}
		return size, err
	}
	fi, err := os.Stat(l.packPath(n))
	if errors.Is(err, fs.ErrNotExist) {
		return -1, nil
	}
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// lockSpool holds an exclusive flock on a spool file while this process
// writes it, so that cleanSpools, in another process sharing the cache,
// leaves it alone. The lock goes with the file's last descriptor.
func lockSpool(f *os.File) error {
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("chunkstore: locking a pack spool: %w", err)
	}
	return nil
}

// cleanSpools removes the spool files crashed writers left in the cache:
// those no live process holds locked. Their packs were never uploaded, or
// were and no run names them: a prune's orphans either way.
func (l *Local) cleanSpools() error {
	ents, err := os.ReadDir(l.packsDir())
	if err != nil {
		return fmt.Errorf("chunkstore: listing pack spools: %w", err)
	}
	for _, e := range ents {
		if _, ok := parsePackName(e.Name()); !ok {
			continue
		}
		p := filepath.Join(l.packsDir(), e.Name())
		f, err := os.Open(p)
		if err != nil {
			continue // gone meanwhile
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			l.log.Info("removing a crashed writer's pack spool", "pack", e.Name())
			_ = os.Remove(p)
		}
		f.Close()
	}
	return nil
}

// packFileInfo is a pack as a listing shows it.
type packFileInfo struct {
	n     uint64
	size  int64
	mtime time.Time // when it was last written (a file) or created (an object)
}

// listPacks lists the store's packs: the pack files of a directory, the
// pack objects of a Remote (not the spools of this host's writers).
func (l *Local) listPacks(ctx context.Context) ([]packFileInfo, error) {
	var out []packFileInfo
	if l.remote != nil {
		for o, err := range l.remote.List(ctx, remotePacks) {
			if err != nil {
				return nil, fmt.Errorf("chunkstore: listing packs: %w", err)
			}
			if n, ok := parsePackName(strings.TrimPrefix(o.Name, remotePacks)); ok {
				out = append(out, packFileInfo{n: n, size: o.Size, mtime: o.ModTime})
			}
		}
		return out, nil
	}
	ents, err := os.ReadDir(l.packsDir())
	if err != nil {
		return nil, fmt.Errorf("chunkstore: listing packs: %w", err)
	}
	for _, e := range ents {
		n, ok := parsePackName(e.Name())
		if !ok {
			continue
		}
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		out = append(out, packFileInfo{n: n, size: fi.Size(), mtime: fi.ModTime()})
	}
	return out, nil
}

// removePack removes pack n; a missing one is no error.
func (l *Local) removePack(ctx context.Context, n uint64) error {
	if l.remote != nil {
		if err := l.remote.Delete(ctx, packObject(n)); err != nil {
			return fmt.Errorf("chunkstore: removing pack %s: %w", packName(n), err)
		}
		l.blocks.forget(n)
		return nil
	}
	if err := os.Remove(l.packPath(n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("chunkstore: removing pack %s: %w", packName(n), err)
	}
	return nil
}

// remotePrunePending is the object listing the packs an unfinished prune
// deletes. It is replaced by deleting it and creating it anew: a crash in
// between loses the list, which costs only time (the packs, named by no
// run, are deleted once they are orphanAge old).
const remotePrunePending = "chunks/prune-pending.json"

func writeRemotePrunePending(ctx context.Context, l *Local, b []byte) error {
	if err := l.remote.Delete(ctx, remotePrunePending); err != nil {
		return fmt.Errorf("chunkstore: writing the prune's list of packs: %w", err)
	}
	if err := l.remote.PutIfAbsent(ctx, remotePrunePending, bytes.NewReader(b), int64(len(b))); err != nil {
		return fmt.Errorf("chunkstore: writing the prune's list of packs: %w", err)
	}
	return nil
}

func readRemotePrunePending(ctx context.Context, l *Local) ([]byte, error) {
	b, err := l.remote.Get(ctx, remotePrunePending, nil)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, fs.ErrNotExist
	}
	return b, err
}

func deleteRemotePrunePending(ctx context.Context, l *Local) error {
	if err := l.remote.Delete(ctx, remotePrunePending); err != nil {
		return fmt.Errorf("chunkstore: removing the prune's list of packs: %w", err)
	}
	return nil
}
