package chunkstore_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/synth"
)

// smallParams cut often, so that tests see many chunks in little data.
var smallParams = chunk.Params{Algorithm: chunk.AlgorithmGearV1, Min: 256, Avg: 1024, Max: 4096}

// NewAnalyzer refuses the parameters Validate refuses.
func TestAnalyzerValidates(t *testing.T) {
	_, err := chunkstore.NewAnalyzer(chunk.Params{Min: 100, Avg: 50, Max: 10}, chunk.LevelNone)
	require.Error(t, err)
}

func TestAnalyzerDedupe(t *testing.T) {
	// Two dumps of the same table a day apart: the second has a few rows
	// changed in the middle and some appended.
	day1 := synth.Random(41, 4<<20)
	day2 := slices.Concat(day1[:1<<20], synth.Random(42, 3000), day1[1<<20+3000:], synth.Random(43, 100<<10))

	a, err := chunkstore.NewAnalyzer(smallParams, chunk.LevelFastest)
	require.NoError(t, err)
	ctx := t.Context()
	require.NoError(t, a.Add(ctx, bytes.NewReader(day1)))
	require.NoError(t, a.Add(ctx, iotest.HalfReader(bytes.NewReader(day2))))
	st := a.Stats()

	require.Equal(t, 2, st.Files)
	require.Equal(t, int64(len(day1)+len(day2)), st.Bytes)
	require.Equal(t, smallParams, st.Params)
	require.Equal(t, "fastest", st.Level)
	require.Less(t, st.UniqueChunks, st.Chunks)
	require.Less(t, st.UniqueBytes, st.Bytes)
	t.Logf("dedupe %.3f, %d of %d chunks unique", st.DedupeRatio(), st.UniqueChunks, st.Chunks)
	require.Greater(t, st.DedupeRatio(), 1.8, "the second file should cost little more than its changes")
	// Random data does not compress: stored as is.
	require.Equal(t, st.UniqueBytes, st.StoredBytes)
	require.InDelta(t, 1.0, st.CompressRatio(), 1e-9)

	s := st.Sizes
	require.True(t, s.Min <= s.P10 && s.P10 <= s.P50 && s.P50 <= s.P90 && s.P90 <= s.Max, "%+v", s)
	require.LessOrEqual(t, s.Max, smallParams.Max)
	require.Equal(t, int(st.Bytes/int64(st.Chunks)), s.Mean)
	require.Positive(t, st.Elapsed)
	require.Positive(t, st.MBps())
	require.Contains(t, st.String(), "dedupe ratio:")

	// Stats is a snapshot: adding more later does not change it.
	require.NoError(t, a.Add(ctx, bytes.NewReader(day1)))
	require.Equal(t, 2, st.Files)
	require.Equal(t, 3, a.Stats().Files)
	require.Equal(t, st.UniqueChunks, a.Stats().UniqueChunks, "a third copy adds no unique chunks")
}

func TestAnalyzerCompression(t *testing.T) {
	a, err := chunkstore.NewAnalyzer(chunk.Params{}, chunk.LevelDefault)
	require.NoError(t, err)
	require.NoError(t, a.Add(t.Context(), bytes.NewReader(synth.PgbenchRows(2<<20))))
	st := a.Stats()
	require.Equal(t, chunk.DefaultParams, st.Params)
	require.Greater(t, st.CompressRatio(), 2.0)
	require.InDelta(t, 1.0, st.DedupeRatio(), 0.2)
}

func TestAnalyzerEmpty(t *testing.T) {
	a, err := chunkstore.NewAnalyzer(smallParams, chunk.LevelNone)
	require.NoError(t, err)
	st := a.Stats()
	require.Zero(t, st.Files)
	require.Equal(t, 1.0, st.DedupeRatio())
	require.Equal(t, 1.0, st.CompressRatio())
	require.Zero(t, st.MBps())

	require.NoError(t, a.Add(t.Context(), bytes.NewReader(nil)))
	st = a.Stats()
	require.Equal(t, 1, st.Files)
	require.Zero(t, st.Chunks)
	require.Equal(t, chunkstore.SizeSummary{}, st.Sizes)
}

func TestAnalyzerErrors(t *testing.T) {
	a, err := chunkstore.NewAnalyzer(smallParams, chunk.LevelNone)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.ErrorIs(t, a.Add(ctx, bytes.NewReader(synth.Random(44, 1<<20))), context.Canceled)

	boom := errors.New("disk on fire")
	require.ErrorIs(t, a.Add(t.Context(), iotest.ErrReader(boom)), boom)
}
