package mover

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
)

// levelController adapts the zstd level to whichever of the CPU and the link
// limits the transfer. Data workers report how long they spent reading and
// compressing each chunk and how long they waited to write it (QUIC flow
// control, congestion, the rate limit); each window it also samples how idle
// the CPUs this process may use were (cpuIdle).
//   - CPUs busy: the CPU limits, whatever the writes do (a write also waits
//     when QUIC needs the core that zstd holds): compress less, down to
//     zstd --fast=4, which still keeps the wire bytes a fraction of plain.
//   - Writes waiting while CPU sits idle: the link limits: compress harder.
//   - Writes that hardly wait: neither the link nor compression is the
//     limit: step back towards zstd fastest, never below it.
//
// Without CPU counters it goes by the waits alone, between fastest and
// better, as before. No goroutine: the workers drive it.
type levelController struct {
	fixed bool
	min   chunkstore.Level
	max   chunkstore.Level
	idle  *cpuIdle // nil: CPU idleness unknown

	mu        sync.Mutex // guards everything below
	level     chunkstore.Level
	windowEnd time.Time
	cpuNs     int64 // reading, compressing
	waitNs    int64 // blocked in stream writes
	wire      int64 // bytes written
	changes   int
	chunks    [chunkstore.LevelBest + 1]int64 // chunks sent at each level
}

const (
	adaptWindow = 100 * time.Millisecond // 10 ticks of /proc/stat per CPU
	// slowLink is the wire rate below which a link, not the CPU, is taken to
	// be the bottleneck when CPU idleness is unknown.
	slowLink = 40e6
	// cpuBusy is the idle share of the usable CPUs below which the CPU is
	// the bottleneck; cpuSpare the one above which it is not.
	cpuBusy  = 0.25
	cpuSpare = 0.35
)

func newLevelController(mode string) (*levelController, error) {
	if mode == "" || mode == "auto" {
		// Never none: on loopback the bench showed that sending plain chunks
		// costs more CPU in QUIC than zstd fastest does (93 MB/s plain vs 196
		// MB/s fastest); Compress still sends incompressible chunks plain.
		c := &levelController{level: chunkstore.LevelFastest, min: chunkstore.LevelFast4, max: chunkstore.LevelBetter}
		if c.idle = newCPUIdle("/proc/stat"); c.idle == nil {
			c.min = chunkstore.LevelFastest
		}
		return c, nil
	}
	l, err := chunkstore.ParseLevel(mode)
	if err != nil {
		return nil, err
	}
	return &levelController{fixed: true, level: l}, nil
}

func (c *levelController) current() chunkstore.Level {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.level
}

// levelChunks returns how many chunks were sent at each level used.
func (c *levelController) levelChunks() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[string]int64{}
	for l, n := range c.chunks {
		if n > 0 {
			m[chunkstore.Level(l).String()] = n
		}
	}
	return m
}

// LevelsText lists the chunks sent at each compression level, least effort
// first, e.g. "fast4 2110, fastest 567" ("" if none was sent).
func (r *SendResult) LevelsText() string {
	var parts []string
	for l := chunkstore.LevelNone; l <= chunkstore.LevelBest; l++ {
		if n := r.Levels[l.String()]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", l, n))
		}
	}
	return strings.Join(parts, ", ")
}

// observe records the costs of one chunk sent at level l and, at the end of
// a window, moves the level one step.
func (c *levelController) observe(l chunkstore.Level, cpu, wait time.Duration, wire int) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if l >= 0 && int(l) < len(c.chunks) {
		c.chunks[l]++
	}
	if c.fixed {
		return
	}
	c.cpuNs += int64(cpu)
	c.waitNs += int64(wait)
	c.wire += int64(wire)
	if c.windowEnd.IsZero() {
		c.windowEnd = now.Add(adaptWindow)
		return
	}
	if now.Before(c.windowEnd) {
		return
	}
	idle := -1.0
	if c.idle != nil {
		idle = c.idle.sample()
	}
	if total := c.cpuNs + c.waitNs; total > 0 {
		waitShare := float64(c.waitNs) / float64(total)
		rate := float64(c.wire) / adaptWindow.Seconds()
		next := c.level + step(c.level, waitShare, idle, rate)
		if next >= c.min && next <= c.max && next != c.level {
			c.level = next
			c.changes++
		}
	}
	c.cpuNs, c.waitNs, c.wire = 0, 0, 0
	c.windowEnd = now.Add(adaptWindow)
}

// step decides the move from level l after a window in which writes waited
// waitShare of the workers' time, the usable CPUs were idle for idle of it
// (-1: unknown) and rate bytes per second went out.
func step(l chunkstore.Level, waitShare, idle, rate float64) chunkstore.Level {
	if idle < 0 {
		switch {
		// Waiting writes on a fast link mean the CPU is short (QUIC shares
		// it with zstd), not the link: compressing harder would slow down.
		case waitShare > 0.6 && rate < slowLink:
			return +1
		case waitShare < 0.15:
			return -1
		}
		return 0
	}
	switch {
	case idle < cpuBusy:
		return -1
	case waitShare > 0.6 && idle > cpuSpare:
		return +1
	case waitShare < 0.15 && l > chunkstore.LevelFastest:
		return -1
	}
	return 0
}
