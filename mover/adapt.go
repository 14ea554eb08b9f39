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
	wire      int64 // bytes written
	changes   int
}

const (
	adaptWindow = 500 * time.Millisecond
	// slowLink is the wire rate below which a link, not the CPU, is taken to
	// be the bottleneck: a WAN, a VPN, a rate limit.
	slowLink = 40e6
)

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
func (c *levelController) observe(cpu, wait time.Duration, wire int) {
	if c.fixed {
		return
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
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
	total := c.cpuNs + c.waitNs
	if total > 0 {
		waitShare := float64(c.waitNs) / float64(total)
		rate := float64(c.wire) / adaptWindow.Seconds()
		switch {
		// Waiting writes on a fast link mean the CPU is short (QUIC shares
		// it with zstd), not the link: compressing harder would slow down.
		case waitShare > 0.6 && rate < slowLink && c.level < c.max:
			c.level++
			c.changes++
		case waitShare < 0.15 && c.level > c.min:
			c.level--
			c.changes++
		}
	}
	c.cpuNs, c.waitNs, c.wire = 0, 0, 0
	c.windowEnd = now.Add(adaptWindow)
}
