package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// CopyStats are what CopyRepo did.
type CopyStats struct {
	Points     int   `json:"restore_points"`         // copied
	PointsHeld int   `json:"restore_points_present"` // in the destination already
	Chunks     int   `json:"chunks"`                 // copied
	ChunksHeld int   `json:"chunks_present"`         // in the destination already (deduplicated)
	WAL        int   `json:"wal_files"`              // WAL archive records copied
	WALHeld    int   `json:"wal_files_present"`      // in the destination already
	Bytes      int64 `json:"bytes"`                  // plain bytes of the chunks copied
}

// copyBatch is how many chunk IDs CopyRepo asks the destination about at
// once.
const copyBatch = 1024

// CopyRepo copies into dst the restore points of src that dst lacks,
// oldest first, each with the chunks of its tree and files that dst does
// not hold, and then the WAL files of src's archive that dst's lacks: a
// migration from a directory to object storage, or back, or between
// buckets. Each chunk is read verified and stored anew under dst's own
// compression (and key). A point or a WAL record is written only once its
// chunks are durable in dst, so a copy interrupted at any moment leaves
// dst consistent, and running it again copies only what is still
// missing. A WAL file that dst archives already with other content stops
// the copy with an error matching ErrWALConflict: the two archives are of
// different histories. progress, if set, is called after each point and
// every 100 WAL files.
func CopyRepo(ctx context.Context, src, dst *Repo, progress func(CopyStats)) (CopyStats, error) {
	var st CopyStats
	from, err := src.List()
	if err != nil {
		return st, err
	}
	to, err := dst.List()
	if err != nil {
		return st, err
	}
	held := make(map[string]bool, len(to))
	for _, rp := range to {
		held[rp.ID] = true
	}
	for i := range from {
		rp := &from[i]
		if held[rp.ID] {
			st.PointsHeld++
			continue
		}
		if err := copyPoint(ctx, src, dst, rp, &st); err != nil {
			return st, fmt.Errorf("copying restore point %s: %w", rp.ID, err)
		}
		st.Points++
		if progress != nil {
			progress(st)
		}
	}
	if err := copyWAL(ctx, src, dst, &st, progress); err != nil {
		return st, fmt.Errorf("copying the WAL archive: %w", err)
	}
	return st, nil
}

// copyWAL copies the WAL records of src's archive that dst's lacks, in
// name order (a segment before the ones after it), each with its chunks
// and the time it was pushed.
func copyWAL(ctx context.Context, src, dst *Repo, st *CopyStats, progress func(CopyStats)) error {
	names, err := src.walNames(ctx)
	if err != nil {
		return err
	}
	have, err := dst.walNames(ctx)
	if err != nil {
		return err
	}
	held := make(map[string]bool, len(have))
	for _, n := range have {
		held[n] = true
	}
	slices.Sort(names)
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		w, err := src.readWAL(ctx, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // pruned since the listing
		}
		if err != nil {
			return err
		}
		if held[name] {
			old, err := dst.readWAL(ctx, name)
			if err != nil {
				return err
			}
			if err := sameWAL(old, w); err != nil {
				return err
			}
			st.WALHeld++
			continue
		}
		var ids []chunk.ID
		seen := make(map[chunk.ID]bool, len(w.Chunks))
		for _, c := range w.Chunks {
			if !seen[c.ID] {
				seen[c.ID] = true
				ids = append(ids, c.ID)
			}
		}
		if err := copyChunks(ctx, src, dst, ids, st); err != nil {
			return fmt.Errorf("WAL file %s: %w", name, err)
		}
		pushed := w.Pushed
		if pushed.IsZero() {
			pushed = time.Now().UTC()
		}
		already, err := dst.commitWAL(ctx, w, pushed)
		if err != nil {
			return err
		}
		if already {
			st.WALHeld++
			continue
		}
		st.WAL++
		if progress != nil && st.WAL%100 == 0 {
			progress(*st)
		}
	}
	return nil
}

func copyPoint(ctx context.Context, src, dst *Repo, rp *RestorePoint, st *CopyStats) error {
	nodes, err := src.Tree(ctx, rp)
	if err != nil {
		return err
	}
	seen := map[chunk.ID]bool{}
	var ids []chunk.ID
	add := func(id chunk.ID) {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for _, id := range rp.Tree {
		add(id)
	}
	for _, n := range nodes {
		for _, c := range n.Chunks {
			add(c.ID)
		}
	}
	if err := copyChunks(ctx, src, dst, ids, st); err != nil {
		return err
	}
	if err := dst.store.Flush(ctx); err != nil {
		return err
	}
	return dst.writePoint(ctx, rp)
}

// copyChunks stores in dst those of ids (distinct) that it lacks, each
// read verified from src; the caller flushes dst's store.
func copyChunks(ctx context.Context, src, dst *Repo, ids []chunk.ID, st *CopyStats) error {
	var buf []byte
	for len(ids) > 0 {
		batch := ids[:min(copyBatch, len(ids))]
		ids = ids[len(batch):]
		have, err := dst.store.HasMany(ctx, batch)
		if err != nil {
			return err
		}
		for j, id := range batch {
			if have[j] {
				st.ChunksHeld++
				continue
			}
			if buf, err = src.store.Get(ctx, id, buf[:0]); err != nil {
				return err
			}
			// Get checked buf against id.
			if err := dst.store.putSummed(ctx, id, buf); err != nil {
				return err
			}
			st.Chunks++
			st.Bytes += int64(len(buf))
		}
	}
	return nil
}
