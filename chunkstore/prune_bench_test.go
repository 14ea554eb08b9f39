package chunkstore_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/storetest"
)

// BenchmarkPrune20 measures forget --keep-last 10 then prune of a
// repository of 20 restore points: each a backup of a 64 MiB data
// directory (16 files of 3 MiB of pg_dump-like text and 1 MiB of random
// bytes) of which 2 files changed since the one before, each backup in a process of its own (its
// own packs). The repository is built once and copied for every run.
func BenchmarkPrune20(b *testing.B) {
	fixture := filepath.Join(b.TempDir(), "repo")
	src := b.TempDir()
	r := rand.New(rand.NewPCG(20, 20))
	write := func(i int) {
		p := filepath.Join(src, "base", "5", strconv.Itoa(16400+i))
		require.NoError(b, os.MkdirAll(filepath.Dir(p), 0o700))
		require.NoError(b, os.WriteFile(p, append(storetest.Text(r, 3<<20), storetest.RandomBytes(r, 1<<20)...), 0o600))
	}
	require.NoError(b, os.WriteFile(filepath.Join(src, "PG_VERSION"), []byte("15\n"), 0o600))
	require.NoError(b, os.MkdirAll(filepath.Join(src, "global"), 0o700))
	require.NoError(b, os.WriteFile(filepath.Join(src, "global", "pg_control"), make([]byte, 8192), 0o600))
	for i := range 16 {
		write(i)
	}
	var points []chunkstore.RestorePoint
	for k := range 20 {
		if k > 0 {
			write(r.IntN(16))
			write(r.IntN(16))
		}
		repo, err := chunkstore.OpenRepo(context.Background(), fixture, nil)
		require.NoError(b, err)
		rp, err := repo.Backup(b.Context(), src, chunkstore.BackupOptions{})
		require.NoError(b, err)
		points = append(points, *rp)
		require.NoError(b, repo.Close())
	}
	before := dirBytes(b, fixture)
	var st *chunkstore.PruneStats
	var forgetTime time.Duration
	for b.Loop() {
		b.StopTimer()
		dir := filepath.Join(b.TempDir(), "repo")
		require.NoError(b, os.CopyFS(dir, os.DirFS(fixture)))
		b.StartTimer()
		t0 := time.Now()
		ex, err := chunkstore.OpenRepoWith(context.Background(), dir, chunkstore.RepoOptions{Lock: chunkstore.LockExclusive})
		require.NoError(b, err)
		keep, forget, err := chunkstore.ForgetPolicy{KeepLast: 10}.Plan(points)
		require.NoError(b, err)
		require.Len(b, keep, 10)
		require.NoError(b, ex.Forget(forget))
		forgetTime += time.Since(t0)
		st, err = ex.Prune(b.Context(), false)
		require.NoError(b, err)
		require.NoError(b, ex.Close())
		b.StopTimer()
		b.ReportMetric(float64(dirBytes(b, dir))/1e6, "MB-after")
		b.StartTimer()
	}
	b.ReportMetric(float64(before)/1e6, "MB-before")
	b.ReportMetric(float64(st.BytesFreed)/1e6, "MB-freed")
	b.ReportMetric(float64(st.PacksDeleted+st.PacksRepacked), "packs-deleted+repacked")
	b.ReportMetric(forgetTime.Seconds()/float64(b.N), "forget-s/op")
}
