package orchestrator

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/staging"
)

type fakeChunks struct{}

func (fakeChunks) Get(_ context.Context, _ chunk.ID, dst []byte) ([]byte, error) {
	return dst, nil
}

type fakeRemoteChunks struct{ fakeChunks }

func (fakeRemoteChunks) RTT() time.Duration { return 20 * time.Millisecond }

// Watching a store for corruption keeps its latency visible to the mount,
// which reads ahead by it. Guards an export through --repo-peer reading
// ahead as a local store does (step 5.2 of docs/design/0005).
func TestCorruptWatchKeepsLatency(t *testing.T) {
	var w corruptWatch
	lr, ok := w.wrap(fakeRemoteChunks{}).(staging.LatencyReader)
	require.True(t, ok, "a remote store stays a LatencyReader")
	require.Equal(t, 20*time.Millisecond, lr.RTT())
	_, ok = w.wrap(fakeChunks{}).(staging.LatencyReader)
	require.False(t, ok, "a local store does not become one")
}
