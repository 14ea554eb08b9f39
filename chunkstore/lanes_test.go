package chunkstore_test

import (
	"cmp"
	"context"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
)

// TestBackupKeepsFilesTogether backs up files with two readers at once and
// checks that each file's chunks lie together, hardly any other file's
// chunk among them: a sequential read of a file on
// object storage then fetches only its own blocks. With one pack for both
// readers, their chunks interleave.
func TestBackupKeepsFilesTogether(t *testing.T) {
	const workers = 2
	src := fakeDataDir(t)
	rnd := rand.New(rand.NewPCG(3, 4))
	files := []string{"base/5/20000", "base/5/20001", "base/5/20002", "base/5/20003"}
	for _, name := range files {
		b := make([]byte, 6<<20)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		require.NoError(t, os.WriteFile(filepath.Join(src, name), b, 0o600))
	}
	r := openRepo(t, t.TempDir())
	ctx := context.Background()
	rp, err := r.Backup(ctx, src, chunkstore.BackupOptions{Workers: workers})
	require.NoError(t, err)
	nodes := checkRestorePoint(t, r, rp, src)

	// Every record of each file, by pack and offset.
	type place struct {
		pack uint64
		off  int64
	}
	var places []place
	owner := map[place]string{}
	for _, n := range nodes {
		if !slices.Contains(files, n.Path) {
			continue // fakeDataDir's files share chunks, stored once
		}
		for _, c := range n.Chunks {
			pack, off, err := chunkstore.ChunkPlace(r.Store(), c.ID)
			require.NoError(t, err, n.Path)
			places = append(places, place{pack, off})
			owner[place{pack, off}] = n.Path
		}
	}
	require.Len(t, slices.Compact(slices.Sorted(maps.Values(owner))), len(files))
	slices.SortFunc(places, func(a, b place) int {
		return cmp.Or(cmp.Compare(a.pack, b.pack), cmp.Compare(a.off, b.off))
	})
	// Count each file's runs of records: one, but that two storers take a
	// lane's chunks in turn, so that at a boundary between two files, each
	// other storer may store one chunk of the file before late or one of
	// the file after early. Each of those splits a run, on either side of
	// a file: at most 1 + 4*(workers-1) runs. One pack for all readers
	// makes dozens.
	runs := map[string]int{}
	for i, p := range places {
		if i == 0 || owner[places[i-1]] != owner[p] {
			runs[owner[p]]++
		}
	}
	for _, name := range files {
		require.LessOrEqual(t, runs[name], 1+4*(workers-1), "%s: its records lie in %d runs, among other files'", name, runs[name])
	}
}
