package chunkstore

import (
	"context"
	"fmt"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// CopyStats are what CopyRepo did.
type CopyStats struct {
	Points     int   `json:"restore_points"`         // copied
	PointsHeld int   `json:"restore_points_present"` // in the destination already
	Chunks     int   `json:"chunks"`                 // copied
	ChunksHeld int   `json:"chunks_present"`         // in the destination already (deduplicated)
	Bytes      int64 `json:"bytes"`                  // plain bytes of the chunks copied
}

// copyBatch is how many chunk IDs CopyRepo asks the destination about at
// once.
const copyBatch = 1024

// CopyRepo copies into dst the restore points of src that dst lacks,
// oldest first, each with the chunks of its tree and files that dst does
// not hold: a migration from a directory to object storage, or back, or
// between buckets. Each chunk is read verified and stored anew under
// dst's own compression. A point is written only once its chunks are
// durable in dst, so a copy interrupted at any moment leaves dst
// consistent, and running it again copies only what is still missing.
// progress, if set, is called after each point.
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
	return st, nil
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
	if err := dst.store.Flush(ctx); err != nil {
		return err
	}
	return dst.writePoint(ctx, rp)
}
