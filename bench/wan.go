package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgporter/pgporter/internal/netemu"
	"github.com/pgporter/pgporter/internal/synth"
)

// The links of issue 17's scenarios 3 to 5 (and of issue 16's WAN targets):
// 100 Mbit/s, 40 ms RTT, 0.5% loss; and 5% loss at 400 ms RTT, same rate.
// The loss applies to each direction, as in cmd/pgporter's
// BenchmarkNetnsLink, so that the figures compare.
var (
	ProfileWAN   = EmuProfile{Rate: "100mbit", Delay: 20 * time.Millisecond, Loss: 0.005, Seed: 17}
	ProfileLossy = EmuProfile{Rate: "100mbit", Delay: 200 * time.Millisecond, Loss: 0.05, Seed: 17}
)

// WAN is scenario 3: a cold transfer of a dump through the emulated WAN
// path (WANLink), by pgporter send into a fresh mover serve, an rsync daemon
// with -a and with -a -z (zstd level 1), and tar | zstd -1 | nc. Two
// instances run: "wan" on ProfileWAN with the shared dump, and "wan-lossy"
// on ProfileLossy with a small synthetic tree shaped like it, since rsync
// without compression crawls at tens of KB/s there.
type WAN struct {
	name      string
	Profile   EmuProfile
	Pgporter  string
	SendFlags []string
	Link      LinkOptions // CPUs; the rate comes from Profile
	// SynthBytes, when positive, replaces the shared dump with a synthetic
	// tree of that many bytes (pgbench rows and md5 text, 3:1).
	SynthBytes int
	data       *wanData
}

var _ Scenario = (*WAN)(nil)

func (s *WAN) Name() string { return s.name }

func (s *WAN) Describe() string {
	return "cold transfer of a dump through a user-space emulated WAN path (" + s.Profile.String() + ") between two network namespaces"
}

func (s *WAN) Prepare(ctx context.Context, env Env) (_ *Setup, err error) {
	if s.Pgporter == "" {
		return nil, fmt.Errorf("%s: no pgporter binary", s.name)
	}
	if err := RequireLinkTools(); err != nil {
		return nil, err
	}
	var data, what string
	if s.SynthBytes > 0 {
		data, what = filepath.Join(env.Dir, "data"), fmt.Sprintf("a synthetic tree of %d kB shaped like the dump (pgbench rows and md5 text 3:1), smaller than the wan scenario's dump so that every tool finishes in minutes", s.SynthBytes>>10)
		if err := writeTree(data, s.SynthBytes); err != nil {
			return nil, err
		}
	} else {
		if data, _, err = s.data.get(ctx, env); err != nil {
			return nil, err
		}
		what = s.data.describe(env)
	}
	size, files, err := readTree(data)
	if err != nil {
		return nil, err
	}
	env.Logf("%s: %d bytes in %d files from %s", s.name, size, files, data)
	link, rsyncd, held, err := wanRig(ctx, s.Link, s.Profile, env.Dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, held.Close())
		}
	}()
	j := &lanJob{link: link.Link, data: data, size: size, dir: env.Dir, logf: env.Logf, name: s.name}
	tools := []Tool{
		&pgporterTool{job: j, name: "pgporter", bin: s.Pgporter, flags: s.SendFlags},
		&rsyncTool{job: j, d: rsyncd, name: "rsync -z", args: []string{"-z", "--compress-choice=zstd", "--compress-level=1"}},
		&rsyncTool{job: j, d: rsyncd, name: "rsync"},
		&tarTool{job: j},
	}
	return &Setup{
		Bytes:   size,
		Sides:   []string{"sender", "receiver"},
		Notes:   wanNotes(link, files, what),
		Tools:   emuLogged(link, env, s.name, tools),
		Settle:  settle,
		SpeedUp: &SpeedUp{Of: "pgporter", Over: "rsync -z"},
		Close:   held.Close,
	}, nil
}

func wanNotes(link *WANLink, files int, data string) map[string]string {
	// TCP's congestion control decides how rsync and nc take loss; the
	// namespaces start with the machine's unless --tcp-cc set one.
	cc, err := exec.Command("ip", "netns", "exec", link.Sender, "cat", "/proc/sys/net/ipv4/tcp_congestion_control").Output()
	tcp := strings.TrimSpace(string(cc))
	if err != nil {
		tcp = "unknown"
	}
	how := " (the machine's default, which the namespaces inherit)"
	if link.TCPCongestion != "" {
		how = " (--tcp-cc)"
	}
	return map[string]string{
		"tcp":           tcp + " congestion control" + how,
		"link":          link.Profile.String() + "; rate by tc tbf on the router's egress, delay and loss by the harness's user-space emulator (seed " + strconv.FormatUint(link.Profile.Seed, 10) + ")",
		"sender CPUs":   link.SenderCPUs,
		"receiver CPUs": link.ReceiverCPUs,
		"files":         strconv.Itoa(files),
		"data":          data,
		"fsync":         "pgporter syncs what it receives; rsync and tar do not",
	}
}

// emuLogged wraps each tool so that a run's log line has the emulator's
// counters: packets lost and delivered each way.
func emuLogged(link *WANLink, env Env, scenario string, tools []Tool) []Tool {
	out := make([]Tool, len(tools))
	for i, t := range tools {
		out[i] = &emuLogTool{Tool: t, link: link, logf: env.Logf, scenario: scenario}
	}
	return out
}

type emuLogTool struct {
	Tool
	link     *WANLink
	logf     func(string, ...any)
	scenario string
}

func (t *emuLogTool) Run(ctx context.Context, rep int) (Measure, error) {
	s0, c0 := t.link.Stats(), selfCPU()
	m, err := t.Tool.Run(ctx, rep)
	if err == nil {
		// The emulator runs in the harness, on the same two cores as the
		// tools: its CPU over the run (the harness's own, mostly the
		// emulator's) goes beside theirs.
		if m.Extra == nil {
			m.Extra = map[string]float64{}
		}
		m.Extra["harness_cpu_s"] = selfCPU() - c0
		t.logf("%s: %s: %s", t.scenario, t.Name(), emuDelta(s0, t.link.Stats()))
	}
	return m, err
}

// selfCPU returns the harness's own user+system CPU-seconds so far.
func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return tvSeconds(ru.Utime) + tvSeconds(ru.Stime)
}

// emuDelta describes what the emulator did between two readings.
func emuDelta(a, b netemu.Stats) string {
	to, back := b.ToHost, b.FromHost
	return fmt.Sprintf("path delivered %.1f MB / %d packets to the receiver, %.1f MB / %d back; lost %d and %d packets at random",
		float64(to.Bytes-a.ToHost.Bytes)/1e6, to.Delivered-a.ToHost.Delivered, float64(back.Bytes-a.FromHost.Bytes)/1e6, back.Delivered-a.FromHost.Delivered,
		to.Lost-a.ToHost.Lost, back.Lost-a.FromHost.Lost)
}

// wanData is the dump the WAN scenarios share, made once per harness run
// when the first of them prepares: a pg_dump -Fd -Z0 of pgbench -s Scale
// plus Scale×30,000 rows of the docs table (the LAN dump's proportions),
// and the same database dumped again after UpdatedRows scattered updates.
// With Env.Smoke it is a synthetic tree of smokeWANBytes and a copy with
// UpdatedRows rows moved, as an update moves them.
type wanData struct {
	Scale int

	mu   sync.Mutex // guards the fields below
	dir  string
	a, b string
	err  error
}

// smokeWANBytes is the size of the WAN scenarios' smoke tree.
const smokeWANBytes = 1 << 20

func (d *wanData) describe(env Env) string {
	if env.Smoke {
		return fmt.Sprintf("a synthetic tree of %d kB (pgbench rows and md5 text 3:1)", smokeWANBytes>>10)
	}
	return fmt.Sprintf("pg_dump -Fd -Z0 of pgbench -s %d plus %d rows of md5 text, jsonb and words", d.Scale, d.Scale*30_000)
}

// get returns the two trees, making them on first use.
func (d *wanData) get(ctx context.Context, env Env) (a, b string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.a != "" || d.err != nil {
		return d.a, d.b, d.err
	}
	d.dir, d.err = os.MkdirTemp("", "pgporter-bench-wandata-")
	if d.err != nil {
		return "", "", d.err
	}
	a, b = filepath.Join(d.dir, "dump"), filepath.Join(d.dir, "dump2")
	if env.Smoke {
		d.err = writeTree(a, smokeWANBytes)
		if d.err == nil {
			d.err = writeUpdated(a, b, UpdatedRows)
		}
	} else {
		env.Logf("wan: making the dump, and the dump after %d updates (%s)", UpdatedRows, d.describe(env))
		d.err = MakeDump(ctx, DumpOptions{Dir: a, Updated: b, Scale: d.Scale, Docs: d.Scale * 30_000})
	}
	if d.err != nil {
		d.err = fmt.Errorf("making the WAN scenarios' data: %w", d.err)
		return "", "", d.err
	}
	d.a, d.b = a, b
	return a, b, nil
}

// remove deletes the trees; RunAll calls it once every scenario has run.
func (d *wanData) remove() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dir == "" {
		return nil
	}
	return os.RemoveAll(d.dir)
}

// writeTree writes n bytes shaped like a small pg_dump -Fd directory: a
// table of pgbench rows (3/4 of n), one of md5 text (1/4), a toc.
func writeTree(dir string, n int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("making a tree: %w", err)
	}
	files := map[string][]byte{
		"3001.dat": synth.PgbenchRows(n * 3 / 4),
		"3002.dat": synth.MD5Rows(n / 4),
		"toc.dat":  synth.MD5Rows(2 << 10),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("making a tree: %w", err)
		}
	}
	return nil
}

// writeUpdated copies the tree a to b with k rows of its largest file
// "updated" as PostgreSQL and pg_dump would show it: each row, picked at
// evenly spread places, leaves its place and comes back, changed, at the end
// of the table's data (the new row version goes where there is free space,
// which in a freshly loaded table is its end).
func writeUpdated(a, b string, k int) error {
	if err := os.MkdirAll(b, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(a)
	if err != nil {
		return err
	}
	var largest string
	var most int64
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			return err
		}
		if fi.Size() > most {
			largest, most = e.Name(), fi.Size()
		}
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(a, e.Name()))
		if err != nil {
			return err
		}
		if e.Name() == largest {
			data = moveRows(data, k)
		}
		p := filepath.Join(b, e.Name())
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
		// A dump made later: rsync's quick check (size and mtime, to the
		// second) must not take an updated file of the same size for the
		// old one.
		later := time.Now().Add(time.Minute)
		if err := os.Chtimes(p, later, later); err != nil {
			return err
		}
	}
	return nil
}

// moveRows returns data (lines) with k lines, spread evenly, removed from
// their places and appended at the end with their last byte before the
// newline changed ('0' becomes '1', else '0'). A last line without a newline
// stays last.
func moveRows(data []byte, k int) []byte {
	lines := bytes.SplitAfter(data, []byte("\n"))
	full := len(lines)
	if full > 0 && !bytes.HasSuffix(lines[full-1], []byte("\n")) {
		full--
	}
	if k <= 0 || full == 0 {
		return data
	}
	k = min(k, full)
	step := full / k
	moved := make(map[int]bool, k)
	for i := range k {
		moved[i*step+step/2] = true
	}
	out := make([]byte, 0, len(data))
	var tail [][]byte
	for i, l := range lines[:full] {
		if moved[i] {
			c := bytes.Clone(l)
			if n := len(c); n >= 2 {
				if c[n-2] == '0' {
					c[n-2] = '1'
				} else {
					c[n-2] = '0'
				}
			}
			tail = append(tail, c)
			continue
		}
		out = append(out, l...)
	}
	for _, l := range tail {
		out = append(out, l...)
	}
	for _, l := range lines[full:] {
		out = append(out, l...)
	}
	return out
}

// wanRig sets up what the WAN scenarios share: the emulated path and an
// rsync daemon on its receiver, both closed by held.
func wanRig(ctx context.Context, lo LinkOptions, prof EmuProfile, dir string) (_ *WANLink, _ *rsyncd, held closers, err error) {
	link, err := NewWANLink(ctx, lo, prof)
	if err != nil {
		return nil, nil, nil, err
	}
	held.add(link.Close)
	rsyncd, err := startRsyncd(ctx, link.Link, filepath.Join(dir, "rsync"))
	if err != nil {
		return nil, nil, nil, errors.Join(err, held.Close())
	}
	held.add(rsyncd.Close)
	return link, rsyncd, held, nil
}
