package mover

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/protocol"
	"github.com/pgporter/pgporter/staging"
)

var _ staging.ChunkReader = (*RemoteRepo)(nil)

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
	for p, b := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		require.NoError(t, os.MkdirAll(filepath.Dir(full), 0o700))
		require.NoError(t, os.WriteFile(full, b, 0o600))
	}
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
	src := t.TempDir()
	f := &repoFixture{repoDir: filepath.Join(t.TempDir(), "repo"), files: fakePGData(t, src, scale)}
	ctx := context.Background()
	repo, err := chunkstore.OpenRepo(f.repoDir, nil)
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
		_, err = rr.Get(ctx, chunkstore.Sum([]byte("x")), nil)
		require.ErrorIs(t, err, protocol.ErrNotFound)
	})
}

// corruptChunk flips a byte of chunk c inside the repository's pack files.
// c must be stored plain (random data is), so its bytes appear verbatim.
func corruptChunk(t testing.TB, repoDir string, plain []byte) {
	t.Helper()
	needle := plain[len(plain)/2 : len(plain)/2+64]
	found := false
	err := filepath.WalkDir(filepath.Join(repoDir, "chunks", "packs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if i := bytes.Index(b, needle); i >= 0 {
			b[i] ^= 0xff
			found = true
			return os.WriteFile(p, b, 0o600)
		}
		return nil
	})
	require.NoError(t, err)
	require.True(t, found, "chunk bytes not found in any pack")
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

// A chunk that is corrupt in the server's store, or damaged on its way, gives
// EIO through the mount, never wrong data; other files still read.
func TestRepoCorruptChunkGivesEIO(t *testing.T) {
	const victim = "base/1/16384"
	var bad chunkstore.ID
	f := startRepoServer(t, 1, func(f *repoFixture) {
		c := nodeOf(t, f.tree, victim).Chunks[1]
		bad = c.ID
		off := int(nodeOf(t, f.tree, victim).Chunks[0].Len)
		corruptChunk(t, f.repoDir, f.files[victim][off:off+int(c.Len)])
	})
	rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{})
	require.NoError(t, err)
	tree, err := rr.Tree(context.Background(), f.rp)
	require.NoError(t, err)
	mnt := mountRemote(t, tree, rr)

	_, err = os.ReadFile(filepath.Join(mnt, victim))
	require.ErrorIs(t, err, syscall.EIO)
	require.Contains(t, f.log.String(), bad.String(), "the server logs the chunk")
	_, err = rr.Get(context.Background(), bad, nil)
	var ce *chunkstore.CorruptChunkError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, bad, ce.ID)
	for name, want := range f.files {
		if name == victim {
			continue
		}
		got, err := os.ReadFile(filepath.Join(mnt, filepath.FromSlash(name)))
		require.NoError(t, err, name)
		require.True(t, bytes.Equal(want, got), "%s differs", name)
	}

	t.Run("damaged in transit", func(t *testing.T) {
		const other = "base/1/16385"
		target := nodeOf(t, tree, other).Chunks[0].ID
		tamper := func(id chunkstore.ID, p []byte) []byte {
			if id == target {
				p = bytes.Clone(p)
				p[len(p)-1] ^= 1
			}
			return p
		}
		tamperFetch.Store(&tamper)
		defer tamperFetch.Store(nil)
		rr2, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{})
		require.NoError(t, err)
		mnt2 := mountRemote(t, tree, rr2)
		_, err = os.ReadFile(filepath.Join(mnt2, other))
		require.ErrorIs(t, err, syscall.EIO)
		_, err = rr2.Get(context.Background(), target, nil)
		require.ErrorAs(t, err, &ce)
	})
}

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
	for _, c := range append(refs, refs...) { // every ID twice: duplicates in a batch
		go func() {
			b, err := rr.Get(context.Background(), c.ID, nil)
			if err == nil && (len(b) != int(c.Len) || chunkstore.Sum(b) != c.ID) {
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
