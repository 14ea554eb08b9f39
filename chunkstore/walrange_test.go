package chunkstore_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
)

// TestWALCoverageTimelines: after a failover, the archive holds timeline 1
// up to the switch, the history file of timeline 2, and timeline 2 from
// the switch on. A backup of timeline 1 recovers through both with the
// latest timeline, and only through timeline 1 with its own; a backup that
// ends after the switch cannot follow timeline 2; a timeline that does not
// descend from the backup's is named as such; a tampered history is
// refused.
func TestWALCoverageTimelines(t *testing.T) {
	repoDir, src := t.TempDir(), t.TempDir()
	repo, err := chunkstore.OpenRepo(context.Background(), repoDir, nil)
	require.NoError(t, err)
	defer repo.Close()
	push := func(name, content string) {
		t.Helper()
		p := filepath.Join(src, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		_, err := repo.PushWAL(t.Context(), p)
		require.NoError(t, err)
	}
	// 16 MiB segments: segment 3 holds 0/3000000 to 0/3FFFFFF. The switch
	// to timeline 2 is in segment 5: timeline 1's own segment 5 is a
	// .partial, and timeline 2 starts with a copy of it.
	for _, name := range []string{"000000010000000000000003", "000000010000000000000004", "000000010000000000000005.partial",
		"000000020000000000000005", "000000020000000000000006"} {
		push(name, "wal "+name)
	}
	push("00000002.history", "1\t0/5000A28\tno recovery target specified\n")
	rp := &chunkstore.RestorePoint{WAL: &chunkstore.WALRange{Timeline: 1, Start: "0/3000028", End: "0/3000100", SegmentSize: 16 << 20}}

	cov := func(rp *chunkstore.RestorePoint, target uint32) *chunkstore.Coverage {
		t.Helper()
		c, err := chunkstore.WALCoverage(context.Background(), repoDir, rp, target)
		require.NoError(t, err)
		return c
	}
	c := cov(rp, chunkstore.TimelineLatest)
	require.Equal(t, "000000020000000000000006", c.LastSegment)
	require.Equal(t, uint32(2), c.Timeline)
	require.Empty(t, c.Problem)
	require.Empty(t, c.GapAfter)
	require.False(t, c.To.IsZero())

	c = cov(rp, 1) // recovery_target_timeline=current
	require.Equal(t, "000000010000000000000004", c.LastSegment, "the .partial is not a segment recovery reads")
	require.Equal(t, uint32(1), c.Timeline)

	// A later segment past a missing one is a gap on the path.
	push("000000020000000000000008", "wal 8")
	c = cov(rp, chunkstore.TimelineLatest)
	require.Equal(t, "000000020000000000000006", c.GapAfter)
	// Timeline 1's segments past the switch are not on timeline 2's path.
	push("000000010000000000000007", "the old primary went on")
	require.Equal(t, "000000020000000000000006", cov(rp, chunkstore.TimelineLatest).LastSegment)
	// With its own timeline, segment 5 of timeline 1 is missing (only its
	// .partial is there), and 7 lies past the gap.
	c = cov(rp, 1)
	require.Equal(t, "000000010000000000000004", c.LastSegment)
	require.Equal(t, "000000010000000000000004", c.GapAfter)

	// A backup that ended after the switch cannot take timeline 2.
	late := &chunkstore.RestorePoint{WAL: &chunkstore.WALRange{Timeline: 1, Start: "0/5000028", End: "0/6000100", SegmentSize: 16 << 20}}
	c = cov(late, chunkstore.TimelineLatest)
	require.Contains(t, c.Problem, "branched from the backup's timeline 1 at 0/5000A28, before the backup's end")
	require.True(t, c.To.IsZero())
	// Timeline 3 has no history: it does not descend from timeline 1.
	require.Contains(t, cov(rp, 3).Problem, "timeline 3 does not descend from the backup's timeline 1")

	// A history whose text is not its content is refused.
	rec := filepath.Join(repoDir, "wal", "00000002", "00000002.history.json")
	b, err := os.ReadFile(rec)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	require.Equal(t, "1\t0/5000A28\tno recovery target specified\n", m["history"])
	m["history"] = "1\t0/7000000\tno recovery target specified\n"
	b, err = json.Marshal(m)
	require.NoError(t, err)
	require.NoError(t, os.Chmod(rec, 0o644))
	require.NoError(t, os.WriteFile(rec, b, 0o644))
	_, err = chunkstore.WALCoverage(context.Background(), repoDir, rp, chunkstore.TimelineLatest)
	require.ErrorContains(t, err, "does not match its chunks")
}
