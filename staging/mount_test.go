package staging

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/synth"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// testFile is a file, directory or symlink of a test tree.
type testFile struct {
	path   string
	typ    chunkstore.NodeType
	mode   uint32
	data   []byte
	target string
}

// buildTree stores the files' content in a fresh local chunk store and
// returns the tree that serves it.
func buildTree(t *testing.T, files []testFile) ([]chunkstore.Node, *chunkstore.Local) {
	t.Helper()
	ctx := context.Background()
	store, err := chunkstore.OpenLocal(t.TempDir(), chunkstore.LocalOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	var tree []chunkstore.Node
	for _, f := range files {
		n := chunkstore.Node{Path: f.path, Type: f.typ, Mode: f.mode, MTime: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano(), Target: f.target}
		if f.typ == chunkstore.NodeFile {
			n.Size = int64(len(f.data))
			require.NoError(t, chunk.Split(f.data, chunk.DefaultParams, func(c chunk.Chunk) error {
				id := chunk.Sum(c.Data)
				n.Chunks = append(n.Chunks, chunkstore.ChunkRef{ID: id, Len: uint32(len(c.Data))})
				return store.Put(ctx, id, c.Data)
			}))
		}
		tree = append(tree, n)
	}
	require.NoError(t, store.Flush(ctx))
	return tree, store
}

func testOwner(t *testing.T) (string, uint32) {
	t.Helper()
	u, err := user.Lookup("postgres")
	if err != nil {
		u, err = user.Current()
		require.NoError(t, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	require.NoError(t, err)
	return u.Username, uint32(uid)
}

// mountTree mounts tree and unmounts it at cleanup, checking that nothing
// stays mounted.
func mountTree(t *testing.T, tree []chunkstore.Node, chunks ChunkReader, o MountOptions) (*Mounted, string) {
	t.Helper()
	testsupport.RequireFUSE(t)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	if o.CowDir == "" {
		o.CowDir = filepath.Join(dir, "cow")
	}
	if o.Owner == "" {
		o.Owner, _ = testOwner(t)
	}
	m, err := Mount(context.Background(), mnt, tree, chunks, o)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = m.Unmount()
		require.False(t, testsupport.IsMounted(t, mnt), "%s still mounted", mnt)
	})
	return m, mnt
}

func sampleFiles() []testFile {
	return []testFile{
		{path: "PG_VERSION", typ: chunkstore.NodeFile, mode: 0o600, data: []byte("15\n")},
		{path: "base", typ: chunkstore.NodeDir, mode: 0o700},
		{path: "base/1", typ: chunkstore.NodeDir, mode: 0o700},
		{path: "base/1/empty", typ: chunkstore.NodeFile, mode: 0o600},
		{path: "base/1/1259", typ: chunkstore.NodeFile, mode: 0o600, data: synth.Random(1, 8192)},
		{path: "base/1/16384", typ: chunkstore.NodeFile, mode: 0o640, data: synth.Random(2, 3<<20+17)},
		{path: "global/pg_control", typ: chunkstore.NodeFile, mode: 0o600, data: synth.Random(3, 8192)},
		{path: "pg_wal", typ: chunkstore.NodeDir, mode: 0o700},
		{path: "pg_wal/000000010000000000000001", typ: chunkstore.NodeFile, mode: 0o600, data: synth.Random(4, 1<<20)},
		{path: "link", typ: chunkstore.NodeSymlink, mode: 0o777, target: "base/1"},
	}
}

// checkTree compares the mounted tree with files, byte for byte.
func checkTree(t *testing.T, mnt string, files []testFile, uid uint32) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(mnt, f.path)
		fi, err := os.Lstat(p)
		require.NoError(t, err, f.path)
		st := fi.Sys().(*syscall.Stat_t)
		require.Equal(t, uid, st.Uid, f.path)
		switch f.typ {
		case chunkstore.NodeDir:
			require.True(t, fi.IsDir(), f.path)
			require.Equal(t, fs.FileMode(f.mode), fi.Mode().Perm(), f.path)
		case chunkstore.NodeSymlink:
			target, err := os.Readlink(p)
			require.NoError(t, err)
			require.Equal(t, f.target, target)
		case chunkstore.NodeFile:
			require.True(t, fi.Mode().IsRegular(), f.path)
			require.Equal(t, fs.FileMode(f.mode), fi.Mode().Perm(), f.path)
			require.Equal(t, int64(len(f.data)), fi.Size(), f.path)
			got, err := os.ReadFile(p)
			require.NoError(t, err, f.path)
			require.True(t, bytes.Equal(f.data, got), "%s differs", f.path)
		}
	}
}

func TestMountServesTree(t *testing.T) {
	files := sampleFiles()
	tree, store := buildTree(t, files)
	owner, uid := testOwner(t)
	_, mnt := mountTree(t, tree, store, MountOptions{Owner: owner})

	checkTree(t, mnt, files, uid)
	fi, err := os.Stat(mnt)
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o700), fi.Mode().Perm(), "PostgreSQL wants its data directory 0700")
	ents, err := os.ReadDir(filepath.Join(mnt, "base/1"))
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	require.Equal(t, []string{"1259", "16384", "empty"}, names)
	// global was not in the tree but is implied by global/pg_control.
	fi, err = os.Stat(filepath.Join(mnt, "global"))
	require.NoError(t, err)
	require.True(t, fi.IsDir())
}

// TestFileSizeFromTree: Mounted.FileSize answers from the mount's own tree
// what a stat through the mount would, writes included, and nothing for
// directories, symbolic links, missing or escaping paths.
func TestFileSizeFromTree(t *testing.T) {
	files := sampleFiles()
	tree, store := buildTree(t, files)
	owner, _ := testOwner(t)
	m, mnt := mountTree(t, tree, store, MountOptions{Owner: owner})
	for _, f := range files {
		n, ok := m.FileSize(f.path)
		require.Equal(t, f.typ == chunkstore.NodeFile, ok, f.path)
		if ok {
			require.Equal(t, int64(len(f.data)), n, f.path)
		}
	}
	require.NoError(t, os.WriteFile(filepath.Join(mnt, "base/1/added"), make([]byte, 5000), 0o600))
	f, err := os.OpenFile(filepath.Join(mnt, "base/1/1259"), os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("x"), 20000)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	for path, want := range map[string]int64{"base/1/added": 5000, "base/1/1259": 20001, "./base//1/16384": 3<<20 + 17} {
		n, ok := m.FileSize(path)
		require.True(t, ok, path)
		require.Equal(t, want, n, path)
	}
	for _, path := range []string{"base/1/nothing", "link/1259", "base/../PG_VERSION", "../PG_VERSION", "base", ""} {
		_, ok := m.FileSize(path)
		require.False(t, ok, path)
	}
}

func allocated(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			return err
		}
		total += st.Blocks * 512
		return nil
	}))
	return total
}

func chunkCount(t *testing.T, s chunkstore.Store) int {
	t.Helper()
	n := 0
	require.NoError(t, s.Iterate(context.Background(), func(chunk.ID, chunkstore.Info) error { n++; return nil }))
	return n
}

func TestWriteIntoLargeFileCopiesOneChunk(t *testing.T) {
	big := synth.Random(7, 64<<20)
	files := []testFile{{path: "big", typ: chunkstore.NodeFile, mode: 0o600, data: big}}
	tree, store := buildTree(t, files)
	before := chunkCount(t, store)
	cow := filepath.Join(t.TempDir(), "cow")
	_, mnt := mountTree(t, tree, store, MountOptions{CowDir: cow})

	f, err := os.OpenFile(filepath.Join(mnt, "big"), os.O_RDWR, 0)
	require.NoError(t, err)
	patch := bytes.Repeat([]byte("pgporter"), 1024)
	off := int64(32<<20 + 1234)
	_, err = f.WriteAt(patch, off)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())

	want := bytes.Clone(big)
	copy(want[off:], patch)
	got, err := os.ReadFile(filepath.Join(mnt, "big"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "read-back differs")

	used := allocated(t, cow)
	t.Logf("CoW layer after an 8 KiB write into 64 MiB: %d bytes allocated", used)
	require.Greater(t, used, int64(0))
	require.LessOrEqual(t, used, int64(2*chunk.DefaultParams.Max+64<<10), "the write copied more than the chunks it touched")

	stats, err := store.Verify(context.Background(), nil)
	require.NoError(t, err)
	require.Zero(t, stats.Corrupt)
	require.Equal(t, before, chunkCount(t, store), "the store must not be written")
}

func TestCopyOnWriteOperations(t *testing.T) {
	files := sampleFiles()
	tree, store := buildTree(t, files)
	owner, uid := testOwner(t)
	m, mnt := mountTree(t, tree, store, MountOptions{Owner: owner})
	p := func(s string) string { return filepath.Join(mnt, s) }

	// postmaster.pid: create, write, read, unlink.
	require.NoError(t, os.WriteFile(p("postmaster.pid"), []byte("1234\n"), 0o600))
	b, err := os.ReadFile(p("postmaster.pid"))
	require.NoError(t, err)
	require.Equal(t, "1234\n", string(b))
	require.NoError(t, os.Remove(p("postmaster.pid")))
	_, err = os.Stat(p("postmaster.pid"))
	require.ErrorIs(t, err, fs.ErrNotExist)

	// WAL: write a new segment, fsync it and its directory, rename it over
	// an existing one.
	seg := synth.Random(9, 1<<20)
	f, err := os.OpenFile(p("pg_wal/xlogtemp.1"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	require.NoError(t, err)
	_, err = f.Write(seg)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	d, err := os.Open(p("pg_wal"))
	require.NoError(t, err)
	require.NoError(t, d.Sync(), "PostgreSQL fsyncs directories")
	require.NoError(t, d.Close())
	require.NoError(t, os.Rename(p("pg_wal/xlogtemp.1"), p("pg_wal/000000010000000000000001")))
	b, err = os.ReadFile(p("pg_wal/000000010000000000000001"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(seg, b))
	_, err = os.Stat(p("pg_wal/xlogtemp.1"))
	require.ErrorIs(t, err, fs.ErrNotExist)

	// Relation extension: append to an original file.
	rel := p("base/1/16384")
	orig := files[5].data
	f, err = os.OpenFile(rel, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	ext := synth.Random(10, 8192)
	_, err = f.Write(ext)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	b, err = os.ReadFile(rel)
	require.NoError(t, err)
	require.True(t, bytes.Equal(append(bytes.Clone(orig), ext...), b))

	// Truncate shrinks, then grows with zeros, not the old content.
	require.NoError(t, os.Truncate(rel, 100000))
	require.NoError(t, os.Truncate(rel, 300000))
	b, err = os.ReadFile(rel)
	require.NoError(t, err)
	want := append(bytes.Clone(orig[:100000]), make([]byte, 200000)...)
	require.True(t, bytes.Equal(want, b), "regrown file must read zeros past the cut")

	// Directories: mkdir, rename with content, rmdir of non-empty and empty.
	require.NoError(t, os.Mkdir(p("base/5"), 0o700))
	require.NoError(t, os.WriteFile(p("base/5/1"), []byte("x"), 0o600))
	require.NoError(t, os.Rename(p("base/5"), p("base/6")))
	b, err = os.ReadFile(p("base/6/1"))
	require.NoError(t, err)
	require.Equal(t, "x", string(b))
	require.ErrorIs(t, os.Remove(p("base/6")), syscall.ENOTEMPTY)
	require.NoError(t, os.Remove(p("base/6/1")))
	require.NoError(t, os.Remove(p("base/6")))
	require.NoError(t, os.Rename(p("base/1"), p("base/2")))
	b, err = os.ReadFile(p("base/2/1259"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(files[4].data, b))

	// Modes, times, symlinks, ownership of new files.
	require.NoError(t, os.Chmod(p("PG_VERSION"), 0o644))
	mt := time.Date(2020, 5, 6, 7, 8, 9, 0, time.UTC)
	require.NoError(t, os.Chtimes(p("PG_VERSION"), mt, mt))
	fi, err := os.Stat(p("PG_VERSION"))
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o644), fi.Mode().Perm())
	require.True(t, mt.Equal(fi.ModTime()))
	require.Equal(t, uid, fi.Sys().(*syscall.Stat_t).Uid)
	require.NoError(t, os.Symlink("../PG_VERSION", p("pg_wal/l")))
	tgt, err := os.Readlink(p("pg_wal/l"))
	require.NoError(t, err)
	require.Equal(t, "../PG_VERSION", tgt)
	require.NoError(t, os.Remove(p("pg_wal/l")))

	// An unlinked file stays readable through an open handle.
	f, err = os.Open(p("global/pg_control"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(p("tmp"), []byte("new"), 0o600))
	require.NoError(t, os.Rename(p("tmp"), p("global/pg_control")))
	b = make([]byte, 8192)
	_, err = f.ReadAt(b, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(files[6].data, b))
	require.NoError(t, f.Close())

	// A fresh CoW layer on a new mount shows the restore point as it was.
	require.NoError(t, m.Unmount())
	require.False(t, testsupport.IsMounted(t, mnt))
	_, mnt2 := mountTree(t, tree, store, MountOptions{Owner: owner})
	checkTree(t, mnt2, files, uid)
	_, err = os.Stat(filepath.Join(mnt2, "base/2"))
	require.ErrorIs(t, err, fs.ErrNotExist)

	stats, err := store.Verify(context.Background(), nil)
	require.NoError(t, err)
	require.Zero(t, stats.Corrupt)
}

// failingReader fails Get for one chunk as a corrupt store would.
type failingReader struct {
	ChunkReader
	bad chunk.ID
}

func (r failingReader) Get(ctx context.Context, id chunk.ID, dst []byte) ([]byte, error) {
	if id == r.bad {
		return nil, &chunk.CorruptChunkError{ID: id, Err: chunk.ErrHashMismatch}
	}
	return r.ChunkReader.Get(ctx, id, dst)
}

type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestCorruptChunkGivesEIO(t *testing.T) {
	files := sampleFiles()
	tree, store := buildTree(t, files)
	var bad chunkstore.Node
	for _, n := range tree {
		if n.Path == "base/1/16384" {
			bad = n
		}
	}
	require.Greater(t, len(bad.Chunks), 3)
	badID := bad.Chunks[2].ID
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	m, mnt := mountTree(t, tree, failingReader{ChunkReader: store, bad: badID}, MountOptions{Log: log, Readahead: -1})
	require.NoError(t, m.ReadErr())

	_, err := os.ReadFile(filepath.Join(mnt, "base/1/16384"))
	require.Error(t, err)
	require.True(t, errors.Is(err, syscall.EIO), "got %v", err)
	require.Contains(t, logs.String(), badID.String())
	// The mount remembers it, for a caller whose reader shrugged it off.
	re, isRead := errors.AsType[*ReadError](m.ReadErr())
	require.True(t, isRead, "got %v", m.ReadErr())
	require.Equal(t, badID, re.Chunk)
	require.Equal(t, "base/1/16384", re.Path)
	require.Positive(t, re.Count)
	require.ErrorIs(t, re, chunk.ErrHashMismatch)

	// The chunks before the bad one still read.
	f, err := os.Open(filepath.Join(mnt, "base/1/16384"))
	require.NoError(t, err)
	b := make([]byte, bad.Chunks[0].Len)
	_, err = f.ReadAt(b, 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	ok := files[:0:0]
	for _, f := range files {
		if f.path != "base/1/16384" {
			ok = append(ok, f)
		}
	}
	_, uid := testOwner(t)
	checkTree(t, mnt, ok, uid)
}

// TestUnmountBusyThenClean checks that Unmount refuses while a file is open,
// works once it is closed, and leaves no goroutine of the mount behind.
func TestUnmountBusyThenClean(t *testing.T) {
	files := sampleFiles()
	tree, store := buildTree(t, files)
	opt := goleak.IgnoreCurrent()
	m, mnt := mountTree(t, tree, store, MountOptions{})
	f, err := os.Open(filepath.Join(mnt, "base/1/16384"))
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, f)
	require.NoError(t, err)
	require.Error(t, m.Unmount(), "busy mount must refuse to unmount")
	require.True(t, testsupport.IsMounted(t, mnt))
	require.NoError(t, f.Close())
	require.NoError(t, m.Unmount())
	require.False(t, testsupport.IsMounted(t, mnt))
	m.Wait()
	goleak.VerifyNone(t, opt)
}
