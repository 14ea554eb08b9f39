package mover

import (
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/stretchr/testify/require"
)

// window feeds one adaptation window of observations and closes it.
func window(c *levelController, cpu, wait time.Duration, wire int) {
	c.mu.Lock()
	c.windowEnd = time.Now().Add(-time.Millisecond) // the next observation closes it
	c.mu.Unlock()
	c.observe(cpu, wait, wire)
}

func TestLevelControllerAdapts(t *testing.T) {
	c, err := newLevelController("auto")
	require.NoError(t, err)
	require.Equal(t, chunkstore.LevelFastest, c.current())

	// A slow link (writes wait, few bytes go out): compress harder, up to the cap.
	for range 5 {
		window(c, 100*time.Millisecond, 900*time.Millisecond, 1<<20)
	}
	require.Equal(t, chunkstore.LevelBetter, c.current())

	// Writes that hardly wait: the CPU is the bottleneck, step back down to
	// the floor, never to no compression.
	for range 5 {
		window(c, 900*time.Millisecond, 10*time.Millisecond, 1<<20)
	}
	require.Equal(t, chunkstore.LevelFastest, c.current())

	// Writes that wait on a fast link (loopback, QUIC short of CPU) do not
	// make it compress harder.
	for range 5 {
		window(c, 100*time.Millisecond, 900*time.Millisecond, 200<<20)
	}
	require.Equal(t, chunkstore.LevelFastest, c.current())
}

func TestLevelControllerFixed(t *testing.T) {
	c, err := newLevelController("none")
	require.NoError(t, err)
	for range 3 {
		window(c, 0, time.Second, 1)
	}
	require.Equal(t, chunkstore.LevelNone, c.current())
	_, err = newLevelController("fast-ish")
	require.Error(t, err)
}
