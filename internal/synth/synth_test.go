package synth_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/synth"
)

func TestSynth(t *testing.T) {
	for _, n := range []int{1, 100, 4 << 10, 3<<20 + 7} {
		require.Len(t, synth.PgbenchRows(n), n)
		require.Len(t, synth.MD5Rows(n), n)
		require.Len(t, synth.MixedRows(n), n)
	}
	// Three parts pgbench rows (padding: spaces) to one part md5 text.
	m := synth.MixedRows(8 << 20)
	require.Equal(t, synth.PgbenchRows(3<<20), m[:3<<20])
	require.Equal(t, synth.MD5Rows(1<<20), m[3<<20:4<<20])
}

// Random is the same for the same seed, and differs between seeds.
func TestRandom(t *testing.T) {
	require.Equal(t, synth.Random(1, 1000), synth.Random(1, 1000))
	require.NotEqual(t, synth.Random(1, 1000), synth.Random(2, 1000))
	require.Len(t, synth.Random(3, 12345), 12345)
}
