package mover

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// window feeds one adaptation window of observations and closes it.
func window(c *levelController, cpu, wait time.Duration, wire int) {
	c.mu.Lock()
	c.windowEnd = time.Now().Add(-time.Millisecond) // the next observation closes it
	l := c.level
	c.mu.Unlock()
	c.observe(l, cpu, wait, wire)
}

func TestLevelStep(t *testing.T) {
	const fast = 200e6
	for _, tc := range []struct {
		name            string
		level           chunk.Level
		wait, idle, bps float64
		want            chunk.Level
	}{
		{"CPUs busy: compress less", chunk.LevelFastest, 0.1, 0.05, fast, -1},
		{"CPUs busy though writes wait (QUIC short of CPU)", chunk.LevelDefault, 0.9, 0.1, 20e6, -1},
		{"writes wait, CPU idle: the link limits", chunk.LevelFastest, 0.9, 0.6, 20e6, +1},
		{"writes wait, CPU idle, fast link too", chunk.LevelFast4, 0.9, 0.6, fast, +1},
		{"writes wait, CPU half busy: stay", chunk.LevelFastest, 0.9, 0.3, 20e6, 0},
		{"no waits, CPU to spare, above fastest: back down", chunk.LevelBetter, 0.05, 0.8, fast, -1},
		{"no waits, CPU to spare, at fastest: stay", chunk.LevelFastest, 0.05, 0.8, fast, 0},
		{"no waits, CPU to spare, below fastest: stay", chunk.LevelFast1, 0.05, 0.8, fast, 0},
		{"unknown CPU, slow link waits", chunk.LevelFastest, 0.9, -1, 20e6, +1},
		{"unknown CPU, fast link waits: stay", chunk.LevelFastest, 0.9, -1, fast, 0},
		{"unknown CPU, no waits", chunk.LevelDefault, 0.05, -1, fast, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, step(tc.level, tc.wait, tc.idle, tc.bps))
		})
	}
}

// statFile writes a /proc/stat-like file for cpuIdle with the given busy and
// idle jiffies on every CPU of this process's affinity mask.
func statFile(t *testing.T, path string, c *cpuIdle, busy, idle uint64) {
	b := []byte("cpu  1 2 3 4 5 6 7 8 9 10\n")
	for name := range c.cpus {
		// user nice system idle iowait irq softirq steal guest guest_nice
		b = append(b, name+" "+strconv.FormatUint(busy, 10)+" 0 0 "+strconv.FormatUint(idle, 10)+" 0 0 0 0 "+strconv.FormatUint(busy, 10)+" 0\n"...)
	}
	require.NoError(t, os.WriteFile(path, b, 0o644))
}

func TestCPUIdle(t *testing.T) {
	real := newCPUIdle("/proc/stat")
	require.NotNil(t, real, "/proc/stat must be readable on Linux")
	path := filepath.Join(t.TempDir(), "stat")
	statFile(t, path, real, 100, 100)
	c := newCPUIdle(path)
	require.NotNil(t, c)
	statFile(t, path, c, 130, 110) // 30 busy, 10 idle per CPU; guest is in user
	require.InDelta(t, 0.25, c.sample(), 1e-9)
	require.Equal(t, -1.0, c.sample(), "no tick since the last sample")
	statFile(t, path, c, 10, 10) // counters went backwards (another boot?)
	require.Equal(t, -1.0, c.sample())
	require.NoError(t, os.Remove(path))
	require.Equal(t, -1.0, c.sample())
	require.Nil(t, newCPUIdle(path))
}

// autoController returns an auto levelController whose CPU counters are a
// file of the test's, and tick, which adds busy and idle jiffies to it.
func autoController(t *testing.T) (*levelController, func(busy, idle uint64)) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "stat")
	c, err := newLevelController("auto")
	require.NoError(t, err)
	require.NotNil(t, c.idle)
	statFile(t, path, c.idle, 0, 0)
	c.idle = newCPUIdle(path)
	busy, idle := uint64(0), uint64(0)
	return c, func(b, i uint64) {
		busy, idle = busy+b, idle+i
		statFile(t, path, c.idle, busy, idle)
	}
}

// probe plays the workers' part in the probe under way, if any: each
// chunk compressed at the current level comes out ratio times its size at
// the probed level. It returns whether there was a probe.
func probe(t *testing.T, c *levelController, ratio float64) bool {
	t.Helper()
	from := c.current()
	to, gen, ok := c.wantProbe(from, protocol.Version)
	if !ok {
		return false
	}
	require.NotEqual(t, from, to)
	for i := range probeChunks {
		if i > 0 {
			var ok bool
			_, gen, ok = c.wantProbe(from, protocol.Version)
			require.True(t, ok)
		}
		c.probed(gen, 1000, int(1000*ratio))
	}
	_, _, ok = c.wantProbe(from, protocol.Version)
	require.False(t, ok, "a probe takes probeChunks chunks")
	return true
}

// slowLinkWindow is one window of a slow link (writes wait, CPUs mostly idle),
// then a probe in which the level probed makes chunks ratio times their
// size.
func slowLinkWindow(t *testing.T, c *levelController, tick func(b, i uint64), ratio float64) {
	tick(10, 90)
	window(c, 100*time.Millisecond, 900*time.Millisecond, 1<<20)
	probe(t, c, ratio)
}

func TestLevelControllerAdapts(t *testing.T) {
	c, tick := autoController(t)
	require.Equal(t, chunk.LevelFastest, c.current())

	// A slow link, and the levels above save bytes: compress harder, up
	// to the cap.
	for range 5 {
		slowLinkWindow(t, c, tick, 0.8)
	}
	require.Equal(t, chunk.LevelBetter, c.current())

	// Busy CPUs: step down past fastest to the floor, never to no compression.
	for range 6 {
		tick(95, 5)
		window(c, 100*time.Millisecond, 900*time.Millisecond, 1<<20)
	}
	require.Equal(t, chunk.LevelFast4, c.current())

	// CPU to spare again and no waits: stay fast; waits: climb back.
	tick(20, 80)
	window(c, 900*time.Millisecond, 10*time.Millisecond, 1<<20)
	require.Equal(t, chunk.LevelFast4, c.current())
	require.False(t, probe(t, c, 0.5), "no probe without a reason to climb")
	slowLinkWindow(t, c, tick, 0.5)
	require.Equal(t, chunk.LevelFast1, c.current())
	require.Equal(t, 7, c.changes) // 2 up, 4 down, 1 up
	require.NotEmpty(t, c.levelChunks())
}

// TestLevelControllerProbes: on a slow link the level climbs only when
// the probe shows the level above saves bytes; a failed probe holds the
// level for climbBackoff; above fastest, a level that no longer saves
// bytes over the one below is left.
func TestLevelControllerProbes(t *testing.T) {
	c, tick := autoController(t)
	// Higher effort, more bytes (issue 16's dump): stay at fastest.
	slowLinkWindow(t, c, tick, 1.05)
	require.Equal(t, chunk.LevelFastest, c.current())
	require.True(t, c.holdUntil.After(time.Now()), "held after a probe that did not pay")
	// Saving less than probeGain is not worth the CPU either; and no probe
	// runs while the level is held.
	c.holdUntil = time.Time{}
	slowLinkWindow(t, c, tick, 1-probeGain/2)
	require.Equal(t, chunk.LevelFastest, c.current())
	tick(10, 90)
	window(c, 100*time.Millisecond, 900*time.Millisecond, 1<<20)
	require.False(t, probe(t, c, 0.5), "held after a probe that did not pay")

	// The data changes (another table): the level above pays, then stops
	// paying, and the recheck steps back down.
	c.holdUntil = time.Time{}
	slowLinkWindow(t, c, tick, 0.9)
	require.Equal(t, chunk.LevelDefault, c.current())
	c.lastCheck = time.Now().Add(-recheckEvery)
	tick(50, 50) // neither busy nor waiting: no step of its own
	window(c, 500*time.Millisecond, 500*time.Millisecond, 1<<20)
	require.True(t, probe(t, c, 0.99), "a level above fastest is rechecked")
	require.Equal(t, chunk.LevelFastest, c.current())

	// A probe's results that come back after the level changed are dropped.
	c.holdUntil = time.Time{}
	tick(10, 90)
	window(c, 100*time.Millisecond, 900*time.Millisecond, 1<<20)
	_, gen, ok := c.wantProbe(c.current(), protocol.Version)
	require.True(t, ok)
	tick(95, 5)
	window(c, 100*time.Millisecond, 900*time.Millisecond, 1<<20) // busy: a step down ends the probe
	require.Equal(t, chunk.LevelFast1, c.current())
	for range probeChunks {
		c.probed(gen, 1000, 10)
	}
	require.Equal(t, chunk.LevelFast1, c.current())

	// A fixed level never probes.
	f, err := newLevelController("fastest")
	require.NoError(t, err)
	_, _, ok = f.wantProbe(chunk.LevelFastest, protocol.Version)
	require.False(t, ok)
}

// TestLevelControllerLongPath: on a long path busy CPUs step the level
// down to zstd fastest and no further; a fixed level is left alone.
func TestLevelControllerLongPath(t *testing.T) {
	c, tick := autoController(t)
	require.NoError(t, c.peer(protocol.Version))
	c.longPath()
	for range 6 {
		tick(95, 5)
		window(c, 100*time.Millisecond, 900*time.Millisecond, 1<<20)
	}
	require.Equal(t, chunk.LevelFastest, c.current())
	require.NoError(t, c.peer(protocol.Version), "a reconnection keeps the floor")
	require.Equal(t, chunk.LevelFastest, c.min)

	f, err := newLevelController("s2")
	require.NoError(t, err)
	f.longPath()
	require.Equal(t, chunk.LevelS2, f.current())
}

func TestLevelControllerWithoutCPUCounters(t *testing.T) {
	c, err := newLevelController("auto")
	require.NoError(t, err)
	c.idle, c.min = nil, chunk.LevelFastest // what newLevelController does without /proc/stat
	for range 5 {
		window(c, 100*time.Millisecond, 900*time.Millisecond, 1<<20)
		probe(t, c, 0.8)
	}
	require.Equal(t, chunk.LevelBetter, c.current())
	for range 5 {
		window(c, 900*time.Millisecond, 10*time.Millisecond, 1<<20)
	}
	require.Equal(t, chunk.LevelFastest, c.current())
	// Writes that wait on a fast link (loopback, QUIC short of CPU) do not
	// make it compress harder.
	for range 5 {
		window(c, 100*time.Millisecond, 900*time.Millisecond, 200<<20)
	}
	require.Equal(t, chunk.LevelFastest, c.current())
}

func TestLevelControllerFixed(t *testing.T) {
	c, err := newLevelController("none")
	require.NoError(t, err)
	for range 3 {
		window(c, 0, time.Second, 1)
	}
	require.Equal(t, chunk.LevelNone, c.current())
	require.Equal(t, map[string]int64{"none": 3}, c.levelChunks())
	_, err = newLevelController("fast-ish")
	require.Error(t, err)
}

func TestLevelsText(t *testing.T) {
	r := &SendResult{Levels: map[string]int64{"fastest": 3, "fast4": 10, "better": 1}}
	require.Equal(t, "zstd fast4 10, fastest 3, better 1", r.LevelsText())
	// S2 is not zstd: the word comes after it.
	r = &SendResult{Levels: map[string]int64{"s2": 300, "fast4": 20, "none": 2}}
	require.Equal(t, "none 2, s2 300, zstd fast4 20", r.LevelsText())
	r = &SendResult{Levels: map[string]int64{"s2": 300}}
	require.Equal(t, "s2 300", r.LevelsText())
	require.Empty(t, (&SendResult{}).LevelsText())
}

// TestLevelControllerS2: busy CPUs take the ladder down to S2 only for a
// receiver that decodes it (protocol 6); for one below, the floor stays
// zstd --fast=4, and a connection to one lifts a ladder already at S2.
func TestLevelControllerS2(t *testing.T) {
	busyWindows := func(c *levelController, tick func(b, i uint64)) {
		for range 8 {
			tick(95, 5)
			window(c, 100*time.Millisecond, 900*time.Millisecond, 1<<20)
		}
	}
	t.Run("receiver knows S2", func(t *testing.T) {
		c, tick := autoController(t)
		require.NoError(t, c.peer(protocol.S2Version))
		busyWindows(c, tick)
		require.Equal(t, chunk.LevelS2, c.current())
		require.Equal(t, chunk.LevelS2, c.levelFor(protocol.S2Version))
		require.Equal(t, chunk.LevelFast4, c.levelFor(protocol.S2Version-1), "a connection below 6 never gets S2")
		// CPU to spare and writes waiting: climb back into zstd.
		slowLinkWindow(t, c, tick, 0.9)
		require.Equal(t, chunk.LevelFast4, c.current())

		// A reconnection reaches a build below 6: S2 is off the ladder.
		busyWindows(c, tick)
		require.Equal(t, chunk.LevelS2, c.current())
		require.NoError(t, c.peer(5))
		require.Equal(t, chunk.LevelFast4, c.current())
		busyWindows(c, tick)
		require.Equal(t, chunk.LevelFast4, c.current())
	})
	t.Run("receiver at 5", func(t *testing.T) {
		c, tick := autoController(t)
		require.NoError(t, c.peer(5))
		busyWindows(c, tick)
		require.Equal(t, chunk.LevelFast4, c.current())
	})
	t.Run("no peer yet", func(t *testing.T) {
		c, tick := autoController(t)
		busyWindows(c, tick)
		require.Equal(t, chunk.LevelFast4, c.current())
	})
	t.Run("CPU idleness unknown", func(t *testing.T) {
		c, err := newLevelController("auto")
		require.NoError(t, err)
		c.idle, c.lowest, c.min = nil, chunk.LevelFastest, chunk.LevelFastest // as without /proc/stat
		require.NoError(t, c.peer(protocol.S2Version))
		for range 8 {
			window(c, 900*time.Millisecond, 10*time.Millisecond, 1<<20)
		}
		require.Equal(t, chunk.LevelFastest, c.current())
	})
}

func TestLevelControllerFixedS2(t *testing.T) {
	c, err := newLevelController("s2")
	require.NoError(t, err)
	require.Equal(t, chunk.LevelS2, c.current())
	require.NoError(t, c.peer(protocol.S2Version))
	err = c.peer(5)
	require.ErrorIs(t, err, errNoS2)
	require.Contains(t, err.Error(), "protocol 5")
	fast4, err := newLevelController("fast4")
	require.NoError(t, err)
	require.NoError(t, fast4.peer(5))
}
