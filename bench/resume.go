package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Resume is issue 16's resume figure (the retired scripts/bench-transfer's
// part b) on the LAN scenario's link and data: a transfer throttled,
// killed with SIGKILL once half of the data's bytes are on the receiver,
// then run again; only the second run is measured, and its wire bytes are
// set against a cold run's.
//   - pgporter send: each run has fresh homes and a fresh mover serve; the
//     first send (--bwlimit) is killed when the daemon's
//     pgporter_mover_durable_bytes_total (its --metrics, on a Unix socket,
//     which the network namespaces do not hide) reaches half of the data;
//     the second, the same command without the limit, resumes from what
//     the receiver made durable.
//   - rsync -z --partial: the first run (--bwlimit) is killed when the
//     files in its destination, its temporary files included, hold half of
//     the data; the daemon's worker then keeps what it received (--partial)
//     and the second run sends the rest with rsync's delta algorithm
//     against it: rsync's own resume.
//
// Beside them, each tool's cold run ("(cold)") to a fresh destination: the
// table's ratio of the resumed pgporter's wire bytes over the cold one's
// is issue 16's target, at most ResumeTarget.
type Resume struct {
	// Data is the directory to send; "" makes the LAN scenario's.
	Data      string
	Pgporter  string
	SendFlags []string
	Link      LinkOptions // Rate defaults to 1gbit
}

var _ Scenario = (*Resume)(nil)

const (
	// ResumeTarget is issue 16's bound on a resumed run's wire bytes, as a
	// fraction of a cold run's.
	ResumeTarget = 0.55
	// resumeSpan is about how many seconds a whole throttled first run
	// would take: the kill comes after about half of it.
	resumeSpan = 6
	// killTimeout bounds a first run's wait for its kill.
	killTimeout = 5 * time.Minute
)

func (*Resume) Name() string { return "resume" }

func (*Resume) Describe() string {
	return "a transfer over the lan link killed (SIGKILL) at half of the data on the receiver, then run again: the second run against a cold one"
}

func (s *Resume) Prepare(ctx context.Context, env Env) (_ *Setup, err error) {
	if s.Pgporter == "" {
		return nil, errors.New("resume: no pgporter binary")
	}
	if err := RequireLinkTools(); err != nil {
		return nil, err
	}
	f, err := newLANFixture(ctx, env, "resume", s.Data, s.Link)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, f.held.Close())
		}
	}()
	j := f.job
	zstd1 := []string{"-z", "--compress-choice=zstd", "--compress-level=1"}
	// Both receivers make data durable in steps of a 16th of it, not
	// 64 MiB, so that the kill can fall near half of a dump of 200 MB.
	step := syncStep(j.size)
	serve := []string{"--sync-bytes", strconv.FormatInt(step, 10)}
	pcold := &pgporterTool{job: j, name: "pgporter send (cold)", bin: s.Pgporter, flags: s.SendFlags, serve: serve}
	rcold := &rsyncTool{job: j, d: f.rsyncd, name: "rsync -z (cold)", args: zstd1}
	pres := &resumePgporter{t: &pgporterTool{job: j, name: "pgporter send (resumed)", bin: s.Pgporter, flags: s.SendFlags, serve: serve}}
	rres := &resumeRsync{job: j, d: f.rsyncd, name: "rsync -z --partial (resumed)", args: append(zstd1, "--partial")}

	// The calibration, untimed: each tool's cold bytes, for its --bwlimit
	// and its wire_pct.
	env.Logf("resume: pgporter send, calibration run")
	if pres.cold, err = calibrate(ctx, pcold); err != nil {
		return nil, fmt.Errorf("resume: calibrating pgporter: %w", err)
	}
	env.Logf("resume: rsync -z, calibration run")
	m, err := rcold.Run(ctx, -1)
	if err != nil {
		return nil, fmt.Errorf("resume: calibrating rsync: %w", err)
	}
	rres.cold = m.WireBytes

	notes := f.notes()
	notes["resume"] = fmt.Sprintf("the first run limited (--bwlimit of each tool) to a %dth of its cold run's wire bytes per second, "+
		"killed with SIGKILL once half of the data is on the receiver (pgporter: mover serve's pgporter_mover_durable_bytes_total, "+
		"which moves in steps of --sync-bytes, here %s (both pgporter rows), or of a file; rsync: the bytes of its destination's files, temporary ones included), "+
		"then run again without the limit; only the second run is measured; killed_at_pct: the receiver's bytes at the kill over the data's; "+
		"wire_pct: the second run's link bytes over an untimed cold run's; chunks_pct: pgporter's chunks sent likewise", resumeSpan, fmt.Sprintf("%.1f MiB", float64(step)/(1<<20)))
	notes["cold wire"] = fmt.Sprintf("pgporter %.1f MB (%d chunks), rsync -z %.1f MB", float64(pres.cold.wire)/1e6, pres.cold.chunks, float64(rres.cold)/1e6)
	return &Setup{
		Bytes:  j.size,
		Sides:  []string{"sender", "receiver"},
		Notes:  notes,
		Tools:  []Tool{wireMB{pcold}, wireMB{pres}, wireMB{rcold}, wireMB{rres}},
		Settle: settle,
		Ratio:  &Ratio{Key: "wire_MB", Of: pres.Name(), Over: pcold.Name(), Target: ResumeTarget, AtMost: true},
		Close:  f.held.Close,
	}, nil
}

// wireMB is a tool whose runs also give their link bytes as the Extra
// figure wire_MB, which a Ratio can take.
type wireMB struct{ Tool }

func (w wireMB) Run(ctx context.Context, rep int) (Measure, error) {
	m, err := w.Tool.Run(ctx, rep)
	if err == nil {
		setExtra(&m, "wire_MB", float64(m.WireBytes)/1e6)
	}
	return m, err
}

func setExtra(m *Measure, key string, v float64) {
	if m.Extra == nil {
		m.Extra = map[string]float64{}
	}
	m.Extra[key] = v
}

// syncStep returns the --sync-bytes of the resume scenario's receivers
// for size bytes of data: a 16th of it, within 1 MiB and mover serve's
// default of 64 MiB.
func syncStep(size int64) int64 { return min(max(size/16, 1<<20), 64<<20) }

// bwlimit returns the rate, in bytes per second, at which a transfer of
// wire bytes takes about resumeSpan seconds; at least 64 KiB/s.
func bwlimit(wire int64) int64 { return max(wire/resumeSpan, 64<<10) }

// interrupt starts cmd (named what in errors), polls progress until it reaches half, then kills
// cmd's process with SIGKILL (by its PID: 'ip netns exec' and taskset exec
// in place, so cmd must not run under GNU time, which would survive as the
// parent) and waits for it. It returns progress's reading at the kill. It
// fails if cmd exits first, or after killTimeout. cmd has exited when it
// returns.
func interrupt(ctx context.Context, what string, cmd *exec.Cmd, half int64, progress func(context.Context) (int64, error)) (int64, error) {
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	d, err := startDaemon(cmd)
	if err != nil {
		return 0, err
	}
	kill := func() {
		_ = cmd.Process.Kill()
		<-d.exited
	}
	ctx, cancel := context.WithTimeout(ctx, killTimeout)
	defer cancel()
	for {
		at, err := progress(ctx)
		if err != nil {
			kill()
			return 0, err
		}
		if at >= half {
			kill()
			return at, nil
		}
		select {
		case <-d.exited:
			return 0, fmt.Errorf("%s ended (%v) before the kill, at %d of %d bytes: %s", what, d.err, at, half, tail(stderr.String()))
		case <-ctx.Done():
			kill()
			return 0, fmt.Errorf("waiting for %d bytes on the receiver: %w", half, ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}

// ---- pgporter ----

type resumePgporter struct {
	t    *pgporterTool
	cold coldRun
}

// coldRun is what a cold send put on the link.
type coldRun struct {
	wire   int64 // link bytes
	chunks int64 // chunks sent, by send's count
}

func (r *resumePgporter) Name() string { return r.t.name }

// calibrate sends t's data once to a fresh receiver and returns what it
// put on the link.
func calibrate(ctx context.Context, t *pgporterTool) (_ coldRun, err error) {
	rig, err := t.newRig(ctx, filepath.Join(t.job.dir, "resume-calibration"))
	if err != nil {
		return coldRun{}, err
	}
	defer func() { err = errors.Join(err, rig.close()) }()
	m, err := rig.measure(ctx, t.job.data, filepath.Join(rig.root, "d"), t.job.size)
	return coldRun{wire: m.WireBytes, chunks: rig.last.ChunksSent}, err
}

func (r *resumePgporter) Run(ctx context.Context, rep int) (_ Measure, err error) {
	j := r.t.job
	h := filepath.Join(j.dir, fmt.Sprintf("resume-pgporter-%d", rep))
	sock := h + "-metrics.sock"
	defer os.Remove(sock)
	rig, err := r.t.newRig(ctx, h, "--metrics", "unix:"+sock)
	if err != nil {
		return Measure{}, err
	}
	defer func() { err = errors.Join(err, rig.close()) }()
	dest := filepath.Join(rig.root, "d")

	durable := metricsReader(sock, "pgporter_mover_durable_bytes_total")
	limit := strconv.FormatInt(bwlimit(r.cold.wire), 10)
	at, err := interrupt(ctx, "pgporter send", rig.sendCmd(ctx, "", j.data, dest, "--bwlimit", limit), j.size/2, durable)
	if err != nil {
		return Measure{}, fmt.Errorf("the first send: %w (log %s)", err, rig.srvLogName)
	}
	j.logf("resume: %s: the first send (--bwlimit %s) killed at %d durable bytes", r.t.name, limit, at)
	m, err := rig.measure(ctx, j.data, dest, j.size)
	if err != nil {
		return Measure{}, fmt.Errorf("the second send: %w", err)
	}
	if err := sameTree(j.data, dest); err != nil {
		return Measure{}, err
	}
	j.logf("resume: %s: the second send found %d bytes durable", r.t.name, rig.last.ResumedBytes)
	setExtra(&m, "killed_at_pct", 100*float64(at)/float64(j.size))
	setExtra(&m, "wire_pct", 100*float64(m.WireBytes)/float64(r.cold.wire))
	if r.cold.chunks > 0 {
		setExtra(&m, "chunks_pct", 100*float64(rig.last.ChunksSent)/float64(r.cold.chunks))
	}
	return m, nil
}

// metricsReader returns a function that reads the counter name from the
// Prometheus text that 'mover serve --metrics unix:SOCK' serves; 0 while
// the socket does not answer yet.
func metricsReader(sock, name string) func(context.Context) (int64, error) {
	client := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	return func(ctx context.Context) (int64, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://mover/metrics", nil)
		if err != nil {
			return 0, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil // not listening yet, or busy: the next poll asks again
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("reading metrics: %s", resp.Status)
		}
		v, err := parseCounter(resp.Body, name)
		return int64(v), err
	}
}

// parseCounter returns the value of the unlabelled sample name in
// Prometheus's text format; 0 when there is none.
func parseCounter(r io.Reader, name string) (float64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != name {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			return 0, fmt.Errorf("parsing %s: %w", name, err)
		}
		return v, nil
	}
	return 0, sc.Err()
}

// ---- rsync --partial ----

type resumeRsync struct {
	job  *lanJob
	d    *rsyncd
	name string
	args []string
	cold int64 // link bytes of a cold run
}

func (r *resumeRsync) Name() string { return r.name }

func (r *resumeRsync) Run(ctx context.Context, rep int) (Measure, error) {
	j := r.job
	sub := fmt.Sprintf("resume-%s-%d", benchLabel(r.name), rep)
	dest := filepath.Join(r.d.root, sub)
	defer os.RemoveAll(dest)
	if err := os.RemoveAll(dest); err != nil {
		return Measure{}, err
	}
	// rsync's --bwlimit is in KiB per second.
	limit := strconv.FormatInt(max(bwlimit(r.cold)>>10, 1), 10)
	args := append(append([]string{"-a"}, r.args...), "--bwlimit="+limit, j.data+"/", fmt.Sprintf("rsync://%s:%d/bench/%s/", j.link.ReceiverAddr, rsyncPort, sub))
	received := func(context.Context) (int64, error) {
		n, _, err := treeSize(dest)
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil // not made yet, or a temporary file renamed during the walk
		}
		return n, err
	}
	at, err := interrupt(ctx, "rsync", j.link.SenderCmd(ctx, "", "rsync", args...), j.size/2, received)
	if err != nil {
		return Measure{}, fmt.Errorf("the first rsync: %w", err)
	}
	// The daemon's worker keeps the partial file as it exits.
	pid := r.d.cmd.Process.Pid
	if err := pollUntil(ctx, func() (bool, error) {
		busy, err := hasChildren(pid)
		return !busy, err
	}); err != nil {
		return Measure{}, fmt.Errorf("waiting for the rsync daemon's worker: %w", err)
	}
	kept, _, err := treeSize(dest)
	if err != nil {
		return Measure{}, err
	}
	j.logf("resume: %s: the first rsync (--bwlimit=%s) killed at %d bytes received; %d kept", r.name, limit, at, kept)
	m, err := j.rsyncTo(ctx, r.d, r.args, sub, dest)
	if err != nil {
		return Measure{}, fmt.Errorf("the second rsync: %w", err)
	}
	if err := sameTree(j.data, dest); err != nil {
		return Measure{}, err
	}
	setExtra(&m, "killed_at_pct", 100*float64(at)/float64(j.size))
	setExtra(&m, "wire_pct", 100*float64(m.WireBytes)/float64(r.cold))
	return m, nil
}
