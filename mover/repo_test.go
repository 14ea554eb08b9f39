package mover

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/storetest"
	"github.com/pgporter/pgporter/internal/s3test"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/protocol"
	"github.com/pgporter/pgporter/staging"
)

var _ staging.LatencyReader = (*RemoteRepo)(nil)

// repoFixture is a repository holding one backup of a small data directory,
// served by a mover on loopback.
type repoFixture struct {
	*testReceiver
	repoDir string
	files   map[string][]byte // the backed-up content, by relative path
	rp      *chunkstore.RestorePoint
	tree    []chunkstore.Node // as the local repository reads it
}

// fakePGData writes a directory that Repo.Backup accepts: random (stored
// plain) and compressible (stored zstd) files, an empty file, nesting.
func fakePGData(t testing.TB, dir string, scale int) map[string][]byte {
	t.Helper()
	files := map[string][]byte{
		"PG_VERSION":                   []byte("15\n"),
		"global/pg_control":            randomBytes(8192, 1),
		"base/1/PG_VERSION":            []byte("15\n"),
		"base/1/16384":                 randomBytes(scale*(2<<20)+17, 2),
		"base/1/16385":                 pgbenchLike(scale*(3<<20), 3),
		"base/5/16400_fsm":             {},
		"pg_wal/000000010000000000001": pgbenchLike(1<<20, 4),
	}
	testsupport.WriteFiles(t, dir, files, 0o600)
	return files
}

// startRepoServer backs up a fake data directory and serves the repository.
// corrupt, if set, may damage the repository before the server opens it.
func startRepoServer(t testing.TB, scale int, corrupt func(f *repoFixture)) *repoFixture {
	t.Helper()
	f := backupFake(t, scale)
	if corrupt != nil {
		corrupt(f)
	}
	f.testReceiver = startReceiver(t, ServerOptions{Repo: f.repoDir})
	return f
}

// backupFake backs up a fake data directory into a new repository.
func backupFake(t testing.TB, scale int) *repoFixture {
	t.Helper()
	return backupFakeTo(t, scale, filepath.Join(t.TempDir(), "repo"))
}

// backupFakeTo is backupFake into the repository repo (a directory or a
// URL).
func backupFakeTo(t testing.TB, scale int, dir string) *repoFixture {
	t.Helper()
	src := t.TempDir()
	f := &repoFixture{repoDir: dir, files: fakePGData(t, src, scale)}
	ctx := context.Background()
	repo, err := chunkstore.OpenRepo(context.Background(), f.repoDir, nil)
	require.NoError(t, err)
	f.rp, err = repo.Backup(ctx, src, chunkstore.BackupOptions{SourceHost: "db1"})
	require.NoError(t, err)
	f.tree, err = repo.Tree(ctx, f.rp)
	require.NoError(t, err)
	require.NoError(t, repo.Close())
	return f
}

// dialTestRepo dials f's server as a new mover trusted with perms (none: not
// trusted at all).
func dialTestRepo(t testing.TB, f *repoFixture, perms Perm, addr string, o RemoteRepoOptions) (*RemoteRepo, error) {
	t.Helper()
	m := newTLSTestMover(t)
	if perms != 0 {
		require.NoError(t, f.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "staging", Perms: perms, Added: time.Now()}))
	}
	if addr == "" {
		addr = f.addr
	}
	rr, err := DialRepo(context.Background(), m.home, addr, f.srv.ID(), o)
	if err == nil {
		t.Cleanup(func() { rr.Close() })
	}
	return rr, err
}

// mountRemote mounts rp's tree from rr and returns the mountpoint.
func mountRemote(t testing.TB, tree []chunkstore.Node, chunks staging.ChunkReader) string {
	t.Helper()
	testsupport.RequireFUSE(t)
	me, err := user.Current()
	require.NoError(t, err)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	m, err := staging.Mount(context.Background(), mnt, tree, chunks, staging.MountOptions{Owner: me.Username, CowDir: filepath.Join(dir, "cow")})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, m.Unmount()) })
	return mnt
}

func TestRepoMountReadsEverything(t *testing.T) {
	f := startRepoServer(t, 1, nil)
	rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{})
	require.NoError(t, err)
	ctx := context.Background()

	rps, err := rr.List(ctx)
	require.NoError(t, err)
	require.Len(t, rps, 1)
	rp, err := rr.Resolve(ctx, "latest")
	require.NoError(t, err)
	require.Equal(t, f.rp.ID, rp.ID)
	require.True(t, f.rp.Time.Equal(rp.Time))
	require.Equal(t, f.rp.Tree, rp.Tree)
	require.Equal(t, f.rp.Databases, rp.Databases)
	require.Equal(t, "db1", rp.SourceHost)
	same, err := rr.Resolve(ctx, f.rp.ID)
	require.NoError(t, err)
	require.Equal(t, rp, same)
	_, err = rr.Resolve(ctx, "rp-nope")
	require.ErrorIs(t, err, chunkstore.ErrNoRestorePoint)

	tree, err := rr.Tree(ctx, rp)
	require.NoError(t, err)
	require.Equal(t, f.tree, tree)

	mnt := mountRemote(t, tree, rr)
	for name, want := range f.files {
		got, err := os.ReadFile(filepath.Join(mnt, filepath.FromSlash(name)))
		require.NoError(t, err, name)
		require.True(t, bytes.Equal(want, got), "%s differs", name)
	}
}

func TestRepoRefusedWithoutRead(t *testing.T) {
	f := startRepoServer(t, 1, nil)
	ctx := context.Background()

	t.Run("send only", func(t *testing.T) {
		rr, err := dialTestRepo(t, f, PermSend, "", RemoteRepoOptions{})
		require.NoError(t, err, "trusted peers connect; requests are checked")
		_, err = rr.Resolve(ctx, "latest")
		require.ErrorIs(t, err, protocol.ErrPermission)
		require.Contains(t, err.Error(), "lacks permission read")
		_, err = rr.List(ctx)
		require.ErrorIs(t, err, protocol.ErrPermission)
		// Knowing a chunk ID does not help either.
		_, err = rr.Get(ctx, f.tree[len(f.tree)-1].Chunks[0].ID, nil)
		require.ErrorIs(t, err, protocol.ErrPermission)
		require.Contains(t, err.Error(), "lacks permission read")
	})
	t.Run("untrusted", func(t *testing.T) {
		_, err := dialTestRepo(t, f, 0, "", RemoteRepoOptions{})
		require.ErrorIs(t, err, ErrUntrusted)
		require.Contains(t, err.Error(), "--allow read")
	})
	t.Run("no repository", func(t *testing.T) {
		r := startReceiver(t, ServerOptions{})
		m := newTLSTestMover(t)
		require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Perms: PermRead, Added: time.Now()}))
		rr, err := DialRepo(ctx, m.home, r.addr, r.srv.ID(), RemoteRepoOptions{})
		require.NoError(t, err)
		defer rr.Close()
		_, err = rr.Resolve(ctx, "latest")
		require.ErrorIs(t, err, chunkstore.ErrNoRestorePoint)
		require.Contains(t, err.Error(), "serves no repository")
		_, err = rr.Get(ctx, chunk.Sum([]byte("x")), nil)
		require.ErrorIs(t, err, protocol.ErrNotFound)
	})
}

func nodeOf(t testing.TB, tree []chunkstore.Node, path string) chunkstore.Node {
	t.Helper()
	for _, n := range tree {
		if n.Path == path {
			return n
		}
	}
	t.Fatalf("no %s in tree", path)
	return chunkstore.Node{}
}

// corruptRecord flips a byte of chunk id's record in the repository's pack
// files, at offset where(storedLen) from the record's start (its header is
// recordHeaderSize bytes, see chunkstore/pack.go).
func corruptRecord(t testing.TB, repoDir string, id chunk.ID, where func(storedLen int) int) {
	t.Helper()
	needle := append([]byte("PGK1"), id[:]...)
	found := false
	err := filepath.WalkDir(filepath.Join(repoDir, "chunks", "packs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || found {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		i := bytes.Index(b, needle)
		if i < 0 {
			return nil
		}
		stored := int(binary.LittleEndian.Uint32(b[i+41 : i+45]))
		b[i+where(stored)] ^= 0x40
		found = true
		return os.WriteFile(p, b, 0o600)
	})
	require.NoError(t, err)
	require.True(t, found, "no record of chunk %s", id)
}

// recordHeaderSize is the size of a pack record's header (chunkstore/pack.go).
const recordHeaderSize = 49

// A chunk whose copy in the repository is damaged fails the read that needs
// it with EIO, and Get with a *chunk.CorruptChunkError naming it, and
// nothing else. The server sends chunks as stored without verifying them
// (PROTOCOL 7.2), so damage to a record's stored bytes is found by the
// client, which logs it; damage to a record's header is found by the server
// (GetStored checks it against the index), which logs it and answers
// corrupt. Guards against a chunk sent as stored reaching a reader
// unverified.
func TestRepoCorruptChunkGivesEIO(t *testing.T) {
	for _, tc := range []struct {
		name   string
		victim string // a file of fakePGData; its chunk 1 is damaged
		where  func(storedLen int) int
		server bool // the server finds it (else the client does)
	}{
		{"stored plain, payload", "base/1/16384", func(n int) int { return recordHeaderSize + n/2 }, false},
		{"stored zstd, payload", "base/1/16385", func(n int) int { return recordHeaderSize + n/2 }, false},
		{"stored zstd, last byte", "base/1/16385", func(n int) int { return recordHeaderSize + n - 1 }, false},
		{"record header", "base/1/16385", func(int) int { return 38 }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var bad chunk.ID
			f := startRepoServer(t, 1, func(f *repoFixture) {
				bad = nodeOf(t, f.tree, tc.victim).Chunks[1].ID
				corruptRecord(t, f.repoDir, bad, tc.where)
			})
			clientLog := &testsupport.Buffer{}
			rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{Log: slog.New(slog.NewTextHandler(clientLog, nil))})
			require.NoError(t, err)
			tree, err := rr.Tree(context.Background(), f.rp)
			require.NoError(t, err)
			mnt := mountRemote(t, tree, rr)

			_, err = os.ReadFile(filepath.Join(mnt, tc.victim))
			require.ErrorIs(t, err, syscall.EIO)
			_, err = rr.Get(context.Background(), bad, nil)
			var ce *chunk.CorruptChunkError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, bad, ce.ID)
			if tc.server {
				require.ErrorIs(t, err, protocol.ErrCorrupt, "the server answers corrupt")
				require.Contains(t, f.log.String(), bad.String(), "the server logs the chunk")
			} else {
				require.Contains(t, clientLog.String(), bad.String(), "the client logs the chunk")
			}
			for name, want := range f.files {
				if name == tc.victim {
					continue
				}
				got, err := os.ReadFile(filepath.Join(mnt, filepath.FromSlash(name)))
				require.NoError(t, err, name)
				require.True(t, bytes.Equal(want, got), "%s differs", name)
			}
		})
	}

	t.Run("damaged in transit", func(t *testing.T) {
		f := startRepoServer(t, 1, nil)
		const other = "base/1/16385"
		target := nodeOf(t, f.tree, other).Chunks[0].ID
		tamper := func(id chunk.ID, p []byte) []byte {
			if id == target {
				p = bytes.Clone(p)
				p[len(p)-1] ^= 1
			}
			return p
		}
		tamperFetch.Store(&tamper)
		defer tamperFetch.Store(nil)
		rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{})
		require.NoError(t, err)
		mnt := mountRemote(t, f.tree, rr)
		_, err = os.ReadFile(filepath.Join(mnt, other))
		require.ErrorIs(t, err, syscall.EIO)
		_, err = rr.Get(context.Background(), target, nil)
		var ce *chunk.CorruptChunkError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, target, ce.ID)
	})
}

// Chunks leave the repository as it stores them: the payload on the wire is
// the record's stored bytes, with its codec, not a fresh encoding. The
// extra chunks are stored at LevelBest, which the server's fastest level
// would not reproduce, so re-encoding them would show. Guards step 5.1 of
// docs/design/0005.
func TestRepoChunksLeaveAsStored(t *testing.T) {
	type stored struct {
		codec   chunk.Codec
		payload []byte
	}
	want := map[chunk.ID]stored{}
	var extra []chunk.ID
	f := startRepoServer(t, 1, func(f *repoFixture) {
		l, err := chunkstore.OpenLocal(filepath.Join(f.repoDir, "chunks"), chunkstore.LocalOptions{Level: chunk.LevelBest})
		require.NoError(t, err)
		defer func() { require.NoError(t, l.Close()) }()
		ctx := context.Background()
		for i := range 4 {
			c := pgbenchLike(100<<10, uint64(100+i))
			id := chunk.Sum(c)
			require.NoError(t, l.Put(ctx, id, c))
			extra = append(extra, id)
		}
		require.NoError(t, l.Flush(ctx))
		ids := slices.Clone(extra)
		for _, n := range f.tree {
			for _, c := range n.Chunks {
				ids = append(ids, c.ID)
			}
		}
		for _, id := range ids {
			b, info, err := l.GetStored(ctx, id, nil)
			require.NoError(t, err)
			want[id] = stored{info.Codec, b}
		}
		reencoded := 0
		for _, id := range extra {
			plain, err := l.Get(ctx, id, nil)
			require.NoError(t, err)
			if again, _ := chunk.Compress(nil, plain, chunk.LevelFastest); !bytes.Equal(again, want[id].payload) {
				reencoded++
			}
		}
		require.Positive(t, reencoded, "re-encoding must differ from the stored bytes for this test to tell")
	})

	var mu sync.Mutex // guards sent
	sent := map[chunk.ID][]byte{}
	record := func(id chunk.ID, p []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		sent[id] = bytes.Clone(p)
		return p
	}
	tamperFetch.Store(&record)
	defer tamperFetch.Store(nil)

	rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{})
	require.NoError(t, err)
	codecs := map[chunk.Codec]int{}
	for id, w := range want {
		plain, err := rr.Get(context.Background(), id, nil)
		require.NoError(t, err)
		require.Equal(t, id, chunk.Sum(plain))
		mu.Lock()
		got := sent[id]
		mu.Unlock()
		require.Equal(t, w.payload, got, "chunk %s: the payload is the stored bytes", id.Short())
		codecs[w.codec]++
	}
	require.Positive(t, codecs[chunk.CodecNone], "chunks stored plain were sent")
	require.Positive(t, codecs[chunk.CodecZstd], "chunks stored zstd were sent")
}

// A peer whose version does not know a chunk's stored codec gets the chunk
// decoded and encoded again, in a codec it knows.
func TestChunkForFetchReencodes(t *testing.T) {
	dir := t.TempDir()
	l, err := chunkstore.OpenLocal(dir, chunkstore.LocalOptions{Level: chunk.LevelBest})
	require.NoError(t, err)
	defer l.Close()
	ctx := context.Background()
	plain := pgbenchLike(100<<10, 7)
	id := chunk.Sum(plain)
	require.NoError(t, l.Put(ctx, id, plain))
	stored, info, err := l.GetStored(ctx, id, nil)
	require.NoError(t, err)
	require.Equal(t, chunk.CodecZstd, info.Codec)

	var bufs fetchBufs
	m, err := chunkForFetch(ctx, l, protocol.Version, id, &bufs)
	require.NoError(t, err)
	require.Equal(t, chunk.CodecZstd, m.Codec)
	require.Equal(t, stored, m.Payload, "as stored")

	// Version 0 knows no codec: the fallback path, whatever it encodes to.
	require.False(t, protocol.KnowsCodec(0, chunk.CodecZstd))
	m, err = chunkForFetch(ctx, l, 0, id, &bufs)
	require.NoError(t, err)
	require.NotEqual(t, stored, m.Payload, "encoded again at the fastest level")
	got, err := chunk.Decompress(nil, m.Payload, m.Codec, int(m.PlainLen))
	require.NoError(t, err)
	require.True(t, bytes.Equal(plain, got))

	// A store that cannot hand out stored bytes: Get, then encode.
	m, err = chunkForFetch(ctx, getOnly{l}, protocol.Version, id, &bufs)
	require.NoError(t, err)
	got, err = chunk.Decompress(nil, m.Payload, m.Codec, int(m.PlainLen))
	require.NoError(t, err)
	require.True(t, bytes.Equal(plain, got))
	_, err = chunkForFetch(ctx, l, protocol.Version, chunk.Sum([]byte("absent")), &bufs)
	require.ErrorIs(t, err, chunk.ErrNotFound)
}

// TestChunkForFetchS2: a repository whose chunks are stored S2 hands them
// out as stored to a peer at protocol 6, and decoded and encoded again in
// zstd to a peer below, which cannot decode S2.
func TestChunkForFetchS2(t *testing.T) {
	l, err := chunkstore.OpenLocal(t.TempDir(), chunkstore.LocalOptions{Level: chunk.LevelS2})
	require.NoError(t, err)
	defer l.Close()
	ctx := context.Background()
	plain := pgbenchLike(100<<10, 8)
	id := chunk.Sum(plain)
	require.NoError(t, l.Put(ctx, id, plain))
	stored, info, err := l.GetStored(ctx, id, nil)
	require.NoError(t, err)
	require.Equal(t, chunk.CodecS2, info.Codec)

	var bufs fetchBufs
	m, err := chunkForFetch(ctx, l, protocol.S2Version, id, &bufs)
	require.NoError(t, err)
	require.Equal(t, chunk.CodecS2, m.Codec)
	require.Equal(t, stored, m.Payload, "as stored")

	for _, v := range []uint16{protocol.MinVersion, protocol.S2Version - 1} {
		m, err = chunkForFetch(ctx, l, v, id, &bufs)
		require.NoError(t, err)
		require.Equal(t, chunk.CodecZstd, m.Codec, "version %d", v)
		got, err := chunk.Decompress(nil, m.Payload, m.Codec, int(m.PlainLen))
		require.NoError(t, err)
		require.True(t, bytes.Equal(plain, got))
	}
}

// getOnly hides a store's GetStored.
type getOnly struct{ chunkstore.Store }

// A network cut in the middle of reading blocks the read until the network
// comes back; it does not fail it.
func TestRepoRidesOutShortCut(t *testing.T) {
	f := startRepoServer(t, 1, nil)
	proxy := testsupport.NewUDPProxy(t, f.addr)
	rr, err := dialTestRepo(t, f, PermRead, proxy.Addr(), RemoteRepoOptions{IdleTimeout: time.Second})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tree, err := rr.Tree(ctx, f.rp)
	require.NoError(t, err)
	mnt := mountRemote(t, tree, rr)

	got, err := os.ReadFile(filepath.Join(mnt, "PG_VERSION"))
	require.NoError(t, err)
	require.Equal(t, "15\n", string(got))

	proxy.Cut()
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		b, err := os.ReadFile(filepath.Join(mnt, "base/1/16385"))
		done <- result{b, err}
	}()
	// Restore only once the reader has visibly been cut off for a while:
	// longer than the idle timeout, so the connection is redialled.
	require.NoError(t, proxy.Wait(ctx, func(st testsupport.ProxyStats) bool { return st.DroppedToTarget >= 20 }))
	proxy.Restore()
	res := <-done
	require.NoError(t, res.err)
	require.True(t, bytes.Equal(f.files["base/1/16385"], res.data))
}

// Many concurrent Gets go out in batches and all come back right.
func TestRepoConcurrentGets(t *testing.T) {
	f := startRepoServer(t, 2, nil)
	rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{Streams: 2, Batch: 8})
	require.NoError(t, err)
	var refs []chunkstore.ChunkRef
	for _, n := range f.tree {
		refs = append(refs, n.Chunks...)
	}
	sort.Slice(refs, func(i, j int) bool { return bytes.Compare(refs[i].ID[:], refs[j].ID[:]) < 0 })
	errs := make(chan error, len(refs)*2)
	for i, c := range append(refs, refs...) { // every ID twice: duplicates in a batch
		go func() {
			var dst []byte // half into a buffer of the Get's own, after a prefix
			if i%2 == 0 {
				dst = append(make([]byte, 0, 3+int(c.Len)+chunk.DecodeSlack), "pre"...)
			}
			b, err := rr.Get(context.Background(), c.ID, dst)
			switch {
			case err != nil:
			case dst != nil && (string(b[:3]) != "pre" || &b[0] != &dst[0]):
				err = errors.New("not appended to dst in place")
			case len(b) != len(dst)+int(c.Len) || chunk.Sum(b[len(dst):]) != c.ID:
				err = errors.New("wrong content")
			}
			errs <- err
		}()
	}
	for range len(refs) * 2 {
		require.NoError(t, <-errs)
	}
	require.NoError(t, rr.Close())
	_, err = rr.Get(context.Background(), refs[0].ID, nil)
	require.ErrorIs(t, err, ErrRepoClosed)
}

// As many fetch streams as asked for, up to what the server's stream credit
// allows beside the control stream. Guards against a 64th fetch stream
// waiting for credit forever, with the Gets of its batch: Streams was
// capped at 64, the server's whole credit.
func TestRepoStreamsWithinCredit(t *testing.T) {
	f := startRepoServer(t, 1, nil)
	// Batch 1: each of the workers, woken in turn, takes one Get, so that
	// every stream is opened; one connection carries them all.
	rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{Streams: 1000, Batch: 1, Conns: 1})
	require.NoError(t, err)
	require.Equal(t, int(QUICConfig().MaxIncomingStreams)-1, rr.o.Streams)
	var refs []chunkstore.ChunkRef
	for _, n := range f.tree {
		refs = append(refs, n.Chunks...)
	}
	for len(refs) < 4*rr.o.Streams {
		refs = append(refs, refs...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs := make(chan error, len(refs))
	for _, c := range refs {
		go func() {
			_, err := rr.Get(ctx, c.ID, nil)
			errs <- err
		}()
	}
	for range refs {
		require.NoError(t, <-errs)
	}
}

// A Get that gives up (its context ends) returns at once, and nothing writes
// into its buffer afterwards, though a worker may be about to decode into
// it: each such buffer is filled with a marker when its Get returns and must
// still hold only the marker once the workers have stopped. Guards the
// hand-over of a Get's buffer to the worker that decodes into it.
func TestRepoGetCancelReleasesBuffer(t *testing.T) {
	f := startRepoServer(t, 1, nil)
	rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{Streams: 2, Batch: 4})
	require.NoError(t, err)
	var refs []chunkstore.ChunkRef
	for _, n := range f.tree {
		refs = append(refs, n.Chunks...)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex // guards given
		given    [][]byte   // the buffers of the Gets that gave up
		answered int
	)
	for round := range 12 {
		for i, c := range refs {
			wg.Go(func() {
				ctx, cancel := context.WithCancel(context.Background())
				if (i+round)%2 == 0 {
					cancel() // before or while the chunk arrives
				} else {
					defer cancel()
				}
				buf := make([]byte, 0, int(c.Len)+chunk.DecodeSlack)
				b, err := rr.Get(ctx, c.ID, buf)
				switch {
				case err == nil && chunk.Sum(b) != c.ID:
					t.Errorf("chunk %s: wrong content", c.ID.Short())
				case err != nil && !errors.Is(err, context.Canceled):
					t.Errorf("chunk %s: %v", c.ID.Short(), err)
				}
				full := buf[:cap(buf)]
				for j := range full {
					full[j] = 0xaa
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					given = append(given, full)
				} else {
					answered++
				}
			})
		}
	}
	wg.Wait()
	// The connection still serves every chunk.
	for _, c := range refs {
		b, err := rr.Get(context.Background(), c.ID, nil)
		require.NoError(t, err)
		require.Equal(t, c.ID, chunk.Sum(b))
	}
	require.NoError(t, rr.Close()) // waits for the workers
	t.Logf("%d Gets gave up, %d were answered", len(given), answered)
	require.NotEmpty(t, given)
	for _, b := range given {
		require.Equal(t, len(b), bytes.Count(b, []byte{0xaa}), "a worker wrote into the buffer of a Get that had returned")
	}
}

// TestRepoS2ChunksToVersion5: a repository whose chunks are stored S2 serves
// them as stored to a client at protocol 6 and re-encoded to one that
// negotiated 5, which reads them all the same.
func TestRepoS2ChunksToVersion5(t *testing.T) {
	stored := map[chunk.ID][]byte{}
	f := startRepoServer(t, 1, func(f *repoFixture) {
		l, err := chunkstore.OpenLocal(filepath.Join(f.repoDir, "chunks"), chunkstore.LocalOptions{Level: chunk.LevelS2})
		require.NoError(t, err)
		defer func() { require.NoError(t, l.Close()) }()
		ctx := context.Background()
		for i := range 3 {
			c := pgbenchLike(100<<10, uint64(200+i))
			id := chunk.Sum(c)
			require.NoError(t, l.Put(ctx, id, c))
			b, info, err := l.GetStored(ctx, id, nil)
			require.NoError(t, err)
			require.Equal(t, chunk.CodecS2, info.Codec)
			stored[id] = b
		}
		require.NoError(t, l.Flush(ctx))
	})

	var mu sync.Mutex // guards sent
	sent := map[chunk.ID][]byte{}
	record := func(id chunk.ID, p []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		sent[id] = bytes.Clone(p)
		return p
	}
	tamperFetch.Store(&record)
	defer tamperFetch.Store(nil)

	for _, v := range []uint16{protocol.Version, 5} {
		t.Run(fmt.Sprint(v), func(t *testing.T) {
			if v != protocol.Version {
				asVersion(t, v)
			}
			rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{})
			require.NoError(t, err)
			for id, b := range stored {
				plain, err := rr.Get(context.Background(), id, nil)
				require.NoError(t, err)
				require.Equal(t, id, chunk.Sum(plain))
				mu.Lock()
				got := sent[id]
				mu.Unlock()
				if v >= protocol.S2Version {
					require.Equal(t, b, got, "as stored")
				} else {
					require.NotEqual(t, b, got, "re-encoded for protocol %d", v)
				}
			}
		})
	}
}

// TestRemoteRepoConformance: a repository mover, read through RemoteRepo
// over loopback, passes the reader part of the store conformance suite, as
// the local repository does (orchestrator's TestLocalSourceConformance).
func TestRemoteRepoConformance(t *testing.T) {
	f := startRepoServer(t, 1, nil)
	rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{})
	require.NoError(t, err)
	storetest.RunReader(t, rr, storetest.Want{Points: []chunkstore.RestorePoint{*f.rp},
		Trees: map[string][]chunkstore.Node{f.rp.ID: f.tree}, Files: f.files})
}

// A repository mover serving a repository on object storage (mover serve
// --repo s3://…) answers as one serving a directory: the reader suite over
// loopback QUIC, the repository on a real S3 server.
func TestRemoteRepoConformanceS3(t *testing.T) {
	srv := s3test.Shared(t)
	srv.SetEnv(t)
	f := backupFakeTo(t, 1, "s3://"+srv.NewBucket(t)+"/repo")
	t.Setenv("PGPORTER_CACHE_DIR", t.TempDir()) // the mover's host
	f.testReceiver = startReceiver(t, ServerOptions{Repo: f.repoDir})
	rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{})
	require.NoError(t, err)
	storetest.RunReader(t, rr, storetest.Want{Points: []chunkstore.RestorePoint{*f.rp},
		Trees: map[string][]chunkstore.Node{f.rp.ID: f.tree}, Files: f.files})
}

// A repository mover holds the repository's shared lock only while a peer
// uses it: an exclusive open (a prune) is refused while a staging host is
// connected and reading, and succeeds once it has gone.
func TestRepoLockHeldWhileUsed(t *testing.T) {
	f := backupFake(t, 1)
	f.testReceiver = startReceiver(t, ServerOptions{Repo: f.repoDir, RepoLinger: -1})
	prune := func() error {
		r, err := chunkstore.OpenRepoWith(context.Background(), f.repoDir, chunkstore.RepoOptions{Lock: chunkstore.LockExclusive})
		if err == nil {
			require.NoError(t, r.Close())
		}
		return err
	}
	waitFree := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for err := prune(); err != nil; err = prune() {
			require.ErrorIs(t, err, chunkstore.ErrRepoLocked)
			require.True(t, time.Now().Before(deadline), "the mover still holds the repository: %v", err)
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFree() // the check at the start let it go

	rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{})
	require.NoError(t, err)
	rps, err := rr.List(t.Context())
	require.NoError(t, err)
	require.Len(t, rps, 1)
	require.ErrorIs(t, prune(), chunkstore.ErrRepoLocked, "held while the peer is connected")
	// Reads go on under the same hold.
	refs := allRefs(f)
	require.NotEmpty(t, refs)
	buf, err := rr.Get(t.Context(), refs[0].ID, nil)
	require.NoError(t, err)
	require.NotEmpty(t, buf)
	require.ErrorIs(t, prune(), chunkstore.ErrRepoLocked)

	require.NoError(t, rr.Close())
	waitFree()
	// A new peer opens it again.
	rr, err = dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{})
	require.NoError(t, err)
	_, err = rr.List(t.Context())
	require.NoError(t, err)
	require.ErrorIs(t, prune(), chunkstore.ErrRepoLocked)
}
