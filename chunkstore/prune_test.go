package chunkstore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/chunkstore/storetest"
	"github.com/pgporter/pgporter/internal/s3test"
	"github.com/pgporter/pgporter/internal/testsupport"
)

func TestForgetPlan(t *testing.T) {
	day := func(d, h int) time.Time { return time.Date(2026, 12, d, h, 0, 0, 0, time.UTC) }
	var rps []chunkstore.RestorePoint
	for i, tm := range []time.Time{day(1, 1), day(1, 20), day(2, 3), day(8, 3), day(9, 3), day(9, 22)} {
		rps = append(rps, chunkstore.RestorePoint{ID: "rp-" + string(rune('a'+i)), Time: tm})
	}
	ids := func(rps []chunkstore.RestorePoint) (out []string) {
		for _, rp := range rps {
			out = append(out, rp.ID)
		}
		return out
	}
	keep, forget, err := chunkstore.ForgetPolicy{KeepLast: 2}.Plan(rps)
	require.NoError(t, err)
	require.Equal(t, []string{"rp-e", "rp-f"}, ids(keep))
	require.Len(t, forget, 4)
	keep, _, err = chunkstore.ForgetPolicy{KeepDaily: 3}.Plan(rps)
	require.NoError(t, err)
	require.Equal(t, []string{"rp-c", "rp-d", "rp-f"}, ids(keep), "the newest of each of the last three days with one")
	keep, _, err = chunkstore.ForgetPolicy{KeepWeekly: 2, KeepLast: 1}.Plan(rps)
	require.NoError(t, err)
	require.Equal(t, []string{"rp-c", "rp-f"}, ids(keep), "week 49 ends on the 6th; week 50 holds the 8th and 9th")
	keep, forget, err = chunkstore.ForgetPolicy{IDs: []string{"rp-b"}}.Plan(rps)
	require.NoError(t, err)
	require.Equal(t, []string{"rp-b"}, ids(forget))
	require.Len(t, keep, 5)
	_, _, err = chunkstore.ForgetPolicy{IDs: []string{"rp-x"}}.Plan(rps)
	require.ErrorIs(t, err, chunkstore.ErrNoRestorePoint)
	keep, forget, err = chunkstore.ForgetPolicy{}.Plan(rps)
	require.NoError(t, err)
	require.Len(t, keep, 6, "no rule forgets nothing")
	require.Empty(t, forget)
}

func dirBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	require.NoError(t, filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return err
	}))
	return n
}

// After a forget and a prune the repository shrinks, the kept restore
// point and the WAL it needs still read back whole, and a rerun of the
// prune has nothing left to do. Locks keep prune and other processes
// apart; wal-push's store goes on meanwhile.
func TestPrune(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "repo")
	src := fakeDataDir(t)
	r := openRepo(t, dir)
	first, err := r.Backup(ctx, src, chunkstore.BackupOptions{})
	require.NoError(t, err)
	// The second backup shares little with the first: most of the first's
	// packs hold nothing the second needs. Each backup is its own
	// process's, with packs of its own.
	rnd := storetest.RandomBytes(rand.New(rand.NewPCG(9, 9)), 3<<20)
	require.NoError(t, os.WriteFile(filepath.Join(src, "base/5/16384"), rnd, 0o600))
	require.NoError(t, r.Close())
	r = openRepo(t, dir)
	second, err := r.Backup(ctx, src, chunkstore.BackupOptions{})
	require.NoError(t, err)
	_, err = r.PushWAL(ctx, walSegment(t, t.TempDir(), "000000010000000000000005", 6))
	require.NoError(t, err)

	// An exclusive open is refused while a shared one holds, naming it.
	_, err = chunkstore.OpenRepoWith(context.Background(), dir, chunkstore.RepoOptions{Lock: chunkstore.LockExclusive})
	require.ErrorIs(t, err, chunkstore.ErrRepoLocked)
	require.ErrorContains(t, err, "shared lock")
	require.NoError(t, r.Close())

	// A lock left by a process that is gone does not count.
	stale, err := json.Marshal(map[string]any{"host": mustHostname(t), "boot_id": "another boot", "pid": 1, "purpose": "pgporter export", "time": time.Now()})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "locks", "0000000000000001.json"), stale, 0o644))

	ex, err := chunkstore.OpenRepoWith(context.Background(), dir, chunkstore.RepoOptions{Lock: chunkstore.LockExclusive})
	require.NoError(t, err)
	require.NoFileExists(t, filepath.Join(dir, "locks", "0000000000000001.json"), "the stale lock is removed")
	_, err = chunkstore.OpenRepoWith(context.Background(), dir, chunkstore.RepoOptions{})
	require.ErrorIs(t, err, chunkstore.ErrRepoLocked, "no reader while a prune may run")
	// wal-push takes no lock: it goes on beside forget and prune.
	pusher, err := chunkstore.OpenRepoWith(context.Background(), dir, chunkstore.RepoOptions{Lock: chunkstore.LockNone, Store: chunkstore.LocalOptions{WriteOnly: true}})
	require.NoError(t, err)
	_, err = pusher.PushWAL(ctx, walSegment(t, t.TempDir(), "000000010000000000000006", 7))
	require.NoError(t, err)

	before := dirBytes(t, filepath.Join(dir, "chunks"))
	require.NoError(t, ex.Forget([]chunkstore.RestorePoint{*first}))
	dry, err := ex.Prune(ctx, true)
	require.NoError(t, err)
	require.Positive(t, dry.DeadChunks)
	require.Equal(t, before, dirBytes(t, filepath.Join(dir, "chunks")), "a dry run changes nothing")
	st, err := ex.Prune(ctx, false)
	require.NoError(t, err)
	require.Equal(t, dry.DeadChunks, st.DeadChunks)
	require.Positive(t, st.PacksDeleted+st.PacksRepacked)
	require.Positive(t, st.BytesFreed)
	require.Less(t, dirBytes(t, filepath.Join(dir, "chunks")), before)
	again, err := ex.Prune(ctx, false)
	require.NoError(t, err)
	require.Zero(t, again.DeadChunks, "a rerun finds nothing left")
	require.NoError(t, pusher.Close())
	require.NoError(t, ex.Close())

	r = openRepo(t, dir)
	rep, err := r.Check(ctx, chunkstore.CheckOptions{ReadData: true})
	require.NoError(t, err)
	require.Empty(t, rep.Problems)
	require.Equal(t, 1, rep.RestorePoints)
	require.Equal(t, 2, rep.WALFiles, "WAL is kept when the oldest point has no WAL range")
	checkRestorePoint(t, r, second, src)
	_, err = r.Resolve(first.ID)
	require.ErrorIs(t, err, chunkstore.ErrNoRestorePoint)
}

func mustHostname(t *testing.T) string {
	h, err := os.Hostname()
	require.NoError(t, err)
	return h
}

// TestPruneKilled: a prune SIGKILLed at any point of its work loses
// nothing, in a directory and in a bucket of a real S3 server. At each
// point a child process runs the prune and kills itself there; then a
// rerun (which breaks the dead process's lock) finishes the work: the
// repository shrinks, check --read-data finds nothing wrong, the kept
// restore point reads back whole, and the WAL it needs fetches back.
func TestPruneKilled(t *testing.T) {
	if point := os.Getenv("PGPORTER_TEST_PRUNE_KILL_AT"); point != "" {
		pruneChild(t, point)
		return
	}
	t.Run("dir", func(t *testing.T) {
		// One repository, copied for each point.
		fixture := filepath.Join(t.TempDir(), "repo")
		fx := pruneFixture(t, fixture, func(p *chunkstore.RestorePoint, b []byte) {
			require.NoError(t, os.WriteFile(filepath.Join(fixture, "points", p.ID+".json"), b, 0o644))
		})
		before := dirBytes(t, fixture)
		for _, point := range chunkstore.PruneCrashPoints {
			t.Run(point, func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "repo")
				require.NoError(t, os.CopyFS(dir, os.DirFS(fixture)))
				killPruneAt(t, point, dir)
				pruneRerun(t, dir, fx)
				require.Less(t, dirBytes(t, dir), before)
			})
		}
	})
	t.Run("s3", func(t *testing.T) {
		srv := s3test.Shared(t)
		srv.SetEnv(t)
		for _, point := range chunkstore.PruneCrashPoints {
			t.Run(point, func(t *testing.T) {
				// A bucket of its own, filled for each point.
				bucket := srv.NewBucket(t)
				b, err := objstore.NewS3(srv.Client(t, srv.Endpoint), bucket, "repo", objstore.S3Options{})
				require.NoError(t, err)
				url := "s3://" + bucket + "/repo"
				fx := pruneFixture(t, url, func(p *chunkstore.RestorePoint, data []byte) {
					// Points are created once; the test, as the store's
					// owner, replaces one.
					name := "points/" + p.ID + ".json"
					require.NoError(t, b.Delete(t.Context(), name))
					require.NoError(t, b.PutIfAbsent(t.Context(), name, bytes.NewReader(data), int64(len(data))))
					// A host's cache takes points for immutable: a new one.
					t.Setenv("PGPORTER_CACHE_DIR", t.TempDir())
				})
				before := bucketBytes(t, b)
				killPruneAt(t, point, url)
				pruneRerun(t, url, fx)
				require.Less(t, bucketBytes(t, b), before)
			})
		}
	})
}

// pruneFixtureInfo is what a pruneFixture repository holds.
type pruneFixtureInfo struct {
	src    string // the data directory of the kept point
	kept   *chunkstore.RestorePoint
	walDir string // the WAL segments pushed
}

// pruneFixture makes the repository TestPruneKilled prunes: two backups,
// the first forgotten (its packs mostly dead: one is repacked), WAL of
// before the second's start (pruned) and after it (kept). rewrite replaces
// the second point's file (its WAL range set) in the repository.
func pruneFixture(t *testing.T, repo string, rewrite func(*chunkstore.RestorePoint, []byte)) pruneFixtureInfo {
	t.Helper()
	src := fakeDataDir(t)
	r, err := chunkstore.OpenRepo(context.Background(), repo, nil)
	require.NoError(t, err)
	first, err := r.Backup(t.Context(), src, chunkstore.BackupOptions{})
	require.NoError(t, err)
	require.NoError(t, r.Close())
	rnd := storetest.RandomBytes(rand.New(rand.NewPCG(9, 9)), 3<<20)
	require.NoError(t, os.WriteFile(filepath.Join(src, "base/5/16384"), rnd, 0o600))
	r, err = chunkstore.OpenRepo(context.Background(), repo, nil)
	require.NoError(t, err)
	second, err := r.Backup(t.Context(), src, chunkstore.BackupOptions{})
	require.NoError(t, err)
	walDir := t.TempDir()
	for i, name := range []string{"000000010000000000000003", "000000010000000000000004", "000000010000000000000005", "000000010000000000000006"} {
		_, err = r.PushWAL(t.Context(), walSegment(t, walDir, name, uint64(10+i)))
		require.NoError(t, err)
	}
	require.NoError(t, r.Close())
	// The second point as an online backup that starts in segment 5.
	second.WAL = &chunkstore.WALRange{Timeline: 1, Start: "0/5000028", End: "0/5000100", SegmentSize: 16 << 20}
	b, err := json.Marshal(second)
	require.NoError(t, err)
	rewrite(second, b)
	ex, err := chunkstore.OpenRepoWith(context.Background(), repo, chunkstore.RepoOptions{Lock: chunkstore.LockExclusive})
	require.NoError(t, err)
	require.NoError(t, ex.Forget([]chunkstore.RestorePoint{*first}))
	dry, err := ex.Prune(t.Context(), true)
	require.NoError(t, err)
	require.NoError(t, ex.Close())
	require.Positive(t, dry.PacksRepacked, "the fixture has a pack to repack")
	require.Positive(t, dry.PacksDeleted+dry.PacksRepacked)
	require.Equal(t, 2, dry.WALFilesPruned)
	return pruneFixtureInfo{src: src, kept: second, walDir: walDir}
}

// killPruneAt runs a prune of repo in a child process that SIGKILLs
// itself at point.
func killPruneAt(t *testing.T, point, repo string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestPruneKilled$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PGPORTER_TEST_PRUNE_KILL_AT="+point, "PGPORTER_TEST_PRUNE_REPO="+repo)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", out)
	ws := ee.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "the prune was not killed at %s: %v\n%s", point, err, out)
}

// pruneRerun prunes repo again after a killed prune, and checks that
// nothing was lost.
func pruneRerun(t *testing.T, repo string, fx pruneFixtureInfo) {
	t.Helper()
	ex, err := chunkstore.OpenRepoWith(context.Background(), repo, chunkstore.RepoOptions{Lock: chunkstore.LockExclusive})
	require.NoError(t, err, "the dead prune's lock is stale")
	_, err = ex.Prune(t.Context(), false)
	require.NoError(t, err)
	again, err := ex.Prune(t.Context(), false)
	require.NoError(t, err)
	require.Zero(t, again.DeadChunks, "the rerun finished the work")
	require.NoError(t, ex.Close())

	r := openRepo(t, repo)
	rep, err := r.Check(t.Context(), chunkstore.CheckOptions{ReadData: true})
	require.NoError(t, err)
	require.Empty(t, rep.Problems)
	require.Equal(t, 1, rep.RestorePoints)
	require.Equal(t, 2, rep.WALFiles)
	checkRestorePoint(t, r, fx.kept, fx.src)
	for _, name := range []string{"000000010000000000000005", "000000010000000000000006"} {
		dst := filepath.Join(t.TempDir(), name)
		require.NoError(t, r.FetchWAL(t.Context(), name, dst))
		want, err := os.ReadFile(filepath.Join(fx.walDir, name))
		require.NoError(t, err)
		got, err := os.ReadFile(dst)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), name)
	}
}

// bucketBytes sums the sizes of the objects b holds.
func bucketBytes(t *testing.T, b objstore.Backend) int64 {
	t.Helper()
	var n int64
	for o, err := range b.List(t.Context(), "") {
		require.NoError(t, err)
		n += o.Size
	}
	return n
}

// pruneChild is TestPruneKilled's child: it prunes the repository and
// SIGKILLs itself at point.
func pruneChild(t *testing.T, point string) {
	chunkstore.SetPruneCrashHook(func(at string) {
		if at == point {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	})
	ex, err := chunkstore.OpenRepoWith(context.Background(), os.Getenv("PGPORTER_TEST_PRUNE_REPO"), chunkstore.RepoOptions{Lock: chunkstore.LockExclusive})
	require.NoError(t, err)
	_, err = ex.Prune(t.Context(), false)
	require.NoError(t, err)
	t.Fatalf("the prune never reached %s", point)
}

// A prune of a bucket aborts the multipart uploads killed writers left
// (their parts are billed, and nothing else ever removes them) once they
// are staleUploadAge old, counting them also when dry; a younger one is
// kept, as is one outside the repository's prefix. The raw client plays
// the killed writers; an age of 0 makes the uploads old at once. A bucket
// that denies listing uploads costs a warning, not the prune.
func TestPruneStaleUploads(t *testing.T) {
	srv := s3test.Shared(t)
	srv.SetEnv(t)
	ctx := t.Context()
	bucket := srv.NewBucket(t)
	url := "s3://" + bucket + "/repo"
	r, err := chunkstore.OpenRepo(ctx, url, nil)
	require.NoError(t, err)
	_, err = r.Backup(ctx, fakeDataDir(t), chunkstore.BackupOptions{})
	require.NoError(t, err)
	require.NoError(t, r.Close())

	c := srv.Client(t, srv.Endpoint)
	for _, key := range []string{"repo/chunks/packs/00000000000000aa.pack", "other/chunks/packs/00000000000000aa.pack"} {
		up, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: aws.String(key)})
		require.NoError(t, err)
		_, err = c.UploadPart(ctx, &s3.UploadPartInput{Bucket: &bucket, Key: aws.String(key), UploadId: up.UploadId,
			PartNumber: aws.Int32(1), Body: bytes.NewReader(make([]byte, 1<<20))})
		require.NoError(t, err)
	}
	uploads := func() []string {
		t.Helper()
		out, err := c.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &bucket})
		require.NoError(t, err)
		var keys []string
		for _, u := range out.Uploads {
			keys = append(keys, aws.ToString(u.Key))
		}
		return keys
	}
	require.Len(t, uploads(), 2)

	ex, err := chunkstore.OpenRepoWith(ctx, url, chunkstore.RepoOptions{Lock: chunkstore.LockExclusive})
	require.NoError(t, err)
	defer ex.Close()
	// Younger than the default day: kept.
	st, err := ex.Prune(ctx, false)
	require.NoError(t, err)
	require.Zero(t, st.UploadsAborted)
	require.Len(t, uploads(), 2)

	chunkstore.SetStaleUploadAge(t, 0)
	dry, err := ex.Prune(ctx, true)
	require.NoError(t, err)
	require.Equal(t, 1, dry.UploadsAborted)
	require.Len(t, uploads(), 2, "a dry run aborts nothing")
	st, err = ex.Prune(ctx, false)
	require.NoError(t, err)
	require.Equal(t, 1, st.UploadsAborted)
	require.Equal(t, []string{"other/chunks/packs/00000000000000aa.pack"}, uploads())
	st, err = ex.Prune(ctx, false)
	require.NoError(t, err)
	require.Zero(t, st.UploadsAborted)
	require.NoError(t, ex.Close())

	// A bucket policy that denies listing the uploads: the prune warns,
	// and succeeds.
	proxy := testsupport.NewHTTPFaultProxy(t, srv.Endpoint)
	t.Setenv("AWS_ENDPOINT_URL", proxy.URL)
	proxy.Inject(1000, testsupport.HTTPFault{Match: func(r *http.Request) bool { return r.URL.Query().Has("uploads") }, Status: 403, Code: "AccessDenied"})
	ex, err = chunkstore.OpenRepoWith(ctx, url, chunkstore.RepoOptions{Lock: chunkstore.LockExclusive})
	require.NoError(t, err)
	st, err = ex.Prune(ctx, false)
	require.NoError(t, err)
	require.Zero(t, st.UploadsAborted)
	_, injected := proxy.Counts()
	require.Positive(t, injected)
	require.NoError(t, ex.Close())
}
