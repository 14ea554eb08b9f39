package chunkstore_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/storetest"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// Record layout, as documented in pack.go; the tests poke at it on purpose.
const (
	recordMagic      = "PGK1"
	recordHeaderSize = 49
)

func TestLocalConformance(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts chunkstore.LocalOptions
	}{
		{"defaults", chunkstore.LocalOptions{}},
		// Small packs and flush thresholds: rolling and auto-flush happen
		// in the middle of the suite's concurrent writers.
		{"small packs", chunkstore.LocalOptions{PackSize: 256 << 10, FlushBytes: 100 << 10}},
		{"uncompressed", chunkstore.LocalOptions{NoCompression: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) chunkstore.Store {
				l, err := chunkstore.OpenLocal(t.TempDir(), tc.opts)
				require.NoError(t, err)
				return l
			})
		})
	}
}

func TestLocalOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts chunkstore.LocalOptions
		ok   bool
	}{
		{"zero", chunkstore.LocalOptions{}, true},
		{"none", chunkstore.LocalOptions{NoCompression: true}, true},
		{"best", chunkstore.LocalOptions{Level: chunk.LevelBest}, true},
		{"bad level", chunkstore.LocalOptions{Level: chunk.LevelBest + 1}, false},
		{"negative pack size", chunkstore.LocalOptions{PackSize: -1}, false},
		{"huge pack size", chunkstore.LocalOptions{PackSize: 1 << 50}, false},
		{"negative flush bytes", chunkstore.LocalOptions{FlushBytes: -1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.opts.Validate()
			if tc.ok {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			_, err = chunkstore.OpenLocal(t.TempDir(), tc.opts)
			require.Error(t, err)
		})
	}
}

func openLocal(t *testing.T, dir string, opts chunkstore.LocalOptions) *chunkstore.Local {
	t.Helper()
	l, err := chunkstore.OpenLocal(dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, l.Close()) })
	return l
}

func putChunks(t *testing.T, s chunkstore.Store, chunks [][]byte) []chunk.ID {
	t.Helper()
	ids := make([]chunk.ID, len(chunks))
	for i, c := range chunks {
		ids[i] = chunk.Sum(c)
		require.NoError(t, s.Put(t.Context(), ids[i], c))
	}
	return ids
}

func requireChunks(t *testing.T, s chunkstore.Store, chunks [][]byte) {
	t.Helper()
	for i, c := range chunks {
		got, err := s.Get(t.Context(), chunk.Sum(c), nil)
		require.NoError(t, err, "chunk %d", i)
		require.True(t, bytes.Equal(c, got), "chunk %d differs", i)
	}
}

func requireVerifyClean(t *testing.T, s chunkstore.Store, chunks int) {
	t.Helper()
	st, err := s.Verify(t.Context(), func(id chunk.ID, err error) { t.Errorf("chunk %s: %v", id, err) })
	require.NoError(t, err)
	require.Equal(t, chunks, st.Chunks)
	require.Zero(t, st.Corrupt)
}

func packFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "packs", "*.pack"))
	require.NoError(t, err)
	slices.Sort(names)
	return names
}

func TestLocalReopen(t *testing.T) {
	dir := t.TempDir()
	first := storetest.Chunks(10, 40)
	l, err := chunkstore.OpenLocal(dir, chunkstore.LocalOptions{})
	require.NoError(t, err)
	putChunks(t, l, first)
	require.NoError(t, l.Close()) // flushes

	l = openLocal(t, dir, chunkstore.LocalOptions{})
	requireChunks(t, l, first)
	requireVerifyClean(t, l, len(first))
	second := [][]byte{[]byte("after reopen"), bytes.Repeat([]byte("more "), 10000)}
	putChunks(t, l, second)
	require.NoError(t, l.Flush(t.Context()))
	requireChunks(t, l, append(slices.Clone(first), second...))
	// A writer appends only to packs it created itself: another process
	// may still be writing the first one.
	require.Len(t, packFiles(t, dir), 2)
}

func TestLocalPackRolling(t *testing.T) {
	const packSize = 64 << 10
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(1, 2))
	var chunks [][]byte
	for range 40 {
		chunks = append(chunks, storetest.RandomBytes(r, 20<<10))
	}
	big := storetest.RandomBytes(r, 3*packSize) // a record larger than a pack
	chunks = append(chunks, big, []byte("after the big one"))

	l, err := chunkstore.OpenLocal(dir, chunkstore.LocalOptions{PackSize: packSize})
	require.NoError(t, err)
	putChunks(t, l, chunks)
	requireChunks(t, l, chunks)
	require.NoError(t, l.Close())

	packs := packFiles(t, dir)
	require.Greater(t, len(packs), 10)
	for _, p := range packs {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		if fi.Size() > packSize {
			require.Equal(t, int64(recordHeaderSize+len(big)), fi.Size(), "only a lone oversized record may exceed the pack size")
		}
	}
	l = openLocal(t, dir, chunkstore.LocalOptions{PackSize: packSize})
	requireChunks(t, l, chunks)
	requireVerifyClean(t, l, len(chunks))
}

func TestLocalFlushBytes(t *testing.T) {
	l := openLocal(t, t.TempDir(), chunkstore.LocalOptions{FlushBytes: 1})
	chunks := storetest.Chunks(11, 8)
	putChunks(t, l, chunks)
	var n int
	require.NoError(t, l.Iterate(t.Context(), func(chunk.ID, chunkstore.Info) error { n++; return nil }))
	require.Equal(t, len(chunks), n, "every Put past FlushBytes flushes by itself")
}

// findRecord returns the pack file and offset of id's record.
func findRecord(t *testing.T, dir string, id chunk.ID) (string, int64) {
	t.Helper()
	for _, p := range packFiles(t, dir) {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		if i := bytes.Index(b, append([]byte(recordMagic), id[:]...)); i >= 0 {
			return p, int64(i)
		}
	}
	t.Fatalf("no record of %s", id)
	return "", 0
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	var b [1]byte
	_, err = f.ReadAt(b[:], off)
	require.NoError(t, err)
	b[0] ^= 0x40
	_, err = f.WriteAt(b[:], off)
	require.NoError(t, err)
}

func TestLocalCorruption(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	chunks := [][]byte{
		storetest.RandomBytes(r, 50<<10), // stored as is
		storetest.Text(r, 200<<10),       // stored zstd
		storetest.RandomBytes(r, 10<<10),
		storetest.Text(r, 30<<10),
		[]byte("small"),
	}
	for _, tc := range []struct {
		name   string
		target int
		where  func(storedLen int) int64 // offset from the record start
		// header: the damage is in the record's header, which GetStored
		// checks; otherwise only decoding and hashing find it.
		header bool
	}{
		{"plain payload", 0, func(n int) int64 { return recordHeaderSize + int64(n/2) }, false},
		{"zstd payload start", 1, func(n int) int64 { return recordHeaderSize + 5 }, false},
		{"zstd payload middle", 1, func(n int) int64 { return recordHeaderSize + int64(n/2) }, false},
		{"zstd payload end", 1, func(n int) int64 { return recordHeaderSize + int64(n-1) }, false},
		{"header length", 3, func(int) int64 { return 38 }, true},
		{"header codec", 2, func(int) int64 { return 36 }, true},
		{"header ID", 2, func(int) int64 { return 10 }, true},
		{"small payload", 4, func(n int) int64 { return recordHeaderSize + 1 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l, err := chunkstore.OpenLocal(dir, chunkstore.LocalOptions{})
			require.NoError(t, err)
			ids := putChunks(t, l, chunks)
			require.NoError(t, l.Close())
			target := ids[tc.target]

			// Find the stored length through the public API.
			l = openLocal(t, dir, chunkstore.LocalOptions{})
			var stored int
			require.NoError(t, l.Iterate(t.Context(), func(id chunk.ID, info chunkstore.Info) error {
				if id == target {
					stored = info.StoredLen
				}
				return nil
			}))
			path, off := findRecord(t, dir, target)
			flipByte(t, path, off+tc.where(stored))

			_, err = l.Get(t.Context(), target, nil)
			var ce *chunk.CorruptChunkError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, target, ce.ID)
			require.Contains(t, err.Error(), target.String())

			// GetStored refuses a record whose header is damaged; it hands
			// out a damaged payload, which then fails to decode or verify.
			dst := []byte("kept")
			got, info, err := l.GetStored(t.Context(), target, dst)
			if tc.header {
				require.ErrorAs(t, err, &ce)
				require.Equal(t, target, ce.ID)
				require.Equal(t, []byte("kept"), got)
			} else {
				require.NoError(t, err)
				require.Equal(t, stored, info.StoredLen)
				plain, err := chunk.Decompress(nil, got[len(dst):], info.Codec, info.PlainLen)
				if err == nil {
					err = chunk.VerifyContent(target, plain)
				}
				require.Error(t, err, "a damaged payload must not decode to the chunk")
			}

			for i, c := range chunks {
				if i != tc.target {
					requireChunks(t, l, [][]byte{c})
				}
			}
			var bad []chunk.ID
			st, err := l.Verify(t.Context(), func(id chunk.ID, err error) {
				require.ErrorAs(t, err, &ce)
				bad = append(bad, id)
			})
			require.NoError(t, err)
			require.Equal(t, []chunk.ID{target}, bad)
			require.Equal(t, chunkstore.VerifyStats{Chunks: len(chunks), PlainBytes: st.PlainBytes, Corrupt: 1}, st)
		})
	}
}

// GetStored hands out a chunk as its record stores it: appended to dst,
// with the codec and lengths of the index, decoding to the chunk; for a
// chunk not yet flushed too.
// TestLocalS2AtRest: a store written with S2 chunks (codec byte 2 in its
// pack records) reads them back, after reopening too, and GetStored hands
// them out as stored.
func TestLocalS2AtRest(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	chunks := [][]byte{storetest.Text(r, 200<<10), storetest.RandomBytes(r, 50<<10)}
	dir := t.TempDir()
	l := openLocal(t, dir, chunkstore.LocalOptions{Level: chunk.LevelS2})
	ids := putChunks(t, l, chunks)
	require.NoError(t, l.Close())

	l = openLocal(t, dir, chunkstore.LocalOptions{})
	for i, id := range ids {
		got, err := l.Get(t.Context(), id, nil)
		require.NoError(t, err)
		require.True(t, bytes.Equal(chunks[i], got), "chunk %d", i)
	}
	stored, info, err := l.GetStored(t.Context(), ids[0], nil)
	require.NoError(t, err)
	require.Equal(t, chunk.CodecS2, info.Codec)
	plain, err := chunk.Decompress(nil, stored, info.Codec, info.PlainLen)
	require.NoError(t, err)
	require.True(t, bytes.Equal(chunks[0], plain))
	_, info, err = l.GetStored(t.Context(), ids[1], nil)
	require.NoError(t, err)
	require.Equal(t, chunk.CodecNone, info.Codec, "S2 that does not pay is stored plain")
}

func TestLocalGetStored(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	chunks := [][]byte{
		storetest.RandomBytes(r, 50<<10), // stored as is
		storetest.Text(r, 200<<10),       // stored zstd
		[]byte("small"),
		{},
	}
	dir := t.TempDir()
	l := openLocal(t, dir, chunkstore.LocalOptions{Level: chunk.LevelBetter})
	ids := putChunks(t, l, chunks[:3])
	require.NoError(t, l.Flush(t.Context()))
	ids = append(ids, putChunks(t, l, chunks[3:])...) // pending, unflushed

	infos := map[chunk.ID]chunkstore.Info{}
	require.NoError(t, l.Iterate(t.Context(), func(id chunk.ID, info chunkstore.Info) error {
		infos[id] = info
		return nil
	}))
	for i, id := range ids {
		prefix := []byte("prefix")
		got, info, err := l.GetStored(t.Context(), id, prefix)
		require.NoError(t, err, "chunk %d", i)
		require.Equal(t, "prefix", string(got[:len(prefix)]), "appended to dst")
		stored := got[len(prefix):]
		require.Equal(t, len(chunks[i]), info.PlainLen)
		require.Equal(t, len(stored), info.StoredLen)
		if want, ok := infos[id]; ok {
			require.Equal(t, want, info, "chunk %d: as the index says", i)
		}
		// The stored bytes are the record's, as on disk.
		path, off := findRecord(t, dir, id)
		disk, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, disk[off+recordHeaderSize:off+recordHeaderSize+int64(len(stored))], stored, "chunk %d", i)
		plain, err := chunk.Decompress(nil, stored, info.Codec, info.PlainLen)
		require.NoError(t, err)
		require.True(t, bytes.Equal(chunks[i], plain), "chunk %d", i)
	}
	require.Equal(t, chunk.CodecNone, infos[ids[0]].Codec)
	require.Equal(t, chunk.CodecZstd, infos[ids[1]].Codec)

	_, _, err := l.GetStored(t.Context(), chunk.Sum([]byte("absent")), nil)
	require.ErrorIs(t, err, chunk.ErrNotFound)
	require.NoError(t, l.Close())
	_, _, err = l.GetStored(t.Context(), ids[0], nil)
	require.ErrorIs(t, err, chunkstore.ErrClosed)
}

// A pack that lost synced bytes (the file system lied, or someone cut it)
// must not stop the store from opening: the chunks it lost read as corrupt
// and everything else keeps working.
func TestLocalPackShorterThanDurable(t *testing.T) {
	dir := t.TempDir()
	chunks := storetest.Chunks(12, 10)
	l, err := chunkstore.OpenLocal(dir, chunkstore.LocalOptions{})
	require.NoError(t, err)
	ids := putChunks(t, l, chunks)
	require.NoError(t, l.Close())

	var lastID chunk.ID
	var lastOff int64 = -1
	for _, id := range ids {
		if _, off := findRecord(t, dir, id); off > lastOff {
			lastID, lastOff = id, off
		}
	}
	packs := packFiles(t, dir)
	require.Len(t, packs, 1)
	fi, err := os.Stat(packs[0])
	require.NoError(t, err)
	require.NoError(t, os.Truncate(packs[0], fi.Size()-3))

	l = openLocal(t, dir, chunkstore.LocalOptions{})
	var bad []chunk.ID
	_, err = l.Verify(t.Context(), func(id chunk.ID, _ error) { bad = append(bad, id) })
	require.NoError(t, err)
	require.Equal(t, []chunk.ID{lastID}, bad)
	more := [][]byte{[]byte("written after the loss")}
	putChunks(t, l, more)
	require.NoError(t, l.Flush(t.Context()))
	requireChunks(t, l, more)
	require.Len(t, packFiles(t, dir), 2, "a damaged pack is not appended to")
}

// Crash tests run the writer in a child process (this test binary, running
// TestLocalCrashHelper) that exits or is killed without closing the store.

const (
	crashEnvDir  = "PGPORTER_CHUNKSTORE_CRASH_DIR"
	crashEnvMode = "PGPORTER_CHUNKSTORE_CRASH_MODE"
)

// crashReport is what the "torn" child leaves for its parent.
type crashReport struct {
	Durable int64 // pack size after the last Flush
}

// tornSets are the chunks the "torn" child writes: flushed, then not.
func tornSets() (flushed, unflushed [][]byte) {
	r := rand.New(rand.NewPCG(20, 21))
	flushed = storetest.Chunks(20, 33)
	for range 8 {
		unflushed = append(unflushed, storetest.RandomBytes(r, 40<<10+r.IntN(40<<10)))
	}
	return flushed, unflushed
}

func killChunk(i int) []byte {
	r := rand.New(rand.NewPCG(uint64(i), 30))
	if i%2 == 0 {
		return storetest.Text(r, 1+r.IntN(100<<10))
	}
	return storetest.RandomBytes(r, 1+r.IntN(100<<10))
}

func TestLocalCrashHelper(t *testing.T) {
	dir := os.Getenv(crashEnvDir)
	if dir == "" {
		t.Skip("runs only as the child of a crash test")
	}
	l, err := chunkstore.OpenLocal(dir, chunkstore.LocalOptions{})
	require.NoError(t, err)
	switch os.Getenv(crashEnvMode) {
	case "torn":
		flushed, unflushed := tornSets()
		putChunks(t, l, flushed)
		require.NoError(t, l.Flush(t.Context()))
		packs := packFiles(t, dir)
		require.Len(t, packs, 1)
		fi, err := os.Stat(packs[0])
		require.NoError(t, err)
		b, err := json.Marshal(crashReport{Durable: fi.Size()})
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "crash.json"), b, 0o644))
		putChunks(t, l, unflushed)
		os.Exit(0) // no Close: the unflushed chunks are only in the pack's tail
	case "kill":
		// Write and flush until the parent kills us, reporting after each
		// Flush how many chunks are durable.
		for i := 0; ; i++ {
			c := killChunk(i)
			require.NoError(t, l.Put(t.Context(), chunk.Sum(c), c))
			if i%5 == 4 {
				require.NoError(t, l.Flush(t.Context()))
				fmt.Printf("flushed %d\n", i+1)
			}
		}
	}
	t.Fatalf("unknown mode %q", os.Getenv(crashEnvMode))
}

func crashChild(t *testing.T, dir, mode string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestLocalCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnvDir+"="+dir, crashEnvMode+"="+mode)
	cmd.Stderr = os.Stderr
	return cmd
}

// copyDir copies the regular files of a store left by a dead process.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	require.NoError(t, filepath.WalkDir(from, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	}))
}

func TestLocalTornTail(t *testing.T) {
	flushed, unflushed := tornSets()
	// One crashed writer; each case damages its own copy.
	crashed := t.TempDir()
	require.NoError(t, crashChild(t, crashed, "torn").Run())
	var rep crashReport
	b, err := os.ReadFile(filepath.Join(crashed, "crash.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &rep))

	for _, tc := range []struct {
		name string
		// tear damages the pack past durable, the length after the last
		// Flush; size is the length at the crash.
		tear func(t *testing.T, f *os.File, durable, size int64)
	}{
		{"tail intact", func(*testing.T, *os.File, int64, int64) {}},
		{"cut mid header", func(t *testing.T, f *os.File, durable, _ int64) {
			require.NoError(t, f.Truncate(durable+20))
		}},
		{"cut mid record", func(t *testing.T, f *os.File, durable, size int64) {
			require.NoError(t, f.Truncate(durable+recordHeaderSize+1000))
		}},
		{"cut halfway", func(t *testing.T, f *os.File, durable, size int64) {
			require.NoError(t, f.Truncate((durable+size)/2))
		}},
		{"cut at durable", func(t *testing.T, f *os.File, durable, size int64) {
			require.NoError(t, f.Truncate(durable))
		}},
		{"garbage appended", func(t *testing.T, f *os.File, durable, size int64) {
			_, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, 777), size)
			require.NoError(t, err)
		}},
		{"tail zeroed", func(t *testing.T, f *os.File, durable, size int64) {
			// Size metadata made it to disk, data blocks did not.
			_, err := f.WriteAt(make([]byte, size-durable), durable)
			require.NoError(t, err)
		}},
		{"garbage at durable", func(t *testing.T, f *os.File, durable, size int64) {
			_, err := f.WriteAt(append([]byte(recordMagic), bytes.Repeat([]byte{0xff}, 100)...), durable)
			require.NoError(t, err)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, crashed, dir)
			packs := packFiles(t, dir)
			require.Len(t, packs, 1)
			f, err := os.OpenFile(packs[0], os.O_RDWR, 0)
			require.NoError(t, err)
			fi, err := f.Stat()
			require.NoError(t, err)
			require.Greater(t, fi.Size(), rep.Durable+int64(recordHeaderSize+40<<10), "the child left an unflushed tail")
			tc.tear(t, f, rep.Durable, fi.Size())
			fi, err = f.Stat()
			require.NoError(t, err)
			torn := fi.Size()
			require.NoError(t, f.Close())

			var logs testsupport.Buffer
			opts := chunkstore.LocalOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))}
			l, err := chunkstore.OpenLocal(dir, opts)
			require.NoError(t, err)
			require.Empty(t, logs.String(), "what lies past the last run is nobody's business")
			fi, err = os.Stat(packs[0])
			require.NoError(t, err)
			require.Equal(t, torn, fi.Size(), "a crashed writer's pack is left as it is: nothing points past its last run")

			requireChunks(t, l, flushed)
			for _, c := range unflushed {
				_, err := l.Get(t.Context(), chunk.Sum(c), nil)
				require.ErrorIs(t, err, chunk.ErrNotFound, "a chunk never flushed is gone, not corrupt")
			}
			requireVerifyClean(t, l, len(flushed))

			putChunks(t, l, unflushed)
			require.NoError(t, l.Close())
			l = openLocal(t, dir, chunkstore.LocalOptions{})
			requireChunks(t, l, append(slices.Clone(flushed), unflushed...))
			requireVerifyClean(t, l, len(flushed)+len(unflushed))
		})
	}
}

// TestLocalCrashKill kills a writer at an arbitrary point of its
// put/flush loop: every chunk it reported flushed must read back. A reader
// with the store open in this process meanwhile sees each chunk as soon as
// the writer reports it flushed.
func TestLocalCrashKill(t *testing.T) {
	for round := range 3 {
		t.Run(strconv.Itoa(round), func(t *testing.T) {
			dir := t.TempDir()
			reader := openLocal(t, dir, chunkstore.LocalOptions{})
			cmd := crashChild(t, dir, "kill")
			out, err := cmd.StdoutPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			var durable int
			sc := bufio.NewScanner(out)
			for sc.Scan() && durable < 40+20*round {
				if n, ok := strings.CutPrefix(sc.Text(), "flushed "); ok {
					seen := durable
					durable, err = strconv.Atoi(n)
					require.NoError(t, err)
					for i := seen; i < durable; i++ {
						requireChunks(t, reader, [][]byte{killChunk(i)})
					}
				}
			}
			require.NoError(t, cmd.Process.Kill())
			_, _ = io.Copy(io.Discard, out)
			_ = cmd.Wait() // killed: the error says so

			l := openLocal(t, dir, chunkstore.LocalOptions{})
			var chunks [][]byte
			for i := range durable {
				chunks = append(chunks, killChunk(i))
			}
			requireChunks(t, l, chunks)
			st, err := l.Verify(t.Context(), func(id chunk.ID, err error) { t.Errorf("chunk %s: %v", id, err) })
			require.NoError(t, err)
			require.GreaterOrEqual(t, st.Chunks, durable)
			more := []byte("after the kill")
			putChunks(t, l, [][]byte{more})
			require.NoError(t, l.Flush(t.Context()))
		})
	}
}

func TestLocalClosed(t *testing.T) {
	l, err := chunkstore.OpenLocal(t.TempDir(), chunkstore.LocalOptions{})
	require.NoError(t, err)
	data := []byte("x")
	id := chunk.Sum(data)
	require.NoError(t, l.Put(t.Context(), id, data))
	require.NoError(t, l.Close())
	require.ErrorIs(t, l.Put(t.Context(), id, data), chunkstore.ErrClosed)
	_, err = l.Get(t.Context(), id, nil)
	require.ErrorIs(t, err, chunkstore.ErrClosed)
	_, err = l.Has(t.Context(), id)
	require.ErrorIs(t, err, chunkstore.ErrClosed)
	require.ErrorIs(t, l.Flush(t.Context()), chunkstore.ErrClosed)
	require.NoError(t, l.Close())
}

func TestLocalPutRejects(t *testing.T) {
	l := openLocal(t, t.TempDir(), chunkstore.LocalOptions{})
	a := []byte("a")
	require.ErrorIs(t, l.Put(t.Context(), chunk.Sum([]byte("b")), a), chunkstore.ErrIDMismatch)
	huge := make([]byte, chunk.MaxChunkCeil+1)
	require.ErrorIs(t, l.Put(t.Context(), chunk.Sum(huge), huge), chunk.ErrTooLarge)
}

// Two stores open on one directory (as two processes would have them)
// write at once, with flushes and compactions racing, and each sees the
// other's chunks.
func TestLocalTwoWriters(t *testing.T) {
	dir := t.TempDir()
	opts := chunkstore.LocalOptions{FlushBytes: 1} // a run per Put: compactions all the time
	a := openLocal(t, dir, opts)
	b := openLocal(t, dir, opts)
	one, two := storetest.Chunks(15, 120), storetest.Chunks(16, 120)
	var g errgroup.Group
	g.Go(func() error { putChunks(t, a, one); return nil })
	g.Go(func() error { putChunks(t, b, two); return nil })
	require.NoError(t, g.Wait())
	requireChunks(t, a, two)
	requireChunks(t, b, one)
	all := append(slices.Clone(one), two...)
	c := openLocal(t, dir, chunkstore.LocalOptions{})
	requireChunks(t, c, all)
	requireVerifyClean(t, c, len(all))
	require.LessOrEqual(t, len(runFiles(t, dir)), 2*(compactFanIn-1)+2, "compaction keeps the runs few")
}

// compactFanIn is runs.go's: runs of one level merge once there are this
// many.
const compactFanIn = 4

func runFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "idx", "*.idx"))
	require.NoError(t, err)
	return names
}

// A root process writing into a repository another user owns gives
// everything it creates to that user: the archiver (postgres) and an
// export (root) share one repository.
func TestLocalKeepsOwner(t *testing.T) {
	testsupport.RequireRoot(t, "chown")
	const uid, gid = 12345, 23456
	dir := t.TempDir()
	require.NoError(t, os.Chown(dir, uid, gid))
	l, err := chunkstore.OpenLocal(dir, chunkstore.LocalOptions{FlushBytes: 1})
	require.NoError(t, err)
	putChunks(t, l, storetest.Chunks(17, 20))
	require.NoError(t, l.Close())
	require.Greater(t, requireOwnedBy(t, dir, uid, gid), 5)
}

// requireOwnedBy checks that everything under dir is uid:gid's, and
// returns how many entries it checked.
func requireOwnedBy(t *testing.T, dir string, uid, gid uint32) int {
	t.Helper()
	var n int
	require.NoError(t, filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		require.NoError(t, err)
		fi, err := d.Info()
		require.NoError(t, err)
		st := fi.Sys().(*syscall.Stat_t)
		require.Equal(t, [2]uint32{uid, gid}, [2]uint32{st.Uid, st.Gid}, "owner of %s", p)
		n++
		return nil
	}))
	return n
}

// TestLocalTakesBackKilledMkdir guards against a root process killed
// between making a directory of a repository another user owns and giving
// it to that user: later processes took the directory as made, and it
// stayed root's, closed to the owner (the archiver, as postgres) for good.
// A root-owned directory there is given to the owner when found.
func TestLocalTakesBackKilledMkdir(t *testing.T) {
	testsupport.RequireRoot(t, "chown")
	const uid, gid = 12345, 23456
	dir := t.TempDir()
	require.NoError(t, os.Chown(dir, uid, gid))
	for _, sub := range []string{"packs", "idx"} {
		require.NoError(t, os.Mkdir(filepath.Join(dir, sub), 0o755)) // root's, as the kill left it
	}
	l, err := chunkstore.OpenLocal(dir, chunkstore.LocalOptions{FlushBytes: 1})
	require.NoError(t, err)
	putChunks(t, l, storetest.Chunks(18, 20))
	require.NoError(t, l.Close())
	requireOwnedBy(t, dir, uid, gid)
}

// Pack files no run knows (a lost index, a stray copy) are never deleted
// nor overwritten.
func TestLocalForeignPackLeftAlone(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "packs"), 0o755))
	foreign := filepath.Join(dir, "packs", "00000000.pack")
	require.NoError(t, os.WriteFile(foreign, []byte("not ours"), 0o644))
	l := openLocal(t, dir, chunkstore.LocalOptions{})
	data := []byte("ours")
	putChunks(t, l, [][]byte{data})
	require.NoError(t, l.Flush(t.Context()))
	b, err := os.ReadFile(foreign)
	require.NoError(t, err)
	require.Equal(t, "not ours", string(b))
	requireChunks(t, l, [][]byte{data})
}

func TestLocalNoGoroutineLeak(t *testing.T) {
	// Warm the package's shared codecs, which live for the process.
	stored, c := chunk.Compress(nil, bytes.Repeat([]byte("warm"), 100), chunk.LevelFastest)
	_, err := chunk.Decompress(nil, stored, c, 400)
	require.NoError(t, err)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	dir := t.TempDir()
	for range 2 {
		l, err := chunkstore.OpenLocal(dir, chunkstore.LocalOptions{})
		require.NoError(t, err)
		putChunks(t, l, storetest.Chunks(13, 10))
		requireVerifyClean(t, l, 10)
		require.NoError(t, l.Close())
	}
}

func TestLocalVerifyIncludesUnflushed(t *testing.T) {
	l := openLocal(t, t.TempDir(), chunkstore.LocalOptions{})
	chunks := storetest.Chunks(14, 6)
	putChunks(t, l, chunks[:3])
	require.NoError(t, l.Flush(t.Context()))
	putChunks(t, l, chunks[3:])
	requireVerifyClean(t, l, len(chunks))
}
