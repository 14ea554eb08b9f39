package mover

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cpuIdle measures how idle the CPUs this process may run on are, from the
// kernel's per-CPU counters in /proc/stat. It tells the level controller
// whether a sender whose writes wait is short of link (idle CPU to spare)
// or of CPU (QUIC, the chunker or another process such as pg_dump needs the
// same cores): only in the first case does compressing harder help.
type cpuIdle struct {
	path string
	cpus map[string]bool // "cpu3": in this process's affinity mask
	busy uint64          // jiffies at the last sample, summed over cpus
	idle uint64
}

// newCPUIdle returns nil when the counters cannot be read: the controller
// then goes by write waits alone.
func newCPUIdle(path string) *cpuIdle {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil
	}
	c := &cpuIdle{path: path, cpus: map[string]bool{}}
	for i := range 1024 {
		if set.IsSet(i) {
			c.cpus["cpu"+strconv.Itoa(i)] = true
		}
	}
	if _, _, ok := c.read(); !ok {
		return nil
	}
	c.sample()
	return c
}

// read sums busy and idle (idle + iowait) jiffies over the allowed CPUs.
func (c *cpuIdle) read() (busy, idle uint64, ok bool) {
	b, err := os.ReadFile(c.path)
	if err != nil {
		return 0, 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	n := 0
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || !c.cpus[f[0]] {
			continue
		}
		for i, s := range f[1:] {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return 0, 0, false
			}
			switch i {
			case 3, 4: // idle, iowait
				idle += v
			case 8, 9: // guest, guest_nice: already counted in user, nice
			default:
				busy += v
			}
		}
		n++
	}
	return busy, idle, n > 0
}

// sample returns the idle share of the allowed CPUs since the last sample,
// from 0 to 1, or -1 when it is unknown (no tick elapsed, counters gone).
func (c *cpuIdle) sample() float64 {
	busy, idle, ok := c.read()
	if !ok {
		return -1
	}
	if busy < c.busy || idle < c.idle {
		c.busy, c.idle = busy, idle
		return -1
	}
	db, di := busy-c.busy, idle-c.idle
	c.busy, c.idle = busy, idle
	if db+di == 0 {
		return -1
	}
	return float64(di) / float64(db+di)
}
