package staging

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

// BenchmarkDumpSplit dumps a pgbench database (PGPORTER_BENCH_SCALE, default
// 20) from an Instance with pg_dump alone (-j2) and with the big tables'
// data in parallel ranges (2 connections); b.SetBytes is the dump's size.
//
//	go test -run '^$' -bench DumpSplit -benchtime 3x ./staging/
func BenchmarkDumpSplit(b *testing.B) {
	testsupport.RequirePG(b)
	scale := 20
	if s, err := strconv.Atoi(os.Getenv("PGPORTER_BENCH_SCALE")); err == nil && s > 0 {
		scale = s
	}
	c := testsupport.NewCluster(b, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "s3cret"})
	c.CreateDB(b, "bench")
	c.PgBench(b, "bench", scale)
	c.Stop(b)
	dataDir, runDir := copyDataDir(b, c.DataDir)
	ctx := context.Background()
	in, err := StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir, Throwaway: true})
	require.NoError(b, err)
	b.Cleanup(func() { in.Stop(context.Background()) })

	for _, bc := range []struct {
		name  string
		split int64
	}{{"pg_dump", 0}, {"split", 64 << 20}} {
		b.Run(bc.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				dir := filepath.Join(b.TempDir(), "d")
				res, err := in.Dump(ctx, DumpOptions{DB: "bench", User: "postgres", Password: "s3cret", Dir: dir, Jobs: 2, SplitTableBytes: bc.split})
				require.NoError(b, err)
				b.SetBytes(res.Bytes)
				require.NoError(b, os.RemoveAll(dir))
			}
		})
	}
}
