package chunkstore_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
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
	reader, err := chunkstore.OpenRepo(context.Background(), repoDir, nil)
	require.NoError(t, err)
	defer reader.Close()
	writer, err := chunkstore.OpenRepo(context.Background(), repoDir, nil)
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
	r, err := chunkstore.OpenRepo(context.Background(), t.TempDir(), nil)
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
	r, err := chunkstore.OpenRepo(context.Background(), repoDir, nil)
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

// walFileOf returns the record ChunkWAL makes of content.
func walFileOf(t *testing.T, name string, content []byte) *chunkstore.WALFile {
	t.Helper()
	w, err := chunkstore.ChunkWAL(t.Context(), bytes.NewReader(content), name, nil)
	require.NoError(t, err)
	require.NoError(t, w.Check())
	return w
}

// TestWALFileCheck: a description of a WAL file from a peer is refused
// unless its name, sizes, chunk lengths and hash hold together; the hash
// is computed from the chunk list, never taken from the peer.
func TestWALFileCheck(t *testing.T) {
	good := walFileOf(t, "000000010000000000000001", storetest.RandomBytes(rand.New(rand.NewPCG(1, 2)), 300<<10))
	require.Greater(t, len(good.Chunks), 1)
	for _, tc := range []struct {
		name  string
		alter func(w *chunkstore.WALFile)
		want  error
	}{
		{"bad name", func(w *chunkstore.WALFile) { w.Name = "../000000010000000000000001" }, chunkstore.ErrBadWALName},
		{"not a WAL name", func(w *chunkstore.WALFile) { w.Name = "postmaster.pid" }, chunkstore.ErrBadWALName},
		{"above 1 GiB", func(w *chunkstore.WALFile) { w.Size = chunkstore.MaxWALSize + 1 }, chunkstore.ErrBadWALRecord},
		{"negative size", func(w *chunkstore.WALFile) { w.Size = -1 }, chunkstore.ErrBadWALRecord},
		{"too many chunks", func(w *chunkstore.WALFile) {
			w.Chunks = make([]chunkstore.ChunkRef, chunkstore.MaxWALChunks+1)
		}, chunkstore.ErrBadWALRecord},
		{"empty chunk", func(w *chunkstore.WALFile) { w.Chunks[0].Len = 0 }, chunkstore.ErrBadWALRecord},
		{"chunk above the ceiling", func(w *chunkstore.WALFile) { w.Chunks[0].Len = chunk.MaxChunkCeil + 1 }, chunkstore.ErrBadWALRecord},
		{"lengths do not add up", func(w *chunkstore.WALFile) { w.Size-- }, chunkstore.ErrBadWALRecord},
		{"hash of other chunks", func(w *chunkstore.WALFile) { w.Chunks[1].ID = chunk.Sum([]byte("other")) }, chunkstore.ErrBadWALRecord},
		{"hash not hex", func(w *chunkstore.WALFile) { w.Hash = "zz" }, chunkstore.ErrBadWALRecord},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := *good
			w.Chunks = slices.Clone(good.Chunks)
			tc.alter(&w)
			require.ErrorIs(t, w.Check(), tc.want)
		})
	}
}

// TestCommitWAL: the path a repository mover takes, chunks put by the
// caller and the record linked by CommitWAL: a missing chunk links
// nothing, the file then fetches back, a second commit is "already", and
// other content under the name is a conflict. A .history file cut other
// than this build cuts is refused: its record's text could not be checked.
func TestCommitWAL(t *testing.T) {
	r, err := chunkstore.OpenRepo(context.Background(), t.TempDir(), nil)
	require.NoError(t, err)
	defer r.Close()
	ctx := t.Context()
	const name = "000000010000000000000002"
	content := storetest.RandomBytes(rand.New(rand.NewPCG(3, 4)), 500<<10)
	w := walFileOf(t, name, content)

	put := func(w *chunkstore.WALFile, content []byte, skip int) {
		off := 0
		for i, c := range w.Chunks {
			if i != skip {
				require.NoError(t, r.Store().Put(ctx, c.ID, content[off:off+int(c.Len)]))
			}
			off += int(c.Len)
		}
	}
	put(w, content, 1)
	_, err = r.CommitWAL(ctx, w)
	require.ErrorIs(t, err, chunk.ErrNotFound)
	_, err = r.WALRecord(name)
	require.ErrorIs(t, err, chunkstore.ErrWALNotFound, "no record without every chunk")

	put(w, content, -1)
	already, err := r.CommitWAL(ctx, w)
	require.NoError(t, err)
	require.False(t, already)
	dst := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	require.NoError(t, r.FetchWAL(ctx, name, dst))
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(content, got))

	already, err = r.ArchivedWAL(w)
	require.NoError(t, err)
	require.True(t, already)
	already, err = r.CommitWAL(ctx, w)
	require.NoError(t, err)
	require.True(t, already)

	other := append(slices.Clone(content), 'x')
	ow := walFileOf(t, name, other)
	_, err = r.ArchivedWAL(ow)
	require.ErrorIs(t, err, chunkstore.ErrWALConflict)
	put(ow, other, -1)
	_, err = r.CommitWAL(ctx, ow)
	require.ErrorIs(t, err, chunkstore.ErrWALConflict)
	require.NoError(t, r.FetchWAL(ctx, name, dst))
	got, err = os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(content, got), "a conflicting commit changes nothing")

	// A history file of two chunks where the chunker makes one.
	text := []byte("1\t0/3000000\tno recovery target specified\n")
	hw := &chunkstore.WALFile{Name: "00000002.history", Size: int64(len(text)), Chunks: []chunkstore.ChunkRef{
		{ID: chunk.Sum(text[:10]), Len: 10}, {ID: chunk.Sum(text[10:]), Len: uint32(len(text) - 10)},
	}}
	l := chunk.NewFileListHash(uint64(len(text)))
	for _, c := range hw.Chunks {
		l.Add(c.ID, c.Len)
	}
	sum := l.Sum()
	hw.Hash = hex.EncodeToString(sum[:])
	put(hw, text, -1)
	_, err = r.CommitWAL(ctx, hw)
	require.ErrorIs(t, err, chunkstore.ErrBadWALRecord)
	hw = walFileOf(t, "00000002.history", text)
	put(hw, text, -1)
	_, err = r.CommitWAL(ctx, hw)
	require.NoError(t, err)
	rec, err := r.WALRecord("00000002.history")
	require.NoError(t, err)
	require.Equal(t, string(text), rec.History)
}
