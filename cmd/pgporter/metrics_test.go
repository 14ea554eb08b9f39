package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// promFamilies parses Prometheus text, as node_exporter's textfile
// collector does, failing the test on anything malformed.
func promFamilies(t *testing.T, text []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(text))
	require.NoError(t, err, "not well-formed:\n%s", text)
	return mfs
}

// promValue returns the value of the series name whose labels include
// those given (as "k=v"), and whether there is one.
func promValue(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
outer:
	for _, m := range mf.GetMetric() {
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue outer
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		default:
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// textfileMetrics runs 'pgporter metrics --repo repo --textfile F' and
// returns the parsed file, checking it is well-formed and alone (no
// temporary file left beside it) and readable by node_exporter's user.
func textfileMetrics(t *testing.T, repo string, wantCode int) map[string]*dto.MetricFamily {
	t.Helper()
	dir := t.TempDir()
	f := filepath.Join(dir, "pgporter.prom")
	code, out, errs := runCLI(t, "metrics", "--repo", repo, "--textfile", f)
	require.Equal(t, wantCode, code, errs)
	require.Empty(t, out, "--textfile writes nothing on stdout")
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, ents, 1, "a temporary file was left: %v", ents)
	fi, err := os.Stat(f)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
	b, err := os.ReadFile(f)
	require.NoError(t, err)
	return promFamilies(t, b)
}

// TestMetricsCLI runs backup, check, forget and prune on a real repository
// and reads their outcome back from 'pgporter metrics': the last backup's
// time is its restore point's, a check that finds damage sets the check's
// result to 0 and counts a failure each time, dry runs and usage mistakes
// record nothing, and stdout and the textfile are well-formed Prometheus
// text.
func TestMetricsCLI(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "repo")
	src, _ := fakeDataDir(t)
	code, out, errs := runCLI(t, "backup", "--repo", repo, "--pgdata", src)
	require.Equal(t, 0, code, errs)
	first := lastLine(out)
	code, out, errs = runCLI(t, "backup", "--repo", repo, "--pgdata", src)
	require.Equal(t, 0, code, errs)
	second := lastLine(out)
	rps, err := chunkstore.ListRepo(context.Background(), repo)
	require.NoError(t, err)
	require.Len(t, rps, 2)
	require.Equal(t, second, rps[1].ID)

	mfs := textfileMetrics(t, repo, 0)
	v, ok := promValue(mfs, "pgporter_repo_last_backup_timestamp_seconds", "repo="+repo)
	require.True(t, ok, "series carry the repository's directory as label repo")
	require.Equal(t, float64(rps[1].Time.UnixNano())/1e9, v, "the newest restore point's time")
	v, _ = promValue(mfs, "pgporter_repo_restore_points")
	require.Equal(t, 2.0, v)
	v, _ = promValue(mfs, "pgporter_repo_last_run_success", "op=backup")
	require.Equal(t, 1.0, v)
	v, _ = promValue(mfs, "pgporter_repo_up")
	require.Equal(t, 1.0, v)
	size, _ := promValue(mfs, "pgporter_repo_size_bytes")
	require.Greater(t, size, float64(3<<20), "the data directory's random 3 MiB")
	_, ok = promValue(mfs, "pgporter_repo_last_run_success", "op=check")
	require.False(t, ok, "no check yet")

	// Without --textfile: the same series on stdout.
	code, out, errs = runCLI(t, "metrics", "--repo", repo)
	require.Equal(t, 0, code, errs)
	v, _ = promValue(promFamilies(t, []byte(out)), "pgporter_repo_restore_points")
	require.Equal(t, 2.0, v)

	// A sound check, then damage: each failed check counts.
	code, _, errs = runCLI(t, "check", "--repo", repo)
	require.Equal(t, 0, code, errs)
	v, _ = promValue(textfileMetrics(t, repo, 0), "pgporter_repo_last_run_success", "op=check")
	require.Equal(t, 1.0, v)
	packs, err := filepath.Glob(filepath.Join(repo, "chunks", "packs", "*.pack"))
	require.NoError(t, err)
	require.NotEmpty(t, packs)
	for _, p := range packs {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		require.NoError(t, os.Truncate(p, fi.Size()/2))
	}
	for i := 1; i <= 2; i++ {
		code, _, _ = runCLI(t, "check", "--repo", repo)
		require.Equal(t, exitVerification, code)
		mfs = textfileMetrics(t, repo, 0)
		v, _ = promValue(mfs, "pgporter_repo_last_run_success", "op=check")
		require.Equal(t, 0.0, v, "the last check failed")
		v, _ = promValue(mfs, "pgporter_repo_failures_total", "op=check")
		require.Equal(t, float64(i), v, "failed checks counted")
	}
	last, _ := promValue(mfs, "pgporter_repo_last_failure_timestamp_seconds", "op=check")
	require.InDelta(t, float64(time.Now().Unix()), last, 60)
	ok1, _ := promValue(mfs, "pgporter_repo_last_success_timestamp_seconds", "op=check")
	require.Less(t, ok1, last, "the sound check's success stays, before the failures")
	v, _ = promValue(mfs, "pgporter_repo_failures_total", "op=check-read-data")
	require.Zero(t, v, "a check without --read-data is not a --read-data check")
	st, err := chunkstore.ReadStatus(context.Background(), repo)
	require.NoError(t, err)
	require.Contains(t, st[chunkstore.OpCheck].LastError, "problems")

	// Dry runs and usage mistakes are not runs.
	code, _, errs = runCLI(t, "forget", "--repo", repo, "--keep-last", "1", "--dry-run")
	require.Equal(t, 0, code, errs)
	code, _, _ = runCLI(t, "forget", "--repo", repo)
	require.Equal(t, exitUsage, code)
	code, _, errs = runCLI(t, "prune", "--repo", repo, "--dry-run")
	require.NotEqual(t, exitUsage, code, errs)
	mfs = textfileMetrics(t, repo, 0)
	for _, op := range []string{"forget", "prune"} {
		_, ok = promValue(mfs, "pgporter_repo_last_run_timestamp_seconds", "op="+op)
		require.False(t, ok, "%s: nothing recorded", op)
	}
	code, _, errs = runCLI(t, "forget", "--repo", repo, first)
	require.Equal(t, 0, code, errs)
	v, _ = promValue(textfileMetrics(t, repo, 0), "pgporter_repo_last_run_success", "op=forget")
	require.Equal(t, 1.0, v)
	v, _ = promValue(textfileMetrics(t, repo, 0), "pgporter_repo_restore_points")
	require.Equal(t, 1.0, v)

	// Not a repository: up 0 in the file all the same, and exit code 8.
	mfs = textfileMetrics(t, filepath.Join(t.TempDir(), "nope"), exitNotFound)
	v, ok = promValue(mfs, "pgporter_repo_up")
	require.True(t, ok)
	require.Zero(t, v)
	require.Len(t, mfs, 1)

	code, _, errs = runCLI(t, "metrics", "--repo", repo, "--textfile", filepath.Join(t.TempDir(), "pgporter.txt"))
	require.Equal(t, exitUsage, code)
	require.Contains(t, errs, "*.prom")
	code, _, _ = runCLI(t, "metrics")
	require.Equal(t, exitUsage, code)
}

// TestWALPushRecordsFailures: wal-push records each failure, and the first
// success after them, and writes nothing while every push succeeds.
func TestWALPushRecordsFailures(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "repo")
	segs := t.TempDir()
	seg := func(name, content string) string {
		p := filepath.Join(segs, name)
		require.NoError(t, os.WriteFile(p, bytes.Repeat([]byte(content), 1<<16), 0o600))
		return p
	}
	status := filepath.Join(repo, "status", "wal-push.json")
	code, _, errs := runCLI(t, "wal-push", "--repo", repo, seg("000000010000000000000001", "a"))
	require.Equal(t, 0, code, errs)
	require.NoFileExists(t, status, "a success writes nothing")

	// Another file under a name archived already: refused, and recorded.
	other := filepath.Join(t.TempDir(), "000000010000000000000001")
	require.NoError(t, os.WriteFile(other, []byte("something else"), 0o600))
	for range 2 {
		code, _, _ = runCLI(t, "wal-push", "--repo", repo, other)
		require.Equal(t, exitConflict, code)
	}
	code, _, _ = runCLI(t, "wal-push", "--repo", repo, filepath.Join(segs, "000000010000000000000009"))
	require.NotEqual(t, 0, code, "a segment that is not there")
	mfs := textfileMetrics(t, repo, 0)
	v, _ := promValue(mfs, "pgporter_repo_failures_total", "op=wal-push")
	require.Equal(t, 3.0, v)
	v, _ = promValue(mfs, "pgporter_repo_last_run_success", "op=wal-push")
	require.Zero(t, v)
	code, _, _ = runCLI(t, "wal-push", "--repo", repo, filepath.Join(segs, "not-a-wal-name"))
	require.Equal(t, exitUsage, code)
	v, _ = promValue(textfileMetrics(t, repo, 0), "pgporter_repo_failures_total", "op=wal-push")
	require.Equal(t, 3.0, v, "a usage mistake is not a run")

	code, _, errs = runCLI(t, "wal-push", "--repo", repo, seg("000000010000000000000002", "b"))
	require.Equal(t, 0, code, errs)
	mfs = textfileMetrics(t, repo, 0)
	v, _ = promValue(mfs, "pgporter_repo_last_run_success", "op=wal-push")
	require.Equal(t, 1.0, v, "the first success after failures is recorded")
	v, _ = promValue(mfs, "pgporter_repo_failures_total", "op=wal-push")
	require.Equal(t, 3.0, v)
	pushed, _ := promValue(mfs, "pgporter_repo_wal_last_archived_timestamp_seconds")
	require.InDelta(t, float64(time.Now().Unix()), pushed, 60)
	before, err := os.Stat(status)
	require.NoError(t, err)
	code, _, errs = runCLI(t, "wal-push", "--repo", repo, seg("000000010000000000000003", "c"))
	require.Equal(t, 0, code, errs)
	after, err := os.Stat(status)
	require.NoError(t, err)
	require.True(t, os.SameFile(before, after), "later successes write nothing")
}

// TestMoverServeRepoMetrics: 'mover serve --repo' serves the repository's
// series beside its own on --metrics.
func TestMoverServeRepoMetrics(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "repo")
	src, _ := fakeDataDir(t)
	code, _, errs := runCLI(t, "backup", "--repo", repo, "--pgdata", src)
	require.Equal(t, 0, code, errs)
	rps, err := chunkstore.ListRepo(context.Background(), repo)
	require.NoError(t, err)
	home := t.TempDir()
	code, _, errs = runCLI(t, "mover", "init", "--home", home)
	require.Equal(t, 0, code, errs)
	sock := filepath.Join(t.TempDir(), "metrics.sock")
	srv := startProc(t, "--home", home, "mover", "serve", "--listen", "127.0.0.1:0", "--repo", repo, "--metrics", "unix:"+sock)
	srv.waitListening(t)
	mfs := promFamilies(t, unixMetrics(t, sock))
	v, ok := promValue(mfs, "pgporter_repo_last_backup_timestamp_seconds", "repo="+repo)
	require.True(t, ok)
	require.Equal(t, float64(rps[0].Time.UnixNano())/1e9, v)
	v, _ = promValue(mfs, "pgporter_repo_up", "repo="+repo)
	require.Equal(t, 1.0, v)
	_, ok = promValue(mfs, "pgporter_mover_transfers_active")
	require.True(t, ok, "the mover's own series are still there")
	require.NoError(t, srv.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, 0, srv.wait(t), srv.stderr.String())
}

// TestArchiverFailureRecorded: the real archiver (a server's
// archive_command, run as postgres) meets a conflicting file in the
// archive; its failure is recorded in the repository, owned by the
// repository's owner, and once the conflict is gone its next success
// clears the result.
func TestArchiverFailureRecorded(t *testing.T) {
	c, repo, pgUID := archivingCluster(t, testsupport.ClusterOptions{})
	// Root archives a file of another content under the name the server
	// will push next.
	next := strings.TrimSpace(c.Query(t, "postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())"))
	planted := filepath.Join(t.TempDir(), next)
	require.NoError(t, os.WriteFile(planted, []byte("not this server's WAL"), 0o600))
	code, _, errs := runCLI(t, "wal-push", "--repo", repo, planted)
	require.Equal(t, 0, code, errs)
	c.Exec(t, "postgres", "SELECT pg_switch_wal()")

	var st *chunkstore.OpStatus
	require.Eventually(t, func() bool {
		all, err := chunkstore.ReadStatus(context.Background(), repo)
		require.NoError(t, err)
		st = all[chunkstore.OpWALPush]
		return st != nil
	}, time.Minute, 50*time.Millisecond, "no failure recorded: %s", c.LogTail(4096))
	require.False(t, st.Last.OK)
	require.Contains(t, st.LastError, next)
	require.Contains(t, st.LastError, "archived already")
	for _, p := range []string{"status", "status/wal-push.json", "status/.lock"} {
		fi, err := os.Stat(filepath.Join(repo, p))
		require.NoError(t, err)
		require.Equal(t, pgUID, fi.Sys().(*syscall.Stat_t).Uid, "%s keeps the repository's owner", p)
	}
	mfs := textfileMetrics(t, repo, 0)
	v, _ := promValue(mfs, "pgporter_repo_last_run_success", "op=wal-push")
	require.Zero(t, v)
	v, _ = promValue(mfs, "pgporter_repo_failures_total", "op=wal-push")
	require.GreaterOrEqual(t, v, 1.0)

	// The conflict removed, the archiver's next try succeeds and says so.
	require.NoError(t, os.Remove(filepath.Join(repo, "wal", next[:16], next+".json")))
	// A new segment to archive wakes the archiver from its wait.
	c.Exec(t, "postgres", "CREATE TABLE wake()")
	c.Exec(t, "postgres", "SELECT pg_switch_wal()")
	require.Eventually(t, func() bool {
		all, err := chunkstore.ReadStatus(context.Background(), repo)
		require.NoError(t, err)
		return all[chunkstore.OpWALPush].Last.OK
	}, 2*time.Minute, 100*time.Millisecond, "the archiver did not recover: %s", c.LogTail(4096))
	v, _ = promValue(textfileMetrics(t, repo, 0), "pgporter_repo_last_run_success", "op=wal-push")
	require.Equal(t, 1.0, v)
}
