package bench

import (
	"context"
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
