package mover

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/s3test"
)

// miniDataDir writes the smallest directory a backup takes for a data
// directory.
func miniDataDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(d, "global"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(d, "PG_VERSION"), []byte("15\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(d, "global", "pg_control"), make([]byte, 8192), 0o600))
	return d
}

// seriesValue returns the value of the series name{op} (op "" for none)
// that reg gathers, and whether there is one.
func seriesValue(t *testing.T, reg prometheus.Gatherer, name, op string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelValue(m, "op") != op {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue(), true
			}
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// TestRepoCollector collects a real repository's series: the newest
// restore point's time, a failed check and its count, a reading kept for
// CacheFor and no longer, and up 0 once the repository is gone.
func TestRepoCollector(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "repo")
	r, err := chunkstore.OpenRepo(context.Background(), dir, nil)
	require.NoError(t, err)
	defer r.Close()
	src := miniDataDir(t)
	rp, err := r.Backup(ctx, src, chunkstore.BackupOptions{})
	require.NoError(t, err)

	now := time.Unix(1_800_000_000, 0)
	c := NewRepoCollector(dir, RepoCollectorOptions{CacheFor: 5 * time.Second, Now: func() time.Time { return now }})
	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	require.Empty(t, problems, "the series follow Prometheus's naming rules")
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)

	v, ok := seriesValue(t, reg, "pgporter_repo_up", "")
	require.True(t, ok)
	require.Equal(t, 1.0, v)
	v, _ = seriesValue(t, reg, "pgporter_repo_last_backup_timestamp_seconds", "")
	require.Equal(t, float64(rp.Time.UnixNano())/1e9, v)
	v, _ = seriesValue(t, reg, "pgporter_repo_restore_points", "")
	require.Equal(t, 1.0, v)
	v, _ = seriesValue(t, reg, "pgporter_repo_failures_total", "check")
	require.Zero(t, v)
	_, ok = seriesValue(t, reg, "pgporter_repo_last_run_success", "check")
	require.False(t, ok, "no check recorded yet")
	_, ok = seriesValue(t, reg, "pgporter_repo_wal_archive_behind_backup_bytes", "")
	require.False(t, ok, "no online backup, no archive")
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			require.Equal(t, dir, labelValue(m, "repo"), mf.GetName())
		}
	}

	// A failed check and a second backup: within CacheFor, the reading
	// before them answers.
	end := time.Now()
	require.NoError(t, chunkstore.RecordRun(t.Context(), dir, chunkstore.Run{Op: chunkstore.OpCheck, Start: end.Add(-time.Second), End: end, Err: errors.New("the repository has 2 problems")}))
	second, err := r.Backup(ctx, src, chunkstore.BackupOptions{})
	require.NoError(t, err)
	now = now.Add(4 * time.Second)
	v, _ = seriesValue(t, reg, "pgporter_repo_restore_points", "")
	require.Equal(t, 1.0, v, "cached")
	now = now.Add(time.Second)
	v, _ = seriesValue(t, reg, "pgporter_repo_restore_points", "")
	require.Equal(t, 2.0, v, "read again after CacheFor")
	v, _ = seriesValue(t, reg, "pgporter_repo_last_backup_timestamp_seconds", "")
	require.Equal(t, float64(second.Time.UnixNano())/1e9, v)
	v, ok = seriesValue(t, reg, "pgporter_repo_last_run_success", "check")
	require.True(t, ok)
	require.Zero(t, v)
	v, _ = seriesValue(t, reg, "pgporter_repo_failures_total", "check")
	require.Equal(t, 1.0, v)
	v, _ = seriesValue(t, reg, "pgporter_repo_last_failure_timestamp_seconds", "check")
	require.Equal(t, float64(end.UnixNano())/1e9, v)
	v, _ = seriesValue(t, reg, "pgporter_repo_last_run_duration_seconds", "check")
	require.InDelta(t, 1.0, v, 1e-9)
	require.NoError(t, c.Err())

	// The repository gone: up 0 and nothing else.
	require.NoError(t, os.Rename(dir, dir+".moved"))
	now = now.Add(time.Minute)
	mfs, err = reg.Gather()
	require.NoError(t, err)
	require.Len(t, mfs, 1)
	require.Equal(t, "pgporter_repo_up", mfs[0].GetName())
	require.Zero(t, mfs[0].GetMetric()[0].GetGauge().GetValue())
	require.ErrorIs(t, c.Err(), chunkstore.ErrNotRepo)
}

// TestRepoCollectorBucket: size_bytes of a repository in a bucket is the
// sum of the sizes of the objects under its prefix (it was 0).
func TestRepoCollectorBucket(t *testing.T) {
	srv := s3test.Shared(t)
	srv.SetEnv(t)
	ctx := t.Context()
	bucket := srv.NewBucket(t)
	url := "s3://" + bucket + "/repo"
	r, err := chunkstore.OpenRepo(ctx, url, nil)
	require.NoError(t, err)
	_, err = r.Backup(ctx, miniDataDir(t), chunkstore.BackupOptions{})
	require.NoError(t, err)
	require.NoError(t, r.Close())

	var sum int64
	c := srv.Client(t, srv.Endpoint)
	pages := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: &bucket, Prefix: aws.String("repo/")})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		require.NoError(t, err)
		for _, o := range page.Contents {
			sum += aws.ToInt64(o.Size)
		}
	}
	require.Positive(t, sum)

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewRepoCollector(url, RepoCollectorOptions{}))
	v, ok := seriesValue(t, reg, "pgporter_repo_up", "")
	require.True(t, ok)
	require.Equal(t, 1.0, v)
	v, _ = seriesValue(t, reg, "pgporter_repo_size_bytes", "")
	require.Equal(t, float64(sum), v)
}
