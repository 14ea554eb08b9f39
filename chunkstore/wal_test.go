package chunkstore_test

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/storetest"
)

// walSegment writes a segment-sized file of WAL-like content (records,
// then zeros past the last one, as a switched segment has) under name.
func walSegment(t *testing.T, dir, name string, seed uint64) string {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	b := append(storetest.RandomBytes(r, 3<<20), make([]byte, 13<<20)...)
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, b, 0o600))
	return p
}

// TestWALPushFetch: a pushed segment fetches back byte for byte, through a
// second repository handle opened meanwhile (another process's view); the
// zero tail is stored once; a retried push of the same file succeeds and
// stores nothing; another file of the same name is refused.
func TestWALPushFetch(t *testing.T) {
	repoDir, src := t.TempDir(), t.TempDir()
	reader, err := chunkstore.OpenRepo(repoDir, nil)
	require.NoError(t, err)
	defer reader.Close()
	writer, err := chunkstore.OpenRepo(repoDir, nil)
	require.NoError(t, err)
	defer writer.Close()

	const name = "000000010000000000000003"
	seg := walSegment(t, src, name, 1)
	already, err := writer.PushWAL(t.Context(), seg)
	require.NoError(t, err)
	require.False(t, already)
	var stored int64
	require.NoError(t, filepath.Walk(filepath.Join(repoDir, "chunks", "packs"), func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			stored += fi.Size()
		}
		return err
	}))
	require.Less(t, stored, int64(4<<20), "the zero tail dedupes to a few chunks")

	dst := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	require.NoError(t, reader.FetchWAL(t.Context(), name, dst))
	want, err := os.ReadFile(seg)
	require.NoError(t, err)
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "fetched segment differs")

	already, err = writer.PushWAL(t.Context(), seg)
	require.NoError(t, err)
	require.True(t, already)

	other := walSegment(t, t.TempDir(), name, 2)
	_, err = writer.PushWAL(t.Context(), other)
	require.ErrorIs(t, err, chunkstore.ErrWALConflict)
	require.NoError(t, reader.FetchWAL(t.Context(), name, dst))
	got, err = os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "a refused push changes nothing")

	err = reader.FetchWAL(t.Context(), "000000010000000000000004", dst)
	require.ErrorIs(t, err, chunkstore.ErrWALNotFound)

	hist := filepath.Join(src, "00000002.history")
	require.NoError(t, os.WriteFile(hist, []byte("1\t0/3000000\tno recovery target specified\n"), 0o600))
	_, err = writer.PushWAL(t.Context(), hist)
	require.NoError(t, err)
	require.NoError(t, reader.FetchWAL(t.Context(), "00000002.history", dst))
	got, err = os.ReadFile(dst)
	require.NoError(t, err)
	require.Equal(t, "1\t0/3000000\tno recovery target specified\n", string(got))
}

func TestWALNames(t *testing.T) {
	for name, ok := range map[string]bool{
		"000000010000000000000001":                 true,
		"000000010000000000000001.partial":         true,
		"000000010000000000000002.00000028.backup": true,
		"00000002.history":                         true,
		"00000001000000000000000":                  false,
		"000000010000000000000001.done":            false,
		"0000000a0000000000000001":                 false, // PostgreSQL writes upper case
		"../00000002.history":                      false,
		"RECOVERYXLOG":                             false,
	} {
		require.Equal(t, ok, chunkstore.ValidWALName(name), name)
	}
	r, err := chunkstore.OpenRepo(t.TempDir(), nil)
	require.NoError(t, err)
	defer r.Close()
	p := filepath.Join(t.TempDir(), "postmaster.pid")
	require.NoError(t, os.WriteFile(p, []byte("x"), 0o600))
	_, err = r.PushWAL(t.Context(), p)
	require.ErrorIs(t, err, chunkstore.ErrBadWALName)
	require.ErrorIs(t, r.FetchWAL(t.Context(), "../x", p), chunkstore.ErrBadWALName)
}

// A WAL record whose chunks were damaged is refused, not written out.
func TestWALFetchCorrupt(t *testing.T) {
	repoDir := t.TempDir()
	r, err := chunkstore.OpenRepo(repoDir, nil)
	require.NoError(t, err)
	defer r.Close()
	const name = "000000010000000000000007"
	_, err = r.PushWAL(t.Context(), walSegment(t, t.TempDir(), name, 3))
	require.NoError(t, err)
	packs, err := filepath.Glob(filepath.Join(repoDir, "chunks", "packs", "*.pack"))
	require.NoError(t, err)
	require.Len(t, packs, 1)
	flipByte(t, packs[0], 1<<20)
	dst := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	err = r.FetchWAL(t.Context(), name, dst)
	var ce *chunk.CorruptChunkError
	require.ErrorAs(t, err, &ce)
	require.NoFileExists(t, dst)
}
