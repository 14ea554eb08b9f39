package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/pgporter/pgporter/internal/netemu"
)

// Outage is scenario 4: the WAN scenario's cold transfer, on ProfileWAN,
// with the path down (every packet dropped, both ways, nobody told) for
// Length once half of the transfer has crossed it. Each tool is run as a
// user would to get the data there in the end: pgporter send with its
// defaults (it reconnects for --retry-for, 2 minutes) and rerun, which
// resumes, if it fails; rsync with --partial, rerun until it succeeds;
// tar | zstd | nc rerun from the start. Measured: the total time and wire
// bytes to completion, and the attempts.
//
// "Half" is by bytes through the emulator towards the receiver: Prepare runs
// each tool once without the outage, untimed, and each measured run arms the
// outage at half of what that tool's calibration run put through. The
// position each run actually had (its bytes before the outage over all of
// its bytes) is kept as outage_at_pct.
type Outage struct {
	Profile   EmuProfile
	Length    time.Duration // 0 means 20 s
	Pgporter  string
	SendFlags []string
	Link      LinkOptions
	data      *wanData
}

var _ Scenario = (*Outage)(nil)

// maxAttempts bounds the reruns of a tool in the outage scenario.
const maxAttempts = 10

func (*Outage) Name() string { return "outage" }

func (s *Outage) Describe() string {
	return "the wan transfer with the path down for a while at half of it: time and wire bytes to completion, reruns included"
}

func (s *Outage) length() time.Duration {
	if s.Length <= 0 {
		return 20 * time.Second
	}
	return s.Length
}

func (s *Outage) Prepare(ctx context.Context, env Env) (_ *Setup, err error) {
	if s.Pgporter == "" {
		return nil, errors.New("outage: no pgporter binary")
	}
	if err := RequireLinkTools(); err != nil {
		return nil, err
	}
	data, _, err := s.data.get(ctx, env)
	if err != nil {
		return nil, err
	}
	size, files, err := readTree(data)
	if err != nil {
		return nil, err
	}
	link, rsyncd, held, err := wanRig(ctx, s.Link, s.Profile, env.Dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, held.Close())
		}
	}()
	j := &lanJob{link: link.Link, data: data, size: size, dir: env.Dir, logf: env.Logf, name: "outage"}
	zstd1 := []string{"-z", "--compress-choice=zstd", "--compress-level=1"}
	o := &outageRig{link: link, length: s.length(), logf: env.Logf}
	pp := &pgporterTool{job: j, name: "pgporter", bin: s.Pgporter, flags: s.SendFlags}
	tools := []*outageTool{
		{rig: o, name: "pgporter", cold: pp, r: &outagePgporter{t: pp}},
		{rig: o, name: "rsync -z --partial", cold: &rsyncTool{job: j, d: rsyncd, name: "rsync -z", args: zstd1},
			r: &outageRsync{job: j, d: rsyncd, label: "rsync-z", args: append(zstd1, "--partial")}},
		{rig: o, name: "rsync --partial", cold: &rsyncTool{job: j, d: rsyncd, name: "rsync"},
			r: &outageRsync{job: j, d: rsyncd, label: "rsync", args: []string{"--partial"}}},
		{rig: o, name: "tar|zstd|nc", cold: &tarTool{job: j}, r: &outageTar{t: &tarTool{job: j}}},
	}
	// The calibration: what each tool puts through the path without the
	// outage, so that its outage comes at half of it.
	for _, t := range tools {
		before := link.Stats().Admitted
		env.Logf("outage: %s, calibration run without the outage", t.name)
		if _, err := t.cold.Run(ctx, -1); err != nil {
			return nil, fmt.Errorf("outage: calibrating %s: %w", t.name, err)
		}
		t.half = (link.Stats().Admitted - before) / 2
	}
	var list []Tool
	for _, t := range tools {
		list = append(list, t)
	}
	notes := wanNotes(link, files, s.data.describe(env))
	notes["outage"] = fmt.Sprintf("%s with every packet dropped both ways, from when half of the bytes the tool put through the path in an untimed run without it have crossed (outage_at_pct: where it fell in the measured run)", s.length())
	notes["reruns"] = "pgporter send with its defaults (--retry-for 2m), rerun if it fails; rsync --partial rerun until it succeeds; tar|zstd|nc rerun from the start; attempts counts the runs"
	return &Setup{
		Bytes:   size,
		Sides:   []string{"sender", "receiver"},
		Notes:   notes,
		Tools:   list,
		Settle:  settle,
		SpeedUp: &SpeedUp{Of: "pgporter", Over: "rsync -z --partial"},
		Close:   held.Close,
	}, nil
}

// outageRig is what the outage tools share.
type outageRig struct {
	link   *WANLink
	length time.Duration
	logf   func(string, ...any)
}

// outageTool is one tool of the outage scenario: r runs it, cold is the
// tool's plain run for the calibration, half the bytes at which its outage
// starts.
type outageTool struct {
	rig  *outageRig
	name string
	cold Tool
	r    retrier
	half int64
}

// retrier is a tool that a user reruns until it succeeds.
type retrier interface {
	// setup prepares a run, untimed: what every attempt of the run uses.
	// It adds what must be undone to st.cleanup, even when it fails.
	setup(ctx context.Context, st *attemptState) error
	// attempt runs the tool once and adds its CPU and peak RSS to st.
	attempt(ctx context.Context, st *attemptState) error
}

// attemptState is a run's state across its attempts.
type attemptState struct {
	rep, attempt int // attempt counts from 1
	cpuSender    float64
	cpuReceiver  float64
	rssSender    int64
	rssReceiver  int64
	extra        map[string]float64
	cleanup      []func() error
	// dest, when set, is where the tree arrives, checked against size
	// once the run succeeded.
	dest string
	size int64
}

func (t *outageTool) Name() string { return t.name }

func (t *outageTool) Run(ctx context.Context, rep int) (_ Measure, err error) {
	r := t.rig
	st := &attemptState{rep: rep, extra: map[string]float64{}}
	defer func() {
		for i := len(st.cleanup) - 1; i >= 0; i-- {
			err = errors.Join(err, st.cleanup[i]())
		}
	}()
	if err := t.r.setup(ctx, st); err != nil {
		return Measure{}, err
	}
	tx0, err := r.link.SenderTxBytes(ctx)
	if err != nil {
		return Measure{}, err
	}
	s0 := r.link.Stats()
	r.link.ArmOutage(t.half, r.length)
	defer r.link.ArmOutage(-1, 0)
	t0 := time.Now()
	for st.attempt = 1; ; st.attempt++ {
		err := t.r.attempt(ctx, st)
		if err == nil {
			break
		}
		if ctx.Err() != nil || st.attempt == maxAttempts {
			return Measure{}, fmt.Errorf("attempt %d: %w", st.attempt, err)
		}
		r.logf("outage: %s: attempt %d failed, rerunning: %v", t.name, st.attempt, err)
	}
	wall := time.Since(t0)
	s1 := r.link.Stats()
	tx1, err := r.link.SenderTxBytes(ctx)
	if err != nil {
		return Measure{}, err
	}
	at, err := outagePosition(s0, s1, t0)
	if err != nil {
		return Measure{}, fmt.Errorf("%s: %w (armed at %d bytes)", t.name, err, t.half)
	}
	if st.dest != "" {
		if err := checkSize(st.dest, st.size); err != nil {
			return Measure{}, err
		}
	}
	r.logf("outage: %s: %d attempts, %.1f s, the outage at %.0f%% of its bytes; %s", t.name, st.attempt, wall.Seconds(), at, emuDelta(s0, s1))
	st.extra["attempts"] = float64(st.attempt)
	st.extra["outage_at_pct"] = at
	return Measure{
		Wall: wall, CPUSender: st.cpuSender, CPUReceiver: st.cpuReceiver,
		RSSSender: st.rssSender, RSSReceiver: st.rssReceiver, WireBytes: tx1 - tx0, Extra: st.extra,
	}, nil
}

// outagePosition returns where the outage fell in a run, in percent of the
// bytes the run put through the path towards the receiver, from the
// emulator's readings before (s0, taken before the run started at t0) and
// after it; an error if no outage began during the run.
func outagePosition(s0, s1 netemu.Stats, t0 time.Time) (float64, error) {
	if s1.OutageStart.IsZero() || s1.OutageStart.Before(t0) {
		return 0, errors.New("the outage never began: the run put fewer bytes through the path than its calibration run's half")
	}
	total := s1.Admitted - s0.Admitted
	if total <= 0 {
		return 0, errors.New("no bytes crossed the path")
	}
	return 100 * float64(s1.OutageAfter-s0.Admitted) / float64(total), nil
}

// ---- pgporter: one rig per run, send rerun (it resumes) until it succeeds ----

type outagePgporter struct {
	t   *pgporterTool
	rig *pgporterRig // this run's
	c0  float64      // mover serve's CPU-seconds at the run's start
}

func (o *outagePgporter) setup(ctx context.Context, st *attemptState) error {
	rig, err := o.t.newRig(ctx, filepath.Join(o.t.job.dir, fmt.Sprintf("outage-pgporter-%d", st.rep)))
	if err != nil {
		return err
	}
	o.rig = rig
	st.cleanup = append(st.cleanup, rig.close)
	st.dest, st.size = filepath.Join(rig.root, "d"), o.t.job.size
	o.c0, err = procCPU(rig.srv.cmd.Process.Pid)
	return err
}

func (o *outagePgporter) attempt(ctx context.Context, st *attemptState) error {
	cmd, _, sr, err := o.rig.send(ctx, o.t.job.data, st.dest)
	if cmd.ProcessState != nil {
		st.cpuSender += usage(cmd)
		if rss, rerr := readPeakRSS(o.rig.h + "-send.rss"); rerr == nil {
			st.rssSender = max(st.rssSender, rss)
		}
	}
	pid := o.rig.srv.cmd.Process.Pid
	c1, cerr := procCPU(pid)
	hwm, herr := procHWM(pid)
	if err != nil {
		return err
	}
	if err := errors.Join(cerr, herr); err != nil {
		return err
	}
	st.cpuReceiver, st.rssReceiver = c1-o.c0, hwm
	st.extra["reconnects"] = float64(sr.Reconnects)
	st.extra["reported_wire_MB"] = float64(sr.WireBytes) / 1e6
	return nil
}

// ---- rsync --partial: rerun into the same directory until it succeeds ----

type outageRsync struct {
	job   *lanJob
	d     *rsyncd
	label string // names the run's directory
	args  []string
	sub   string  // this run's directory in the daemon's module
	c0    float64 // the daemon's CPU-seconds at the run's start
}

func (o *outageRsync) setup(_ context.Context, st *attemptState) error {
	o.sub = fmt.Sprintf("outage-%s-%d", o.label, st.rep)
	st.dest, st.size = filepath.Join(o.d.root, o.sub), o.job.size
	st.cleanup = append(st.cleanup, func() error { return os.RemoveAll(st.dest) })
	var err error
	o.c0, err = procCPU(o.d.cmd.Process.Pid)
	return err
}

func (o *outageRsync) attempt(ctx context.Context, st *attemptState) error {
	j := o.job
	args := append(append([]string{"-a"}, o.args...), j.data+"/", fmt.Sprintf("rsync://%s:%d/bench/%s/", j.link.ReceiverAddr, rsyncPort, o.sub))
	peak := filepath.Join(j.dir, "rsync.rss")
	cmd := j.link.SenderCmd(ctx, peak, "rsync", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if cmd.ProcessState != nil {
		st.cpuSender += usage(cmd)
		if rss, rerr := readPeakRSS(peak); rerr == nil {
			st.rssSender = max(st.rssSender, rss)
		}
	}
	if err != nil {
		return fmt.Errorf("rsync: %w: %s", err, tail(stderr.String()))
	}
	pid := o.d.cmd.Process.Pid
	if err := pollUntil(ctx, func() (bool, error) {
		busy, err := hasChildren(pid)
		return !busy, err
	}); err != nil {
		return fmt.Errorf("waiting for the rsync daemon's worker: %w", err)
	}
	c1, err := procCPU(pid)
	if err != nil {
		return err
	}
	st.cpuReceiver = c1 - o.c0
	return nil
}

// ---- tar | zstd | nc: rerun from the start until it succeeds ----

// outageTar reruns the LAN tool whole: nothing resumes. The CPU of a failed
// attempt is not counted.
type outageTar struct{ t *tarTool }

func (*outageTar) setup(context.Context, *attemptState) error { return nil }

func (o *outageTar) attempt(ctx context.Context, st *attemptState) error {
	m, err := o.t.Run(ctx, st.rep)
	if err != nil {
		return err
	}
	st.cpuSender += m.CPUSender
	st.cpuReceiver += m.CPUReceiver
	st.rssSender = max(st.rssSender, m.RSSSender)
	st.rssReceiver = max(st.rssReceiver, m.RSSReceiver)
	return nil
}
