package mover

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
)

// levelController adapts the compression level to whichever of the CPU and the link
// limits the transfer. Data workers report how long they spent reading and
// compressing each chunk and how long they waited to write it (QUIC flow
// control, congestion, the rate limit); each window it also samples how idle
// the CPUs this process may use were (cpuIdle).
//   - CPUs busy: the CPU limits, whatever the writes do (a write also waits
//     when QUIC needs the core that zstd holds): compress less, down to S2
//     (zstd --fast=4 for a receiver below protocol 6, which cannot decode
//     S2), which still keeps the wire bytes a fraction of plain.
//   - Writes waiting while CPU sits idle: the link limits: compress harder.
//   - Writes that hardly wait: neither the link nor compression is the
//     limit: step back towards zstd fastest, never below it.
//
// Without CPU counters it goes by the waits alone, between fastest and
// better, as before. No goroutine: the workers drive it.
//
// A step up is taken only when it pays in bytes: the controller first has
// a few chunks compressed at both levels (a probe, wantProbe and probed)
// and climbs if the higher level made them at least probeGain smaller.
// More effort is not always fewer bytes: on issue 16's dump, chunk by
// chunk, zstd default came out 5 % and better 11 % larger than fastest
// (docs/BENCHMARKS.md), and the ladder had climbed there on the WAN,
// spending CPU for more bytes on a link-bound path. A failed probe holds
// the level for climbBackoff; above fastest, every recheckEvery the level
// below is probed too, and taken if the current one no longer pays.
type levelController struct {
	fixed bool
	// lowest is the floor of the ladder for a receiver that decodes every
	// level; min is the floor for the receiver of the last connection (see
	// peer).
	lowest chunk.Level
	min    chunk.Level
	max    chunk.Level
	idle   *cpuIdle // nil: CPU idleness unknown

	mu        sync.Mutex // guards everything below
	level     chunk.Level
	windowEnd time.Time
	cpuNs     int64 // reading, compressing
	waitNs    int64 // blocked in stream writes
	wire      int64 // bytes written
	changes   int
	chunks    [chunk.LevelBest + 1]int64 // chunks sent at each level

	// The probe under way, if probeTo != noProbe: chunks compressed at
	// probeFrom are also compressed at probeTo.
	probeFrom, probeTo chunk.Level
	probeStart         time.Time
	probeGen           int       // tells a probe's results from an earlier one's
	probeTaken         int       // chunks handed out for the probe
	probeDone          int       // chunks whose sizes came back
	probeCur, probeAlt int64     // their sizes at probeFrom and at probeTo
	holdUntil          time.Time // no climb before it (a probe failed)
	lastCheck          time.Time // when the level below was last probed
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

	// noProbe is probeTo when no probe is under way.
	noProbe chunk.Level = -1
	// probeChunks is how many chunks a probe compresses twice: about one
	// window's worth on a 100 Mbit/s link, and more than one file's kind of
	// rows.
	probeChunks = 8
	// probeGain is the share of bytes a level must save against the level
	// below it to be worth its CPU.
	probeGain = 0.03
	// climbBackoff is how long a level is held after a probe found the
	// level above no better; recheckEvery how often a level above fastest
	// is compared with the one below it.
	climbBackoff = 2 * time.Second
	recheckEvery = time.Second
)

func newLevelController(mode string) (*levelController, error) {
	if mode == "" || mode == "auto" {
		// Never none: on loopback the bench showed that sending plain chunks
		// costs more CPU in QUIC than zstd fastest does (93 MB/s plain vs 196
		// MB/s fastest); Compress still sends incompressible chunks plain.
		// Until peer says the receiver decodes S2, the floor is --fast=4.
		c := &levelController{level: chunk.LevelFastest, lowest: chunk.LevelS2, min: chunk.LevelFast4, max: chunk.LevelBetter, probeTo: noProbe}
		if c.idle = newCPUIdle("/proc/stat"); c.idle == nil {
			c.lowest, c.min = chunk.LevelFastest, chunk.LevelFastest
		}
		if l := chunk.Level(testAutoStart.Load()); l != chunk.LevelNone {
			c.level = l
		}
		return c, nil
	}
	l, err := chunk.ParseLevel(mode)
	if err != nil {
		return nil, fmt.Errorf("mover: unknown compression level %q (want auto, none, s2, fast4, fast1, fastest, default, better or best)", mode)
	}
	return &levelController{fixed: true, level: l, probeTo: noProbe}, nil
}

// testAutoStart, set only by tests, is the level the auto ladder starts at
// (LevelNone: fastest), as if CPU-busy windows had led there.
var testAutoStart atomic.Int64

// errNoS2 refuses a fixed S2 level for a receiver that cannot decode it.
var errNoS2 = errors.New("mover: compression s2 needs a receiver speaking protocol 6 or later")

// peer adapts the ladder to a connection's receiver, which speaks version:
// below protocol.S2Version it cannot decode S2, so the floor is zstd
// --fast=4, and a fixed s2 level is an error. Each connection of a transfer
// calls it before sending: a reconnection may reach another build.
func (c *levelController) peer(version uint16) error {
	knows := protocol.KnowsCodec(version, chunk.CodecS2)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fixed {
		if c.level == chunk.LevelS2 && !knows {
			return fmt.Errorf("%w: the receiver speaks protocol %d (use fast4 or auto)", errNoS2, version)
		}
		return nil
	}
	c.min = c.lowest
	if !knows && c.min < chunk.LevelFast4 {
		c.min = chunk.LevelFast4
	}
	c.level = max(c.level, c.min)
	return nil
}

// longPath raises the auto ladder's floor to zstd fastest for a transfer
// whose first connection's path is long (longPath): on such a
// path (a WAN) the link, not the sender's CPU, limits, and the levels
// below fastest (fast1, fast4, S2) trade the CPU they save for wire bytes
// that cost time. A sender's core also looks busy there for the framing
// of loss repair (no GSO), which walked the ladder down to S2 on the
// harness's 260 MB WAN transfer, putting 1.6 times rsync -z's bytes on
// the link.
func (c *levelController) longPath() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fixed {
		return
	}
	c.lowest = max(c.lowest, chunk.LevelFastest)
	c.min = max(c.min, chunk.LevelFastest)
	c.level = max(c.level, c.min)
}

// levelFor returns the level to send a chunk at on a connection speaking
// version: the current level, unless it is one that version cannot decode
// (a joined connection that reached another build). Chunks are counted at
// the level passed to observe, so the counts stay true.
func (c *levelController) levelFor(version uint16) chunk.Level {
	l := c.current()
	if l == chunk.LevelS2 && !protocol.KnowsCodec(version, chunk.CodecS2) {
		return chunk.LevelFast4
	}
	return l
}

func (c *levelController) current() chunk.Level {
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
			m[chunk.Level(l).String()] = n
		}
	}
	return m
}

// LevelsText lists the chunks sent at each compression level, least effort
// first, the zstd levels after the word zstd, e.g. "s2 300, zstd fast4
// 2110, fastest 567" ("" if none was sent).
func (r *SendResult) LevelsText() string {
	var parts []string
	zstd := false
	for l := chunk.LevelNone; l <= chunk.LevelBest; l++ {
		n := r.Levels[l.String()]
		if n <= 0 {
			continue
		}
		name := l.String()
		if l >= chunk.LevelFast4 && !zstd {
			name, zstd = "zstd "+name, true
		}
		parts = append(parts, fmt.Sprintf("%s %d", name, n))
	}
	return strings.Join(parts, ", ")
}

// observe records the costs of one chunk sent at level l and, at the end of
// a window, moves the level one step.
func (c *levelController) observe(l chunk.Level, cpu, wait time.Duration, wire int) {
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
		switch s := step(c.level, waitShare, idle, rate); {
		case s < 0:
			c.setLevel(c.level-1, now)
		case s > 0:
			if c.level < c.max && now.After(c.holdUntil) {
				c.startProbe(c.level+1, now)
			}
		case c.level > chunk.LevelFastest && c.level > c.min && now.Sub(c.lastCheck) >= recheckEvery:
			c.startProbe(c.level-1, now)
		}
	}
	c.cpuNs, c.waitNs, c.wire = 0, 0, 0
	c.windowEnd = now.Add(adaptWindow)
}

// setLevel moves to level l if the ladder allows it, ending any probe.
func (c *levelController) setLevel(l chunk.Level, now time.Time) {
	if l < c.min || l > c.max || l == c.level {
		return
	}
	c.level = l
	c.changes++
	c.probeTo = noProbe
	c.lastCheck = now
}

// startProbe compares the current level with level to, unless a probe is
// under way.
func (c *levelController) startProbe(to chunk.Level, now time.Time) {
	if c.probeTo != noProbe && c.probeFrom == c.level && now.Sub(c.probeStart) < climbBackoff {
		return // under way; one older has lost its chunks (a worker failed)
	}
	if to < c.min || to > c.max {
		return
	}
	c.probeFrom, c.probeTo, c.probeStart = c.level, to, now
	c.probeGen++
	c.probeTaken, c.probeDone, c.probeCur, c.probeAlt = 0, 0, 0, 0
	c.lastCheck = now
}

// wantProbe tells a worker that just compressed a chunk at level l on a
// connection speaking version whether to compress it again at the level it
// returns, for the probe of generation gen; the worker then reports both
// sizes to probed, and sends the smaller.
func (c *levelController) wantProbe(l chunk.Level, version uint16) (to chunk.Level, gen int, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fixed || c.probeTo == noProbe || l != c.probeFrom || c.probeTaken >= probeChunks {
		return 0, 0, false
	}
	if c.probeTo == chunk.LevelS2 && !protocol.KnowsCodec(version, chunk.CodecS2) {
		return 0, 0, false
	}
	c.probeTaken++
	return c.probeTo, c.probeGen, true
}

// probed takes the sizes of one chunk of the probe of generation gen: cur
// at the probe's current level, alt at the level probed. When the probe's
// chunks are all back, it moves to the probed level if that pays: a level
// above saves probeGain of the bytes, or the current level no longer saves
// that much over the level below.
func (c *levelController) probed(gen int, cur, alt int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.probeGen || c.probeTo == noProbe {
		return // a probe ended by a change of level
	}
	c.probeCur += int64(cur)
	c.probeAlt += int64(alt)
	if c.probeDone++; c.probeDone < probeChunks {
		return
	}
	now := time.Now()
	from, to := c.probeFrom, c.probeTo
	c.probeTo = noProbe
	var pays bool
	if to > from {
		pays = float64(c.probeAlt) <= float64(c.probeCur)*(1-probeGain)
	} else {
		pays = float64(c.probeCur) > float64(c.probeAlt)*(1-probeGain)
	}
	if !pays {
		if to > from {
			c.holdUntil = now.Add(climbBackoff)
		}
		return
	}
	if c.level == from {
		c.setLevel(to, now)
	}
	if to < from {
		c.holdUntil = now.Add(climbBackoff) // the level above did not pay
	}
}

// step decides the move from level l after a window in which writes waited
// waitShare of the workers' time, the usable CPUs were idle for idle of it
// (-1: unknown) and rate bytes per second went out.
func step(l chunk.Level, waitShare, idle, rate float64) chunk.Level {
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
	case waitShare < 0.15 && l > chunk.LevelFastest:
		return -1
	}
	return 0
}
