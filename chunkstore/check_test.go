package chunkstore_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
)

// Check finds nothing wrong in a sound repository, and names what each kind
// of damage breaks: a lost index run (restore points and WAL files name
// chunks the index lacks), a cut pack (records past its end), and, with
// ReadData only, a flipped byte inside a record.
func TestRepoCheck(t *testing.T) {
	ctx := t.Context()
	fresh := func(t *testing.T) (string, *chunkstore.Repo, *chunkstore.RestorePoint) {
		dir := filepath.Join(t.TempDir(), "repo")
		r := openRepo(t, dir)
		rp, err := r.Backup(ctx, fakeDataDir(t), chunkstore.BackupOptions{})
		require.NoError(t, err)
		_, err = r.PushWAL(ctx, walSegment(t, t.TempDir(), "000000010000000000000001", 4))
		require.NoError(t, err)
		return dir, r, rp
	}
	check := func(t *testing.T, r *chunkstore.Repo, readData bool) *chunkstore.CheckReport {
		rep, err := r.Check(ctx, chunkstore.CheckOptions{ReadData: readData})
		require.NoError(t, err)
		return rep
	}

	t.Run("sound", func(t *testing.T) {
		_, r, _ := fresh(t)
		for _, readData := range []bool{false, true} {
			rep := check(t, r, readData)
			require.Empty(t, rep.Problems)
			require.Equal(t, 1, rep.RestorePoints)
			require.Equal(t, 1, rep.WALFiles)
			require.Positive(t, rep.Chunks)
		}
	})
	t.Run("lost run", func(t *testing.T) {
		dir, r, rp := fresh(t)
		require.NoError(t, r.Close())
		runs, err := filepath.Glob(filepath.Join(dir, "chunks", "idx", "*.idx"))
		require.NoError(t, err)
		for _, p := range runs {
			require.NoError(t, os.Remove(p))
		}
		r = openRepo(t, dir)
		rep := check(t, r, false)
		text := strings.Join(rep.Problems, "\n")
		require.Contains(t, text, "restore point "+rp.ID)
		require.Contains(t, text, "WAL file 000000010000000000000001: chunk")
	})
	t.Run("cut pack", func(t *testing.T) {
		dir, r, _ := fresh(t)
		packs, err := filepath.Glob(filepath.Join(dir, "chunks", "packs", "*.pack"))
		require.NoError(t, err)
		require.NotEmpty(t, packs)
		fi, err := os.Stat(packs[0])
		require.NoError(t, err)
		require.NoError(t, os.Truncate(packs[0], fi.Size()/2))
		rep := check(t, r, false)
		require.NotEmpty(t, rep.Problems)
		require.Contains(t, rep.Problems[0], "ends at")
	})
	t.Run("flipped byte", func(t *testing.T) {
		dir, r, _ := fresh(t)
		packs, err := filepath.Glob(filepath.Join(dir, "chunks", "packs", "*.pack"))
		require.NoError(t, err)
		flipByte(t, packs[0], 1<<20)
		require.Empty(t, check(t, r, false).Problems, "without --read-data no chunk is read")
		rep := check(t, r, true)
		require.Len(t, rep.Problems, 1)
		require.Contains(t, rep.Problems[0], "corrupt")
	})
}
