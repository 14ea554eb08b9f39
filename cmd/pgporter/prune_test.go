package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
)

// TestPruneWait: a prune meets the repository in use. Without --wait it
// fails at once with the conflict code, naming the holder; with --wait it
// waits for the holder to let go, then prunes.
func TestPruneWait(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "repo")
	held, err := chunkstore.OpenRepo(context.Background(), repo, nil) // a shared lock, as an export's
	require.NoError(t, err)
	released := false
	t.Cleanup(func() {
		if !released {
			held.Close()
		}
	})

	start := time.Now()
	code, _, errs := runCLI(t, "prune", "--repo", repo)
	require.Equal(t, exitConflict, code, errs)
	require.Contains(t, errs, "shared lock")
	require.Less(t, time.Since(start), 10*time.Second, "without --wait it does not wait")

	p := startProc(t, "prune", "--repo", repo, "--wait", "1m")
	deadline := time.Now().Add(waitTimeout)
	for !strings.Contains(p.stderr.String(), "waiting for the repository") {
		select {
		case <-p.done:
			t.Fatalf("prune --wait ended without waiting: %v\n%s", p.err, p.stderr.String())
		default:
		}
		require.True(t, time.Now().Before(deadline), "prune --wait does not say it waits:\n%s", p.stderr.String())
		time.Sleep(10 * time.Millisecond) // polling another process's output
	}
	require.NoError(t, held.Close())
	released = true
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		t.Fatalf("prune --wait did not end once the repository was free:\n%s", p.stderr.String())
	}
	require.NoError(t, p.err, p.stderr.String())
}
