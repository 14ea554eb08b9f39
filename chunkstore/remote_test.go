package chunkstore_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/chunkstore/storetest"
	"github.com/pgporter/pgporter/internal/s3test"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// A store on a Remote (the directory backend here, S3 in TestRemoteS3)
// passes the same conformance suite as one in a directory.
func TestRemoteConformance(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts chunkstore.LocalOptions
	}{
		{"defaults", chunkstore.LocalOptions{}},
		{"small packs", chunkstore.LocalOptions{PackSize: 256 << 10, FlushBytes: 100 << 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) chunkstore.Store {
				opts := tc.opts
				opts.Remote = dirBackend(t)
				l, err := chunkstore.OpenLocal(t.TempDir(), opts)
				require.NoError(t, err)
				return l
			})
		})
	}
}

func dirBackend(t *testing.T) *objstore.Dir {
	t.Helper()
	d, err := objstore.OpenDir(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d
}

func objectNames(t *testing.T, b objstore.Backend, prefix string) []string {
	t.Helper()
	var names []string
	for o, err := range b.List(context.Background(), prefix) {
		require.NoError(t, err)
		names = append(names, o.Name)
	}
	return names
}

// Two hosts (each its own cache directory) write one store at once; each
// then reads the other's chunks, and a third, with an empty cache, reads
// them all. Every pack object is whole (its records end where it does),
// and the caches hold no spool once the writers have flushed.
func TestRemoteTwoHosts(t *testing.T) {
	b := dirBackend(t)
	opts := chunkstore.LocalOptions{FlushBytes: 1, Remote: b} // a pack and a run per Put
	cacheA, cacheB := t.TempDir(), t.TempDir()
	a := openLocal(t, cacheA, opts)
	h := openLocal(t, cacheB, opts)
	one, two := storetest.Chunks(25, 60), storetest.Chunks(26, 60)
	var g errgroup.Group
	g.Go(func() error { putChunks(t, a, one); return nil })
	g.Go(func() error { putChunks(t, h, two); return nil })
	require.NoError(t, g.Wait())
	requireChunks(t, a, two)
	requireChunks(t, h, one)

	all := append(slices.Clone(one), two...)
	c := openLocal(t, t.TempDir(), chunkstore.LocalOptions{Remote: b})
	requireChunks(t, c, all)
	requireVerifyClean(t, c, len(all))
	n, err := c.CheckLocations(context.Background(), func(id chunk.ID, err error) { t.Errorf("%s: %v", id.Short(), err) })
	require.NoError(t, err)
	require.Equal(t, len(all), n)

	require.NotEmpty(t, objectNames(t, b, "chunks/packs/"))
	runs := objectNames(t, b, "chunks/idx/")
	require.LessOrEqual(t, len(runs), 2*(compactFanIn-1)+2, "compaction keeps the runs few")
	for _, cache := range []string{cacheA, cacheB} {
		spools, err := filepath.Glob(filepath.Join(cache, "packs", "*.pack"))
		require.NoError(t, err)
		require.Empty(t, spools, "uploaded packs leave no spool")
	}
}

// Nothing of a store on a Remote is in its directory but caches: a store
// opened on a new, empty directory sees everything, and one whose cached
// runs are damaged fetches them again.
func TestRemoteCacheIsNotTheTruth(t *testing.T) {
	b := dirBackend(t)
	cache := t.TempDir()
	chunks := storetest.Chunks(27, 40)
	w, err := chunkstore.OpenLocal(cache, chunkstore.LocalOptions{Remote: b})
	require.NoError(t, err)
	putChunks(t, w, chunks)
	require.NoError(t, w.Close())

	cached := runFiles(t, cache)
	require.NotEmpty(t, cached)
	for _, p := range cached {
		require.NoError(t, os.WriteFile(p, []byte("damaged"), 0o644))
	}
	r := openLocal(t, cache, chunkstore.LocalOptions{Remote: b})
	requireChunks(t, r, chunks)
	require.Empty(t, r.Damaged())
	requireChunks(t, openLocal(t, t.TempDir(), chunkstore.LocalOptions{Remote: b}), chunks)
}

// A writer killed before its flush leaves a spool file in the cache and
// nothing in the store; the next store opened on that cache removes the
// spool, and nothing reads the lost chunks.
func TestRemoteCrashedSpool(t *testing.T) {
	b := dirBackend(t)
	cache := t.TempDir()
	// A crashed writer's spool: a pack file no one holds locked.
	spool := filepath.Join(cache, "packs", "8000000000000001.pack")
	require.NoError(t, os.MkdirAll(filepath.Dir(spool), 0o755))
	require.NoError(t, os.WriteFile(spool, []byte("PGK1 torn"), 0o644))

	w := openLocal(t, cache, chunkstore.LocalOptions{Remote: b})
	_, err := os.Stat(spool)
	require.True(t, errors.Is(err, os.ErrNotExist), "the crashed writer's spool is removed: %v", err)

	// A live writer's spool, locked, stays while another process opens
	// the same cache.
	chunks := storetest.Chunks(28, 3)
	for _, c := range chunks {
		require.NoError(t, w.Put(context.Background(), chunk.Sum(c), c))
	}
	live, err := filepath.Glob(filepath.Join(cache, "packs", "*.pack"))
	require.NoError(t, err)
	require.Len(t, live, 1)
	other := openLocal(t, cache, chunkstore.LocalOptions{Remote: b})
	_, err = os.Stat(live[0])
	require.NoError(t, err, "a live writer's spool stays")
	require.Empty(t, objectNames(t, b, "chunks/packs/"), "nothing is uploaded before a flush")
	has, err := other.HasMany(context.Background(), ids(chunks))
	require.NoError(t, err)
	require.Equal(t, []bool{false, false, false}, has, "unflushed chunks are not in the store")

	require.NoError(t, w.Flush(context.Background()))
	require.Len(t, objectNames(t, b, "chunks/packs/"), 1)
	_, err = os.Stat(live[0])
	require.True(t, errors.Is(err, os.ErrNotExist), "an uploaded pack's spool goes")
	requireChunks(t, w, chunks) // read back through the object store now
	requireChunks(t, other, chunks)
}

// A store refuses an object store holding another layout.
func TestRemoteFormat(t *testing.T) {
	b := dirBackend(t)
	body := "pgporter-chunkstore-9\n"
	require.NoError(t, b.PutIfAbsent(context.Background(), "chunks/format", strings.NewReader(body), int64(len(body))))
	_, err := chunkstore.OpenLocal(t.TempDir(), chunkstore.LocalOptions{Remote: b})
	require.ErrorContains(t, err, `holds a store of format "pgporter-chunkstore-9"`)
}

func ids(chunks [][]byte) []chunk.ID {
	out := make([]chunk.ID, len(chunks))
	for i, c := range chunks {
		out[i] = chunk.Sum(c)
	}
	return out
}

// The same on a real S3 server: the conformance suite, and two writers.
func TestRemoteS3(t *testing.T) {
	srv := s3test.Start(t)
	newBackend := func(t *testing.T) objstore.Backend {
		s, err := objstore.NewS3(srv.Client(t, srv.Endpoint), srv.NewBucket(t), "repo", objstore.S3Options{})
		require.NoError(t, err)
		return s
	}
	t.Run("Conformance", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) chunkstore.Store {
			l, err := chunkstore.OpenLocal(t.TempDir(), chunkstore.LocalOptions{Remote: newBackend(t), PackSize: 256 << 10, FlushBytes: 100 << 10})
			require.NoError(t, err)
			return l
		})
	})
	t.Run("TwoWriters", func(t *testing.T) {
		b := newBackend(t)
		opts := chunkstore.LocalOptions{FlushBytes: 64 << 10, Remote: b}
		a, h := openLocal(t, t.TempDir(), opts), openLocal(t, t.TempDir(), opts)
		one, two := storetest.Chunks(29, 40), storetest.Chunks(30, 40)
		var g errgroup.Group
		g.Go(func() error { putChunks(t, a, one); return nil })
		g.Go(func() error { putChunks(t, h, two); return nil })
		require.NoError(t, g.Wait())
		c := openLocal(t, t.TempDir(), chunkstore.LocalOptions{Remote: b})
		requireChunks(t, c, append(slices.Clone(one), two...))
		requireVerifyClean(t, c, len(one)+len(two))
	})
	t.Run("Repo", func(t *testing.T) { testRemoteRepo(t, srv) })
	t.Run("Faults", func(t *testing.T) { testRemoteFaults(t, srv) }) // restarts srv: last
}

// A backup and a check of a repository on S3 through a proxy that answers
// with 503 SlowDown, cuts uploads and downloads midway and loses answers,
// and with the server killed and restarted in the middle of each: both
// finish through the bounded retries, the backup's restore point reads
// back whole, and check finds nothing wrong.
func testRemoteFaults(t *testing.T, srv *s3test.Server) {
	srv.SetEnv(t)
	proxy := testsupport.NewHTTPFaultProxy(t, srv.Endpoint)
	t.Setenv("AWS_ENDPOINT_URL", proxy.URL)
	url := "s3://" + srv.NewBucket(t) + "/faults"

	isPackPut := func(r *http.Request) bool {
		return r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/chunks/packs/")
	}
	isGet := func(r *http.Request) bool {
		return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/chunks/")
	}
	proxy.Inject(3, testsupport.HTTPFault{Status: http.StatusServiceUnavailable, Code: "SlowDown"})
	proxy.Inject(1, testsupport.HTTPFault{Match: isPackPut, CutRequestAfter: 100_000})
	proxy.Inject(1, testsupport.HTTPFault{Match: isPackPut, CutResponseAfter: -1}) // done, answer lost
	// The server is killed when the second pack's upload arrives.
	restartAt := make(chan struct{}, 1)
	var packPuts atomic.Int64
	proxy.Inject(1_000_000, testsupport.HTTPFault{Match: func(r *http.Request) bool {
		if isPackPut(r) && packPuts.Add(1) == 2 {
			restartAt <- struct{}{}
		}
		return false
	}})

	c := testsupport.NewCluster(t, testsupport.ClusterOptions{})
	c.PgBench(t, "postgres", 1)
	c.Stop(t)
	ctx := context.Background()
	// Packs of 1 MiB: a backup of this cluster uploads a few dozen.
	r, err := chunkstore.OpenRepoWith(context.Background(), url, chunkstore.RepoOptions{Store: chunkstore.LocalOptions{PackSize: 1 << 20}})
	require.NoError(t, err)
	var rp *chunkstore.RestorePoint
	backupErr := make(chan error, 1)
	go func() {
		var err error
		rp, err = r.Backup(ctx, c.DataDir, chunkstore.BackupOptions{})
		backupErr <- err
	}()
	select {
	case <-restartAt:
		srv.Restart(t)
		require.NoError(t, <-backupErr, "the backup rides out the faults and the restart")
	case err := <-backupErr:
		t.Fatalf("the backup ended before its second pack's upload: %v", err)
	}
	_, injected := proxy.Counts()
	require.Equal(t, 5, injected, "every fault was met")
	require.NoError(t, r.Close())

	// A check from an empty cache, with the server restarted as it reads.
	t.Setenv("PGPORTER_CACHE_DIR", t.TempDir())
	proxy.Inject(2, testsupport.HTTPFault{Match: isGet, Status: http.StatusInternalServerError, Code: "InternalError"})
	proxy.Inject(2, testsupport.HTTPFault{Match: isGet, CutResponseAfter: 1000})
	var gets atomic.Int64
	readRestart := make(chan struct{}, 1)
	proxy.Inject(1_000_000, testsupport.HTTPFault{Match: func(r *http.Request) bool {
		if isGet(r) && gets.Add(1) == 3 {
			readRestart <- struct{}{}
		}
		return false
	}})
	r2 := openRepo(t, url)
	var rep *chunkstore.CheckReport
	checkErr := make(chan error, 1)
	go func() {
		var err error
		rep, err = r2.Check(ctx, chunkstore.CheckOptions{ReadData: true})
		checkErr <- err
	}()
	select {
	case <-readRestart:
		srv.Restart(t)
		require.NoError(t, <-checkErr, "the check rides out the faults and the restart")
	case err := <-checkErr:
		t.Fatalf("the check ended before its third read: %v", err)
	}
	require.Empty(t, rep.Problems)
	_, injected = proxy.Counts()
	require.Equal(t, 9, injected, "every fault was met")
	latest, err := r2.Resolve("latest")
	require.NoError(t, err)
	require.Equal(t, rp.ID, latest.ID)
	checkRestorePoint(t, r2, latest, c.DataDir)
}

// A repository at s3://BUCKET/PREFIX, reached as a user's command reaches
// it (the AWS variables, a cache directory): two backups of a real
// cluster, each checked byte for byte, the second storing only what
// changed; a host with an empty cache lists and reads them; check passes;
// what is not built for object storage yet is refused, creating nothing.
func testRemoteRepo(t *testing.T, srv *s3test.Server) {
	srv.SetEnv(t)
	url := "s3://" + srv.NewBucket(t) + "/team/db1"

	_, err := chunkstore.ListRepo(context.Background(), url)
	require.ErrorIs(t, err, chunkstore.ErrNotRepo, "an empty bucket holds no repository")

	c := testsupport.NewCluster(t, testsupport.ClusterOptions{})
	c.PgBench(t, "postgres", 1)
	c.Stop(t)
	ctx := context.Background()
	r := openRepo(t, url)
	rp, err := r.Backup(ctx, c.DataDir, chunkstore.BackupOptions{})
	require.NoError(t, err)
	checkRestorePoint(t, r, rp, c.DataDir)

	c.Start(t)
	c.Exec(t, "postgres", "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 100")
	c.Stop(t)
	rp2, err := r.Backup(ctx, c.DataDir, chunkstore.BackupOptions{})
	require.NoError(t, err)
	require.LessOrEqual(t, rp2.StoredSize, rp.StoredSize/10, "the second backup stores only what changed")
	require.NoError(t, r.Close())

	// Another host: nothing cached.
	t.Setenv("PGPORTER_CACHE_DIR", t.TempDir())
	list, err := chunkstore.ListRepo(context.Background(), url)
	require.NoError(t, err)
	require.Equal(t, []string{rp.ID, rp2.ID}, []string{list[0].ID, list[1].ID})
	r2 := openRepo(t, url)
	latest, err := r2.Resolve("latest")
	require.NoError(t, err)
	require.Equal(t, rp2.ID, latest.ID)
	checkRestorePoint(t, r2, latest, c.DataDir)
	rep, err := r2.Check(ctx, chunkstore.CheckOptions{ReadData: true})
	require.NoError(t, err)
	require.Empty(t, rep.Problems)

	// Locks are objects: r2's shared lock keeps forget out, and once it
	// is released, forget's exclusive lock keeps others out.
	_, err = chunkstore.OpenRepoWith(ctx, url, chunkstore.RepoOptions{Lock: chunkstore.LockExclusive})
	require.ErrorIs(t, err, chunkstore.ErrRepoLocked)
	require.ErrorContains(t, err, "shared lock")
	require.NoError(t, r2.Close())
	x, err := chunkstore.OpenRepoWith(ctx, url, chunkstore.RepoOptions{Lock: chunkstore.LockExclusive})
	require.NoError(t, err)
	_, err = chunkstore.OpenRepoWith(ctx, url, chunkstore.RepoOptions{})
	require.ErrorIs(t, err, chunkstore.ErrRepoLocked)
	require.NoError(t, x.Forget([]chunkstore.RestorePoint{*rp}))
	st, err := x.Prune(ctx, false)
	require.NoError(t, err)
	require.Equal(t, 1, st.RestorePoints)
	require.Positive(t, st.DeadChunks, "the forgotten point's own chunks")
	require.NoError(t, x.Close())
	list, err = chunkstore.ListRepo(ctx, url)
	require.NoError(t, err)
	require.Len(t, list, 1, "forgotten")
	require.Equal(t, rp2.ID, list[0].ID)
	r2 = openRepo(t, url)
	rep, err = r2.Check(ctx, chunkstore.CheckOptions{ReadData: true})
	require.NoError(t, err)
	require.Empty(t, rep.Problems, "after the prune")
	checkRestorePoint(t, r2, rp2, c.DataDir)

	// The WAL archive: wal-push's way (no lock, a write-only store), a
	// fetch back through another handle byte for byte, a retried push, a
	// conflicting one, and check reading the records.
	walDir := t.TempDir()
	seg := walSegment(t, walDir, "000000010000000000000003", 31)
	pusher, err := chunkstore.OpenRepoWith(ctx, url, chunkstore.RepoOptions{Lock: chunkstore.LockNone, Store: chunkstore.LocalOptions{WriteOnly: true}})
	require.NoError(t, err)
	already, err := pusher.PushWAL(ctx, seg)
	require.NoError(t, err)
	require.False(t, already)
	already, err = pusher.PushWAL(ctx, seg)
	require.NoError(t, err)
	require.True(t, already, "a retried push stores nothing")
	other := walSegment(t, t.TempDir(), "000000010000000000000003", 32)
	_, err = pusher.PushWAL(ctx, other)
	require.ErrorIs(t, err, chunkstore.ErrWALConflict)
	require.NoError(t, pusher.Close())
	got := filepath.Join(t.TempDir(), "seg")
	require.NoError(t, r2.FetchWAL(ctx, "000000010000000000000003", got))
	want, err := os.ReadFile(seg)
	require.NoError(t, err)
	gotb, err := os.ReadFile(got)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, gotb), "the fetched segment differs")
	require.ErrorIs(t, r2.FetchWAL(ctx, "000000010000000000000004", got), chunkstore.ErrWALNotFound)
	rep, err = r2.Check(ctx, chunkstore.CheckOptions{ReadData: true})
	require.NoError(t, err)
	require.Empty(t, rep.Problems)
	require.Equal(t, 1, rep.WALFiles)
	// Outcomes: a failed wal-push, then the success after it; each record
	// replaces the last, and health reads them with the archive's state.
	t0 := time.Now()
	require.NoError(t, chunkstore.RecordRecovery(t.Context(), url, chunkstore.Run{Op: chunkstore.OpWALPush, Start: t0, End: t0, Err: errors.New("disk full")}))
	require.NoError(t, chunkstore.RecordRecovery(t.Context(), url, chunkstore.Run{Op: chunkstore.OpWALPush, Start: t0, End: t0.Add(time.Second)}))
	require.NoError(t, chunkstore.RecordRecovery(t.Context(), url, chunkstore.Run{Op: chunkstore.OpWALPush, Start: t0, End: t0.Add(2 * time.Second)}))
	h, err := chunkstore.ReadHealth(ctx, url)
	require.NoError(t, err)
	push := h.Ops[chunkstore.OpWALPush]
	require.NotNil(t, push)
	require.True(t, push.Last.OK)
	require.EqualValues(t, 1, push.Failures)
	require.Equal(t, "disk full", push.LastError)
	require.True(t, push.Last.Time.Equal(t0.Add(time.Second).UTC()), "a success after a success is not recorded")
	require.Equal(t, "000000010000000000000003", h.WAL.Last)
	require.Equal(t, 1, h.RestorePoints)

	// How far an online backup ending in that segment recovers, read from
	// the bucket as restore-points reads it.
	online := chunkstore.RestorePoint{WAL: &chunkstore.WALRange{Timeline: 1, Start: "0/3000028", End: "0/3000100", SegmentSize: 16 << 20}}
	cov, err := chunkstore.WALCoverage(ctx, url, &online, chunkstore.TimelineLatest)
	require.NoError(t, err)
	require.Equal(t, "000000010000000000000003", cov.LastSegment)
	require.False(t, cov.To.IsZero())
	_, err = os.Stat("s3:")
	require.ErrorIs(t, err, os.ErrNotExist, "a URL is never taken for a directory")
}

// A flipped byte in a pack object on the store fails the chunk's read with
// a CorruptChunkError: what the store returns is checked, never used.
func TestRemoteCorruptRecord(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d, err := objstore.OpenDir(root)
	require.NoError(t, err)
	defer d.Close()
	l, err := chunkstore.OpenLocal(t.TempDir(), chunkstore.LocalOptions{Remote: d, DiskCacheBytes: -1})
	require.NoError(t, err)
	data := make([]byte, 100_000) // random: stored as it is, so the flip lands in the chunk
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	id := chunk.Sum(data)
	require.NoError(t, l.Put(ctx, id, data))
	require.NoError(t, l.Flush(ctx))
	require.NoError(t, l.Close())

	packs, err := filepath.Glob(filepath.Join(root, "chunks", "packs", "*.pack"))
	require.NoError(t, err)
	require.Len(t, packs, 1)
	b, err := os.ReadFile(packs[0])
	require.NoError(t, err)
	b[len(b)/2] ^= 0x40
	require.NoError(t, os.Chmod(packs[0], 0o644))
	require.NoError(t, os.WriteFile(packs[0], b, 0o644))

	l, err = chunkstore.OpenLocal(t.TempDir(), chunkstore.LocalOptions{Remote: d, DiskCacheBytes: -1})
	require.NoError(t, err)
	defer l.Close()
	_, err = l.Get(ctx, id, nil)
	var ce *chunk.CorruptChunkError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, id, ce.ID)
}
