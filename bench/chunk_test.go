package bench

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestChunkEngine(t *testing.T) {
	sc := &ChunkEngine{Size: 2 << 20}
	res, err := Run(context.Background(), sc, RunOptions{Reps: 2, Env: Env{Dir: t.TempDir()}})
	require.NoError(t, err)
	require.Equal(t, []string{"cdc", "cdc+blake3", "s2", "fast4", "fast1", "fastest", "default"}, res.Tools)
	require.Equal(t, int64(2<<20), res.Bytes)
	require.Len(t, res.Runs, 14)
	for _, r := range res.Runs {
		require.Positive(t, r.Wall, r.Tool)
		ratio, ok := r.Extra["ratio"]
		if r.Tool == "cdc" || r.Tool == "cdc+blake3" {
			require.False(t, ok, "%s does not compress", r.Tool)
			continue
		}
		// The mix compresses well at every level (pgbench's padding 90x,
		// md5 text 3x): a ratio near 1 means the codec was not applied.
		require.Greater(t, ratio, 3.0, r.Tool)
	}
	def, _ := res.ToolSummary("default", ExtraMetric("ratio"))
	s2, _ := res.ToolSummary("s2", ExtraMetric("ratio"))
	require.Greater(t, def.Median, s2.Median, "zstd default compresses more than S2")
}

func TestDescribeSizes(t *testing.T) {
	for _, tc := range []struct {
		sizes []int
		want  string
	}{
		{nil, "none"},
		{[]int{5}, "min 5 B, median 5, p90 5, max 5"},
		// Nearest rank: the 9th of 10, the 18th of 20.
		{[]int{10, 1, 9, 2, 8, 3, 7, 4, 6, 5}, "min 1 B, median 6, p90 9, max 10"},
		{[]int{20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, "min 1 B, median 11, p90 18, max 20"},
	} {
		require.Equal(t, tc.want, describeSizes(tc.sizes), "%v", tc.sizes)
	}
}

// TestChunkEngineDump runs the stages on a directory of files, each cut
// apart: the chunk count is the sum of the files'.
func TestChunkEngineDump(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, writeSmokeData(dir))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "empty.dat"), nil, 0o644))
	sc := &ChunkEngine{Dump: true, Data: dir}
	require.Equal(t, "chunk-dump", sc.Name())
	require.True(t, sc.standalone(), `"--scenario chunk" does not choose it`)
	res, err := Run(context.Background(), sc, RunOptions{Reps: 1, Env: Env{Dir: t.TempDir()}})
	require.NoError(t, err)
	size, _, err := treeSize(dir)
	require.NoError(t, err)
	require.Equal(t, size, res.Bytes)
	require.Contains(t, res.Notes["data"], ", 4 files", "the empty file left out")
	require.Regexp(t, `^min \d+ B, median \d+, p90 \d+, max \d+$`, res.Notes["chunk sizes"])
	def, ok := res.ToolSummary("default", ExtraMetric("ratio"))
	require.True(t, ok)
	require.Greater(t, def.Median, 3.0)
}
