package chunkstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// emptyRepo returns the directory of a repository with no restore point.
func emptyRepo(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	r, err := chunkstore.OpenRepo(context.Background(), dir, nil)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	return dir
}

// TestRecordRun: each run replaces the last one and adds to its success or
// failure; the failures are counted, never lost by runs that end at once;
// a damaged record is named by readers and replaced by the next run; a
// directory that is not a repository is refused and left as it is.
func TestRecordRun(t *testing.T) {
	dir := emptyRepo(t)
	t0 := time.Date(2026, 12, 1, 2, 0, 0, 0, time.UTC)
	run := func(op chunkstore.Op, start time.Duration, took time.Duration, err error) chunkstore.Run {
		return chunkstore.Run{Op: op, Start: t0.Add(start), End: t0.Add(start + took), Err: err, Host: "db1"}
	}
	require.NoError(t, chunkstore.RecordRun(t.Context(), dir, run(chunkstore.OpBackup, 0, time.Minute, errors.New("first"))))
	require.NoError(t, chunkstore.RecordRun(t.Context(), dir, run(chunkstore.OpBackup, time.Hour, time.Minute, errors.New("second"))))
	st, err := chunkstore.ReadStatus(context.Background(), dir)
	require.NoError(t, err)
	b := st[chunkstore.OpBackup]
	require.NotNil(t, b)
	require.Equal(t, uint64(2), b.Failures)
	require.False(t, b.Last.OK)
	require.Equal(t, "second", b.Last.Error)
	require.Equal(t, "second", b.LastError)
	require.Equal(t, t0.Add(time.Hour+time.Minute), b.LastFailure)
	require.True(t, b.LastSuccess.IsZero())
	require.Equal(t, "db1", b.Last.Host)
	require.Equal(t, 60.0, b.Last.Seconds)

	require.NoError(t, chunkstore.RecordRun(t.Context(), dir, run(chunkstore.OpBackup, 2*time.Hour, 30*time.Second, nil)))
	st, err = chunkstore.ReadStatus(context.Background(), dir)
	require.NoError(t, err)
	b = st[chunkstore.OpBackup]
	require.True(t, b.Last.OK)
	require.Empty(t, b.Last.Error)
	require.Equal(t, "second", b.LastError, "the last failure's error stays")
	require.Equal(t, uint64(2), b.Failures)
	require.Equal(t, t0.Add(2*time.Hour+30*time.Second), b.LastSuccess)
	require.Equal(t, t0.Add(2*time.Hour+30*time.Second), b.Last.Time)
	require.Nil(t, st[chunkstore.OpPrune], "no prune recorded")
	fi, err := os.Stat(filepath.Join(dir, "status", "backup.json"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), fi.Mode().Perm(), "readable by a metrics reader of another user")

	// Runs that end at once: none of their failures is lost.
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			require.NoError(t, chunkstore.RecordRun(t.Context(), dir, run(chunkstore.OpPrune, time.Duration(i)*time.Second, time.Second, errors.New("locked"))))
		})
	}
	wg.Wait()
	st, err = chunkstore.ReadStatus(context.Background(), dir)
	require.NoError(t, err)
	require.Equal(t, uint64(16), st[chunkstore.OpPrune].Failures)
	left, err := filepath.Glob(filepath.Join(dir, "status", ".tmp-*"))
	require.NoError(t, err)
	require.Empty(t, left, "temporary files are gone")

	// A damaged record: readers name it; the next run replaces it.
	p := filepath.Join(dir, "status", "check.json")
	require.NoError(t, os.WriteFile(p, []byte("{not json"), 0o644))
	_, err = chunkstore.ReadStatus(context.Background(), dir)
	require.ErrorContains(t, err, "check.json")
	require.NoError(t, chunkstore.RecordRun(t.Context(), dir, run(chunkstore.OpCheck, 0, time.Second, errors.New("3 problems"))))
	st, err = chunkstore.ReadStatus(context.Background(), dir)
	require.NoError(t, err)
	require.Equal(t, uint64(1), st[chunkstore.OpCheck].Failures)

	// Not a repository: refused, nothing created.
	notRepo := t.TempDir()
	err = chunkstore.RecordRun(t.Context(), notRepo, run(chunkstore.OpBackup, 0, time.Second, nil))
	require.ErrorIs(t, err, chunkstore.ErrNotRepo)
	require.NoDirExists(t, filepath.Join(notRepo, "status"))
	require.Error(t, chunkstore.RecordRun(t.Context(), dir, chunkstore.Run{Op: "export"}), "an unknown operation")
}

// TestRecordRecovery: wal-push records its failures, and only the first
// success after one: while nothing fails, a push writes nothing.
func TestRecordRecovery(t *testing.T) {
	dir := emptyRepo(t)
	now := time.Now()
	ok := chunkstore.Run{Op: chunkstore.OpWALPush, Start: now, End: now}
	p := filepath.Join(dir, "status", "wal-push.json")

	require.NoError(t, chunkstore.RecordRecovery(t.Context(), dir, ok))
	require.NoFileExists(t, p, "a success with no failure before it writes nothing")

	failed := ok
	failed.Err = errors.New("no space left on device")
	require.NoError(t, chunkstore.RecordRecovery(t.Context(), dir, failed))
	require.NoError(t, chunkstore.RecordRecovery(t.Context(), dir, failed))
	st, err := chunkstore.ReadStatus(context.Background(), dir)
	require.NoError(t, err)
	require.Equal(t, uint64(2), st[chunkstore.OpWALPush].Failures)
	require.False(t, st[chunkstore.OpWALPush].Last.OK)

	ok.End = now.Add(time.Minute)
	require.NoError(t, chunkstore.RecordRecovery(t.Context(), dir, ok))
	st, err = chunkstore.ReadStatus(context.Background(), dir)
	require.NoError(t, err)
	require.True(t, st[chunkstore.OpWALPush].Last.OK, "the first success after a failure is recorded")
	require.Equal(t, ok.End.UTC(), st[chunkstore.OpWALPush].LastSuccess)
	before, err := os.ReadFile(p)
	require.NoError(t, err)
	fi, err := os.Stat(p)
	require.NoError(t, err)

	ok.End = now.Add(2 * time.Minute)
	require.NoError(t, chunkstore.RecordRecovery(t.Context(), dir, ok))
	after, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, string(before), string(after), "later successes write nothing")
	fi2, err := os.Stat(p)
	require.NoError(t, err)
	require.True(t, os.SameFile(fi, fi2), "the file was not replaced")
}

// TestRecordRunKeepsOwner: root recording into a repository another user
// owns (a prune run as root where the archiver is postgres) gives that user
// the status directory, its lock and its records, so that the archiver can
// record its failures next.
func TestRecordRunKeepsOwner(t *testing.T) {
	testsupport.RequireRoot(t, "chown")
	const uid, gid = 12345, 23456
	dir := emptyRepo(t)
	require.NoError(t, filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		require.NoError(t, err)
		return os.Lchown(p, uid, gid)
	}))
	now := time.Now()
	require.NoError(t, chunkstore.RecordRun(t.Context(), dir, chunkstore.Run{Op: chunkstore.OpPrune, Start: now, End: now}))
	for _, p := range []string{"status", "status/.lock", "status/prune.json"} {
		fi, err := os.Stat(filepath.Join(dir, p))
		require.NoError(t, err)
		st := fi.Sys().(*syscall.Stat_t)
		require.Equal(t, [2]uint32{uid, gid}, [2]uint32{st.Uid, st.Gid}, "owner of %s", p)
	}
}

// setWALRange gives the restore point id of the repository in dir the WAL
// range of an online backup, as 'backup --from-server' writes it.
func setWALRange(t *testing.T, dir, id string, w chunkstore.WALRange) {
	t.Helper()
	p := filepath.Join(dir, "points", id+".json")
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	var rp map[string]any
	require.NoError(t, json.Unmarshal(b, &rp))
	rp["wal"] = w
	b, err = json.Marshal(rp)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(p, b, 0o644))
}

// TestReadHealth reads a repository as monitoring does: the newest restore
// point, the newest archived segment and when it came, how far behind the
// newest online backup's end the archive is, its coverage and gaps, the
// recorded runs, and the repository's size.
func TestReadHealth(t *testing.T) {
	ctx := t.Context()
	dir := emptyRepo(t)
	h, err := chunkstore.ReadHealth(ctx, dir)
	require.NoError(t, err)
	require.Zero(t, h.RestorePoints)
	require.Nil(t, h.Newest)
	require.Empty(t, h.WAL.Last)
	require.Empty(t, h.Ops)

	r := openRepo(t, dir)
	src := fakeDataDir(t)
	_, err = r.Backup(ctx, src, chunkstore.BackupOptions{})
	require.NoError(t, err)
	second, err := r.Backup(ctx, src, chunkstore.BackupOptions{})
	require.NoError(t, err)
	// The second backup ran online and ends 256 bytes into segment 5.
	setWALRange(t, dir, second.ID, chunkstore.WALRange{Timeline: 1, Start: "0/3000028", End: "0/5000100", SegmentSize: 16 << 20, EndTime: second.Time})
	segs := t.TempDir()
	push := func(name string, seed uint64) time.Time {
		t.Helper()
		_, err := r.PushWAL(ctx, walSegment(t, segs, name, seed))
		require.NoError(t, err)
		h, err := chunkstore.ReadHealth(ctx, dir)
		require.NoError(t, err)
		return h.WAL.Pushed
	}
	push("000000010000000000000003", 1)
	at4 := push("000000010000000000000004", 2)
	require.NoError(t, chunkstore.RecordRun(t.Context(), dir, chunkstore.Run{Op: chunkstore.OpCheck, Start: time.Now(), End: time.Now()}))

	h, err = chunkstore.ReadHealth(ctx, dir)
	require.NoError(t, err)
	require.Equal(t, 2, h.RestorePoints)
	require.Equal(t, second.ID, h.Newest.ID)
	require.Equal(t, "000000010000000000000004", h.WAL.Last)
	require.False(t, at4.IsZero())
	require.Equal(t, second.ID, h.WAL.Point.ID)
	require.Equal(t, int64(0x100), h.WAL.Behind, "the backup's end lies 256 bytes into segment 5, which is not archived")
	require.NotNil(t, h.WAL.Coverage)
	require.True(t, h.WAL.Coverage.To.IsZero(), "the archive lacks the segment the backup ends in")
	require.Contains(t, h.Ops, chunkstore.OpCheck)
	var files int64
	require.NoError(t, filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		require.NoError(t, err)
		if d.Type().IsRegular() {
			fi, err := d.Info()
			require.NoError(t, err)
			files += fi.Size()
		}
		return err
	}))
	require.Equal(t, files, h.Bytes)
	require.Greater(t, h.Bytes, int64(3<<20), "the backup's random 3 MiB")

	// Segment 5 and 7 archived, 6 missing: the archive reached the backup,
	// and has a gap after 5.
	push("000000010000000000000005", 3)
	at7 := push("000000010000000000000007", 4)
	h, err = chunkstore.ReadHealth(ctx, dir)
	require.NoError(t, err)
	require.Equal(t, "000000010000000000000007", h.WAL.Last)
	require.Equal(t, at7, h.WAL.Pushed)
	require.Zero(t, h.WAL.Behind)
	require.Equal(t, "000000010000000000000005", h.WAL.Coverage.LastSegment)
	require.Equal(t, "000000010000000000000005", h.WAL.Coverage.GapAfter)

	// 6 fills the gap; a history file of timeline 2 is not a segment.
	push("000000010000000000000006", 5)
	hist := filepath.Join(segs, "00000002.history")
	require.NoError(t, os.WriteFile(hist, []byte("1\t0/7000000\tpromoted\n"), 0o600))
	_, err = r.PushWAL(ctx, hist)
	require.NoError(t, err)
	h, err = chunkstore.ReadHealth(ctx, dir)
	require.NoError(t, err)
	require.Equal(t, "000000010000000000000007", h.WAL.Last)
	require.Empty(t, h.WAL.Coverage.GapAfter)
	require.Equal(t, at7, h.WAL.Coverage.To, "recoverable up to the last segment's push")

	_, err = chunkstore.ReadHealth(ctx, t.TempDir())
	require.ErrorIs(t, err, chunkstore.ErrNotRepo)
}
