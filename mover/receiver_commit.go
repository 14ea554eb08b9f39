package mover

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
)

// finish waits for the last chunks, then verifies and commits the tree.
func (r *receiver) finish(ctx context.Context, done *protocol.SendDone) error {
	for {
		r.mu.Lock()
		missing, inflight, received := len(r.pending), r.inflight, r.received
		r.mu.Unlock()
		if missing == 0 && inflight == 0 {
			break
		}
		if missing > 0 && inflight == 0 && received >= done.Chunks {
			return fmt.Errorf("%w: sender finished sending but %d chunks are missing", protocol.ErrProtocol, missing)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-r.arrived:
		}
	}
	if err := r.sync(); err != nil {
		return err
	}
	return r.commit(ctx)
}

// commit verifies every file, writes the manifest, and renames DEST.partial
// to DEST, durably.
func (r *receiver) commit(ctx context.Context) error {
	man, err := r.verifyFiles(ctx)
	if err != nil {
		return err
	}
	// The data of every file is durable already: finish's last barrier
	// synced what this connection wrote, and the barriers that recorded
	// positions of earlier runs synced theirs. What is left are the modes
	// and times just set, durable before the manifest that vouches for the
	// tree is written.
	if err := r.syncMetadata(man.Files); err != nil {
		return err
	}
	r.fc.closeAll()
	if err := r.prune(); err != nil {
		return err
	}
	if err := r.makeDirs(); err != nil {
		return err
	}
	mh, err := r.writeManifest(&man)
	if err != nil {
		return err
	}
	c, err := r.journalCommit(&man, mh)
	if err != nil {
		return err
	}
	if err := r.renameIntoPlace(c); err != nil {
		return err
	}
	r.s.removeAside(r.root, c, r.log)
	done := transferDone{Dest: r.meta.Dest, Files: uint64(len(man.Files)), Bytes: uint64(man.Bytes), ManifestHash: mh, Committed: time.Now().UTC()}
	if err := r.s.recordDone(r.tid, r.peer, done); err != nil {
		return err
	}
	r.log.Info("transfer committed", "transfer", r.tid, "dest", r.meta.Dest, "files", len(man.Files), "bytes", man.Bytes)
	r.s.metrics.transfersDone.Inc()
	return r.cs.write(&protocol.Committed{Files: uint64(len(man.Files)), Bytes: uint64(man.Bytes), ManifestHash: mh})
}

// verifyFiles checks every file in DEST.partial, sets its mode and
// modification time, and returns the manifest that lists them. A file that
// fails its check has its positions forgotten; the error names the first.
func (r *receiver) verifyFiles(ctx context.Context) (Manifest, error) {
	man := Manifest{Format: ManifestFormat2, Transfer: r.tid, Created: time.Now().UTC(), Chunking: r.meta.Params}
	var bad []string
	why := "" // the first bad file's error
	for _, f := range r.files {
		p := filepath.FromSlash(f.hdr.Path)
		err := r.checkPositions(f)
		if err == nil {
			err = r.checkSize(p, int64(f.hdr.Size))
		}
		if err == nil && r.s.o.VerifyCommit {
			err = r.rereadPartial(ctx, f)
		}
		if err != nil && ctx.Err() != nil {
			return Manifest{}, context.Cause(ctx)
		}
		n := int64(f.hdr.Size)
		if err != nil {
			// Check every file before giving up, so that one rerun resends
			// everything that is wrong.
			if err := r.forgetFile(f); err != nil {
				return Manifest{}, err
			}
			if len(bad) == 0 {
				why = ": " + err.Error()
			}
			bad = append(bad, f.hdr.Path)
			continue
		}
		mt := time.Unix(0, f.hdr.MTime)
		mode := f.hdr.Mode & maxFileMode
		if err := r.proot.Chmod(p, fs.FileMode(mode)); err != nil {
			return Manifest{}, err
		}
		if err := r.proot.Chtimes(p, mt, mt); err != nil {
			return Manifest{}, err
		}
		man.Files = append(man.Files, ManifestFile{Path: f.hdr.Path, Size: n, Mode: FileMode(mode), MTime: mt.UTC(), ChunksBLAKE3: f.hash})
		man.Bytes += n
	}
	if len(bad) > 0 {
		return Manifest{}, fmt.Errorf("%w: %d file(s) did not verify after transfer (first: %s%s); rerun to resend them", protocol.ErrCorrupt, len(bad), bad[0], why)
	}
	return man, nil
}

// writeManifest writes man into DEST.partial, sets the directories'
// times and syncs every directory of the tree. It returns the manifest's
// hash.
func (r *receiver) writeManifest(man *Manifest) (Hash, error) {
	body, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return Hash{}, err
	}
	body = append(body, '\n')
	if err := writeManifestFile(r.proot, body); err != nil {
		return Hash{}, fmt.Errorf("writing manifest: %w", err)
	}
	if err := r.setDirTimes(); err != nil {
		return Hash{}, err
	}
	if err := syncDirs(r.proot, "."); err != nil {
		return Hash{}, err
	}
	return Hash(chunk.Sum(body)), nil
}

// journalCommit records durably what DEST will hold before it does: after
// a crash between the rename and the done record, only a tree with this
// manifest counts as committed.
// With FlagOverwrite, the DEST there is moved aside first; the record
// names where, so that a crash before the done record leaves it findable:
// put back, or removed once DEST is ours.
func (r *receiver) journalCommit(man *Manifest, mh Hash) (commitRecord, error) {
	c := commitRecord{Dest: r.meta.Dest, Files: uint64(len(man.Files)), Bytes: uint64(man.Bytes), ManifestHash: mh}
	if r.replace {
		c.Aside = AsideName(r.rel, r.tid)
	}
	cr, _ := json.Marshal(c)
	if err := r.s.db.Set(keyCommit(r.tid), cr, pebble.Sync); err != nil {
		return commitRecord{}, fmt.Errorf("journaling the commit: %w", err)
	}
	return c, nil
}

// renameIntoPlace renames DEST.partial to DEST, moving a DEST to be
// replaced to c.Aside first, and syncs the directory that holds it.
func (r *receiver) renameIntoPlace(c commitRecord) error {
	// The name must still be the directory we wrote, and DEST still free
	// (or, to be replaced, a real directory): a link or directory swapped
	// in meanwhile is never committed.
	if err := samePartial(r.root, r.partial, r.proot); err != nil {
		return err
	}
	if fi, err := r.root.Lstat(r.rel); err == nil {
		if !r.replace {
			return fmt.Errorf("%w: %s appeared while the transfer ran; remove it and rerun", protocol.ErrConflict, r.meta.Dest)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%w: %s is not a directory: --overwrite replaces only a directory", protocol.ErrConflict, r.meta.Dest)
		}
		if _, err := MoveAside(r.root, r.rel, c.Aside); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := r.root.Rename(r.partial, r.rel); err != nil {
		if c.Aside != "" {
			if _, perr := PutBack(r.root, r.rel, c.Aside); perr != nil {
				err = errors.Join(err, perr)
			}
		}
		return fmt.Errorf("renaming into place: %w", err)
	}
	return syncRootDir(r.root, filepath.Dir(r.rel))
}

// syncMetadata makes the modes and times commit set durable: one syncfs,
// or an fsync per file where syncfs cannot report errors.
func (r *receiver) syncMetadata(files []ManifestFile) error {
	if len(files) > syncfsMin && r.fc.canSyncAll() {
		if err := r.fc.syncAll(); err != nil {
			return r.noSpace("", fmt.Errorf("syncing %s.partial: %w", r.meta.Dest, err))
		}
		return nil
	}
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = f.Path
	}
	if p, err := r.fc.syncEach(paths, 4); err != nil {
		return r.noSpace(p, fmt.Errorf("syncing %s: %w", p, err))
	}
	return nil
}

// errUnverified is matched by a commit check that finds a file whose durable
// positions do not make up the file the sender listed.
var errUnverified = errors.New("durable chunks do not make up the file")

// checkPositions checks, without reading f, that its durable positions
// are chunks 0..n-1 of the manifest, contiguous from offset 0 to its size,
// and that their (ID, length) hash to the chunk-list hash FileEnd gave (and
// addChunks checked against the refs). Every position vouches for bytes
// verified against its ID when they arrived, or re-read when a resumed
// transfer reached them, and fsynced before it was recorded.
func (r *receiver) checkPositions(f *rfile) error {
	prefix := []byte("t/" + r.tid + "/p/" + f.hdr.Path + "\x00")
	it, err := r.s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return err
	}
	defer it.Close()
	list := chunk.NewFileListHash(f.hdr.Size)
	var (
		n   uint32
		off int64
	)
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[len(prefix):]
		rec, ok := decodePos(it.Value())
		switch {
		case len(k) != 4 || !ok:
			return fmt.Errorf("%w: bad position record", errUnverified)
		case binary.BigEndian.Uint32(k) != n:
			return fmt.Errorf("%w: chunk %d is not durable", errUnverified, n)
		case rec.off != off || rec.n == 0:
			return fmt.Errorf("%w: chunk %d at offset %d, expected %d", errUnverified, n, rec.off, off)
		}
		list.Add(rec.id, rec.n)
		off += int64(rec.n)
		n++
	}
	if err := it.Error(); err != nil {
		return err
	}
	if int(n) != f.nchunks || off != int64(f.hdr.Size) {
		return fmt.Errorf("%w: %d durable chunks cover %d bytes, expected %d chunks, %d bytes", errUnverified, n, off, f.nchunks, f.hdr.Size)
	}
	if list.Sum() != f.hash {
		return fmt.Errorf("%w: the durable chunks are not the ones listed", errUnverified)
	}
	return nil
}

// checkSize checks that file p of DEST.partial is a regular file of size
// bytes: one stat catches a file cut short since its chunks were written.
func (r *receiver) checkSize(p string, size int64) error {
	fi, err := r.proot.Lstat(p)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Size() != size {
		return fmt.Errorf("%w: %s is %d bytes, expected %d", errUnverified, filepath.ToSlash(p), fi.Size(), size)
	}
	return nil
}

// rereadPartial reads f from DEST.partial and checks it, cut again, against
// its chunk-list hash (ServerOptions.VerifyCommit).
func (r *receiver) rereadPartial(ctx context.Context, f *rfile) error {
	fh, err := r.proot.Open(filepath.FromSlash(f.hdr.Path))
	if err != nil {
		return err
	}
	defer fh.Close()
	h, _, n, err := hashChunkList(ctx, fh, int64(f.hdr.Size), r.meta.Params, false)
	switch {
	case err != nil:
		return err
	case n != int64(f.hdr.Size) || h != f.hash:
		return fmt.Errorf("%w: %s changed on disk", errUnverified, f.hdr.Path)
	}
	return nil
}

// prune removes from DEST.partial whatever the manifest does not list:
// files of an older version of the source, or of another transfer that
// abandoned the same destination. Only listed files are committed.
func (r *receiver) prune() error {
	keepDirs := map[string]bool{".": true}
	for d := range r.dirs {
		for ; d != "."; d = path.Dir(d) {
			keepDirs[d] = true
		}
	}
	for p := range r.paths {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			keepDirs[d] = true
		}
	}
	var dirs []string
	err := fs.WalkDir(r.proot.FS(), ".", func(rel string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		p := rel
		if rel == "." {
			return nil
		}
		if d.IsDir() {
			if !keepDirs[rel] {
				dirs = append(dirs, p)
			}
			return nil
		}
		if !r.paths[rel] {
			r.log.Info("removing a file the manifest does not list", "transfer", r.tid, "path", rel)
			return r.proot.Remove(filepath.FromSlash(p))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pruning %s.partial: %w", r.meta.Dest, err)
	}
	for i := len(dirs) - 1; i >= 0; i-- { // deepest first
		if err := r.proot.Remove(filepath.FromSlash(dirs[i])); err != nil {
			return fmt.Errorf("pruning %s.partial: %w", r.meta.Dest, err)
		}
	}
	return nil
}

// dedupeBatchBytes bounds the batches in which recordDone writes a committed
// tree's dedupe records.
var dedupeBatchBytes = 4 << 20 // a variable for tests

// recordDone marks transfer tid complete, indexes its chunks (its durable
// positions) for dedupe by later transfers of the same peer, and drops its
// per-position state.
func (s *Server) recordDone(tid string, peer PeerID, d transferDone) error {
	prefix := keyPosPrefix(tid)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return err
	}
	// The dedupe records go in batches of bounded size, unsynced: memory
	// does not grow with the tree. They are hints, checked when used (a
	// copy is verified against its chunk ID), so one written before a crash
	// that leaves the transfer not done points at nothing harmful, and a
	// rerun writes them again. The synced commit below makes them durable
	// with the completion record. A chunk at several positions is recorded
	// at the last one scanned.
	b := s.db.NewBatch()
	defer func() { b.Close() }()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[len(prefix):]
		if len(k) < 5 || k[len(k)-5] != 0 {
			continue
		}
		rec, ok := decodePos(it.Value())
		if !ok {
			continue
		}
		abs := filepath.Join(d.Dest, filepath.FromSlash(string(k[:len(k)-5])))
		b.Set(keyDedupe(peer, rec.id), encodeDedupe(abs, rec.off, rec.n), nil)
		if b.Len() >= dedupeBatchBytes {
			if err = b.Commit(pebble.NoSync); err != nil {
				break
			}
			b.Close()
			b = s.db.NewBatch()
		}
	}
	if err == nil {
		err = it.Error()
	}
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("recording completion: %w", err)
	}
	done, _ := json.Marshal(d)
	b.Set(keyDone(tid), done, nil)
	b.Delete(keyDest(d.Dest), nil)
	b.Delete(keyCommit(tid), nil)
	b.DeleteRange(prefix, prefixEnd(prefix), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("recording completion: %w", err)
	}
	return nil
}

func syncRootDir(root *os.Root, dir string) error {
	d, err := root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// syncDirs fsyncs dir and every directory below it, so that the names of
// the files in them are durable before the tree is renamed into place.
func syncDirs(root *os.Root, dir string) error {
	return fs.WalkDir(root.FS(), filepath.ToSlash(dir), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return syncRootDir(root, filepath.FromSlash(p))
		}
		return nil
	})
}
