package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// memSampler does what the retired scripts/bench-memory did around one
// pgporter export (--memory-profile): it runs the export with GODEBUG=gctrace=1 and
// PGPORTER_PPROF on a loopback port, samples its VmRSS and VmHWM every
// memSampleEvery, and at each new high of VmRSS saves its smaps_rollup
// and a heap profile. C zstd's and pebble's memory are off the Go heap:
// smaps shows them, the profile does not. It leaves in dir:
//
//	rss.tsv        seconds since the start, VmRSS and VmHWM in KiB
//	peak.smaps     /proc/PID/smaps_rollup at the highest VmRSS sampled
//	peak.heap      the heap profile there (go tool pprof -top BINARY peak.heap)
//	peak.memstats  the runtime's MemStats there
//	gctrace.txt    the export's stderr, with the gctrace lines
type memSampler struct {
	dir     string
	addr    string   // the export's PGPORTER_PPROF
	gctrace *os.File // the export's stderr goes here too
	stop    chan struct{}
	done    chan error // run's result; nil until start
}

const memSampleEvery = 200 * time.Millisecond

func newMemSampler(dir string) (*memSampler, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("making the memory profile's directory: %w", err)
	}
	// A free port, as the script took one: another process may take it
	// before pgporter listens, and then the export fails, not the figures.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		return nil, err
	}
	gc, err := os.Create(filepath.Join(dir, "gctrace.txt"))
	if err != nil {
		return nil, err
	}
	return &memSampler{dir: dir, addr: addr, gctrace: gc, stop: make(chan struct{})}, nil
}

// env is what the export's environment needs beside its own.
func (m *memSampler) env() []string {
	return []string{"GODEBUG=gctrace=1", pprofEnv + "=" + m.addr}
}

// pprofEnv is pgporter's hidden profiling address setting (cmd/pgporter/memory.go).
const pprofEnv = "PGPORTER_PPROF"

// start samples the child of parent (GNU time's pgporter) until close.
func (m *memSampler) start(parent int) {
	m.done = make(chan error, 1)
	go func() { m.done <- m.run(parent) }()
}

// close stops the sampling, waits for it and closes gctrace.txt. It may be
// called twice; the second call does nothing.
func (m *memSampler) close() error {
	if m.gctrace == nil {
		return nil
	}
	close(m.stop)
	var err error
	if m.done != nil {
		err = <-m.done
	}
	err = errors.Join(err, m.gctrace.Close())
	m.gctrace = nil
	return err
}

func (m *memSampler) run(parent int) (err error) {
	tsv, err := os.Create(filepath.Join(m.dir, "rss.tsv"))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, tsv.Close()) }()
	if _, err := io.WriteString(tsv, "seconds\tVmRSS_KiB\tVmHWM_KiB\n"); err != nil {
		return err
	}
	client := &http.Client{Timeout: 10 * time.Second}
	tick := time.NewTicker(memSampleEvery)
	defer tick.Stop()
	t0 := time.Now()
	pid := 0
	var high int64
	for {
		select {
		case <-m.stop:
			return nil
		case <-tick.C:
		}
		if pid == 0 {
			if pid = firstChild(parent); pid == 0 {
				continue
			}
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue // gone: the export ended
		}
		rss, err1 := parseStatusKB(b, "VmRSS")
		hwm, err2 := parseStatusKB(b, "VmHWM")
		if err1 != nil || err2 != nil {
			continue // a zombie has no Vm lines
		}
		if _, err := fmt.Fprintf(tsv, "%.1f\t%d\t%d\n", time.Since(t0).Seconds(), rss, hwm); err != nil {
			return err
		}
		if rss <= high {
			continue
		}
		high = rss
		// As the script's cp and curl -sf: a sample that fails (the
		// process ended, pprof not listening yet) keeps the last one.
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid)); err == nil {
			if err := writeAtomic(filepath.Join(m.dir, "peak.smaps"), b); err != nil {
				return err
			}
		}
		if b, err := httpGet(client, "http://"+m.addr+"/debug/pprof/heap"); err == nil {
			if err := writeAtomic(filepath.Join(m.dir, "peak.heap"), b); err != nil {
				return err
			}
		}
		if b, err := httpGet(client, "http://"+m.addr+"/debug/pprof/heap?debug=1"); err == nil {
			if i := bytes.Index(b, []byte("# runtime.MemStats")); i >= 0 {
				if err := writeAtomic(filepath.Join(m.dir, "peak.memstats"), b[i:]); err != nil {
					return err
				}
			}
		}
	}
}

// firstChild returns a child of pid, or 0 when it has none (yet).
func firstChild(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

func httpGet(c *http.Client, url string) ([]byte, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// writeAtomic writes b to path through a temporary file, so that a sample
// cut short leaves the previous one whole.
func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
