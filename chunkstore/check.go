package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// CheckOptions configure Repo.Check.
type CheckOptions struct {
	// ReadData reads back every chunk and checks its hash; without it,
	// only that every indexed record lies inside an existing pack.
	ReadData bool
}

// CheckReport is what Repo.Check found.
type CheckReport struct {
	Chunks        int      `json:"chunks"`         // index entries checked
	RestorePoints int      `json:"restore_points"` // restore points whose trees were read
	WALFiles      int      `json:"wal_files"`      // WAL records read
	Problems      []string `json:"problems"`
}

// maxProblems bounds the problems a check lists; past it, a count.
const maxProblems = 100

// Check verifies the repository, like 'restic check': every index run is
// whole; every indexed record lies inside its pack (with ReadData, every
// chunk decodes to its hash); every restore point's tree decodes and names
// only held chunks; every WAL record decodes and names only held chunks.
// It changes nothing. Problems are reported, not returned as an error; an
// error means the check itself could not run.
func (r *Repo) Check(ctx context.Context, o CheckOptions) (*CheckReport, error) {
	rep := &CheckReport{Problems: []string{}}
	more := 0
	add := func(format string, args ...any) {
		if len(rep.Problems) < maxProblems {
			rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
		} else {
			more++
		}
	}
	if err := r.store.refresh(ctx); err != nil {
		return nil, err
	}
	for name, err := range r.store.Damaged() {
		add("index run %s is damaged (its chunks read as missing): %v", name, err)
	}
	bad := func(id chunk.ID, err error) {
		if id == (chunk.ID{}) {
			add("%v", err) // an encrypted store's record that did not open: err names its object
			return
		}
		add("chunk %s: %v", id, err)
	}
	var err error
	if o.ReadData {
		var st VerifyStats
		st, err = r.store.Verify(ctx, bad)
		rep.Chunks = st.Chunks
	} else {
		rep.Chunks, err = r.store.CheckLocations(ctx, bad)
	}
	if err != nil {
		return nil, err
	}
	rps, err := r.List()
	if err != nil {
		return nil, err
	}
	for i := range rps {
		rp := &rps[i]
		nodes, err := r.Tree(ctx, rp)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			add("restore point %s: %v", rp.ID, err)
			continue
		}
		rep.RestorePoints++
		var refs []chunk.ID
		for _, n := range nodes {
			for _, c := range n.Chunks {
				refs = append(refs, c.ID)
			}
		}
		if err := r.checkHeld(ctx, refs, func(id chunk.ID) { add("restore point %s: chunk %s is not in the repository", rp.ID, id) }); err != nil {
			return nil, err
		}
	}
	walNames, err := r.walNames(ctx)
	if err != nil {
		return nil, err
	}
	for _, name := range walNames {
		w, err := r.readWAL(ctx, name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			add("WAL record %s.json: %v", name, err)
			continue
		}
		rep.WALFiles++
		refs := make([]chunk.ID, len(w.Chunks))
		for i, c := range w.Chunks {
			refs[i] = c.ID
		}
		if err := r.checkHeld(ctx, refs, func(id chunk.ID) { add("WAL file %s: chunk %s is not in the repository", w.Name, id) }); err != nil {
			return nil, err
		}
	}
	if more > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("and %d more problems", more))
	}
	return rep, nil
}

// checkHeld calls missing once for each of ids the store does not hold.
func (r *Repo) checkHeld(ctx context.Context, ids []chunk.ID, missing func(chunk.ID)) error {
	slices.SortFunc(ids, func(a, b chunk.ID) int { return bytes.Compare(a[:], b[:]) })
	ids = slices.Compact(ids)
	held, err := r.store.HasMany(ctx, ids)
	if err != nil {
		return err
	}
	for i, ok := range held {
		if !ok {
			missing(ids[i])
		}
	}
	return nil
}
