package mover

import (
	"sync"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
)

// levelController adapts the zstd level to the link. Data workers report how
// long they spent compressing and how long they waited to write (QUIC flow
// control, congestion, the rate limit). Writes that wait most of the time mean
// the link is the bottleneck: compress harder. Writes that hardly wait mean
// the CPU is: compress less, down to zstd fastest. No goroutine: the workers
// drive it.
type levelController struct {
	fixed bool
	min   chunkstore.Level
	max   chunkstore.Level

	mu        sync.Mutex // guards everything below
	level     chunkstore.Level
	windowEnd time.Time
	cpuNs     int64 // reading, hashing, compressing
	waitNs    int64 // blocked in stream writes
	changes   int
}

const adaptWindow = 500 * time.Millisecond

func newLevelController(mode string) (*levelController, error) {
	if mode == "" || mode == "auto" {
		// The floor is fastest, not none: on loopback the bench showed that
		// sending plain chunks costs more CPU in QUIC than zstd fastest does
		// (93 MB/s plain vs 196 MB/s fastest); Compress still stores
		// incompressible chunks plain.
		return &levelController{level: chunkstore.LevelFastest, min: chunkstore.LevelFastest, max: chunkstore.LevelBetter}, nil
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

// observe records one chunk's costs and, at the end of a window, moves the
// level one step.
func (c *levelController) observe(cpu, wait time.Duration) {
	if c.fixed {
		return
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cpuNs += int64(cpu)
	c.waitNs += int64(wait)
	if c.windowEnd.IsZero() {
		c.windowEnd = now.Add(adaptWindow)
		return
	}
	if now.Before(c.windowEnd) {
		return
	}
	total := c.cpuNs + c.waitNs
	if total > 0 {
		waitShare := float64(c.waitNs) / float64(total)
		switch {
		case waitShare > 0.6 && c.level < c.max:
			c.level++
			c.changes++
		case waitShare < 0.15 && c.level > c.min:
			c.level--
			c.changes++
		}
	}
	c.cpuNs, c.waitNs = 0, 0
	c.windowEnd = now.Add(adaptWindow)
}
