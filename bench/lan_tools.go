package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// startTimeout bounds the wait for a daemon to listen or a worker to be reaped.
const startTimeout = 30 * time.Second

// pollEvery is the step of the polls below: they watch another process's
// state (a listening socket, its children), which signals nothing.
const pollEvery = 20 * time.Millisecond

// waitListening polls the namespace's TCP listeners until port is among
// them, cmd exits, or the deadline passes.
func waitListening(ctx context.Context, ns string, port int, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "ss", "-Hltn", "sport = :"+strconv.Itoa(port)).Output()
		if err == nil && len(bytes.TrimSpace(out)) > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for a listener on port %d: %w", port, ctx.Err())
		case <-exited:
			return fmt.Errorf("exited before listening on port %d", port)
		case <-time.After(pollEvery):
		}
	}
}

// daemon is a started process with a channel closed when it exits.
type daemon struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // Wait's, once exited is closed
}

func startDaemon(cmd *exec.Cmd) (*daemon, error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", cmd.Args, err)
	}
	d := &daemon{cmd: cmd, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.exited)
	}()
	return d, nil
}

// stop sends SIGTERM, and SIGKILL after 10 s, and waits for the exit.
func (d *daemon) stop() error {
	select {
	case <-d.exited:
		return nil
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	return nil
}

// ---- rsync ----

type rsyncd struct {
	*daemon
	root string
}

func startRsyncd(ctx context.Context, l *Link, dir string) (*rsyncd, error) {
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("rsync daemon: %w", err)
	}
	conf := filepath.Join(dir, "rsyncd.conf")
	err := os.WriteFile(conf, []byte("use chroot = no\n[bench]\npath = "+root+"\nread only = no\nuid = root\ngid = root\n"), 0o644)
	if err != nil {
		return nil, fmt.Errorf("rsync daemon: %w", err)
	}
	// Not bound to ctx: the scenario's Close stops it.
	cmd := l.ReceiverCmd(context.Background(), "", "rsync", "--daemon", "--no-detach", "--config="+conf,
		"--address", l.ReceiverAddr, "--port", strconv.Itoa(rsyncPort), "--log-file="+filepath.Join(dir, "rsyncd.log"))
	d, err := startDaemon(cmd)
	if err != nil {
		return nil, err
	}
	if err := waitListening(ctx, l.Receiver, rsyncPort, d.exited); err != nil {
		return nil, errors.Join(fmt.Errorf("rsync daemon: %w", err), d.stop())
	}
	return &rsyncd{daemon: d, root: root}, nil
}

func (d *rsyncd) Close() error { return d.stop() }

type rsyncTool struct {
	job  *lanJob
	d    *rsyncd
	name string
	args []string
}

func (t *rsyncTool) Name() string { return t.name }

func (t *rsyncTool) Run(ctx context.Context, rep int) (Measure, error) {
	sub := fmt.Sprintf("%s-%d", benchLabel(t.name), rep)
	dest := filepath.Join(t.d.root, sub)
	defer os.RemoveAll(dest)
	return t.job.rsyncTo(ctx, t.d, t.args, sub, dest)
}

// rsyncTo runs 'rsync -a ARGS' of the job's data to the daemon's module
// directory sub (dest on the receiver) and measures it.
func (j *lanJob) rsyncTo(ctx context.Context, d *rsyncd, args []string, sub, dest string) (Measure, error) {
	pid := d.cmd.Process.Pid
	c0, err := procCPU(pid)
	if err != nil {
		return Measure{}, err
	}
	tx0, err := j.link.SenderTxBytes(ctx)
	if err != nil {
		return Measure{}, err
	}
	args = append(append([]string{"-a"}, args...), j.data+"/", fmt.Sprintf("rsync://%s:%d/bench/%s/", j.link.ReceiverAddr, rsyncPort, sub))
	peak := filepath.Join(j.dir, "rsync.rss")
	cmd := j.link.SenderCmd(ctx, peak, "rsync", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	t0 := time.Now()
	err = cmd.Run()
	wall := time.Since(t0)
	if err != nil {
		return Measure{}, fmt.Errorf("rsync: %w: %s", err, tail(stderr.String()))
	}
	// The daemon's worker for this connection counts in the daemon's
	// cutime/cstime once the daemon has reaped it.
	if err := pollUntil(ctx, func() (bool, error) {
		busy, err := hasChildren(pid)
		return !busy, err
	}); err != nil {
		return Measure{}, fmt.Errorf("waiting for the rsync daemon's worker: %w", err)
	}
	c1, err := procCPU(pid)
	if err != nil {
		return Measure{}, err
	}
	wire, rss, err := j.afterRun(ctx, tx0, dest, peak)
	if err != nil {
		return Measure{}, err
	}
	return Measure{Wall: wall, CPUSender: usage(cmd), RSSSender: rss, CPUReceiver: c1 - c0, WireBytes: wire}, nil
}

// afterRun ends a run's measure: the bytes the link carried since the
// sender's counter read tx0, the tree received at dest checked against the
// data, and the sender's peak RSS, which GNU time wrote to peak.
func (j *lanJob) afterRun(ctx context.Context, tx0 int64, dest, peak string) (wire, rss int64, err error) {
	return j.afterRunSize(ctx, tx0, dest, peak, j.size)
}

// afterRunSize is afterRun for a tree of size bytes other than the job's.
func (j *lanJob) afterRunSize(ctx context.Context, tx0 int64, dest, peak string, size int64) (wire, rss int64, err error) {
	tx1, err := j.link.SenderTxBytes(ctx)
	if err != nil {
		return 0, 0, err
	}
	if err := checkSize(dest, size); err != nil {
		return 0, 0, err
	}
	rss, err = readPeakRSS(peak)
	return tx1 - tx0, rss, err
}

// pollUntil calls done every pollEvery until it returns true, an error, or
// startTimeout passes.
func pollUntil(ctx context.Context, done func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for {
		ok, err := done()
		if ok || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

// ---- pgporter ----

type pgporterTool struct {
	job   *lanJob
	name  string
	bin   string
	flags []string
	perf  []string // a command line that runs pgporter send, e.g. perfRecord's; nil runs it alone
	serve []string // extra flags of the receiver's mover serve
}

func (t *pgporterTool) Name() string { return t.name }

func (t *pgporterTool) Run(ctx context.Context, rep int) (_ Measure, err error) {
	j := t.job
	rig, err := t.newRig(ctx, filepath.Join(j.dir, fmt.Sprintf("%s-%d", benchLabel(t.name), rep)))
	if err != nil {
		return Measure{}, err
	}
	defer func() { err = errors.Join(err, rig.close()) }()
	return rig.measure(ctx, j.data, filepath.Join(rig.root, "d"), j.size)
}

// pgporterRig is a sender home, a receiver home that trusts it, and a
// 'mover serve' of the receiver in the link's receiving namespace: what one
// run of a pgporter tool uses, and what a resumed or delta send keeps.
type pgporterRig struct {
	t          *pgporterTool
	h          string // holds the homes, the root and the logs
	hs, root   string // the sender's home, the receiver's root
	rid, addr  string // the receiver's peer ID and address
	srv        *daemon
	srvLogName string
	last       sendResult // the summary of measure's send
}

// newRig makes the homes under h and starts the receiver, with the tool's
// serve flags and serveArgs added to its command line. The caller calls
// close.
func (t *pgporterTool) newRig(ctx context.Context, h string, serveArgs ...string) (_ *pgporterRig, err error) {
	j := t.job
	r := &pgporterRig{t: t, h: h, hs: filepath.Join(h, "sender"), root: filepath.Join(h, "root")}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.close())
		}
	}()
	hr := filepath.Join(h, "receiver")
	sid, err := t.initHome(ctx, r.hs)
	if err != nil {
		return nil, err
	}
	if r.rid, err = t.initHome(ctx, hr); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, t.bin, "mover", "trust", sid, "--allow", "send", "--home", hr).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgporter mover trust: %w: %s", err, tail(string(out)))
	}
	if err := os.MkdirAll(r.root, 0o755); err != nil {
		return nil, err
	}

	r.addr = fmt.Sprintf("%s:%d", j.link.ReceiverAddr, pgporterPort)
	srvCmd := j.link.ReceiverCmd(context.Background(), "", t.bin, append(append([]string{"mover", "serve", "--home", hr, "--listen", r.addr, "--root", r.root}, t.serve...), serveArgs...)...)
	r.srvLogName = h + "-serve.log"
	srvLog, err := os.Create(r.srvLogName)
	if err != nil {
		return nil, err
	}
	defer srvLog.Close() // the server holds its own copy
	srvCmd.Stderr = srvLog
	// An os.Pipe rather than StdoutPipe: the daemon's Wait runs while the
	// output is still read, and must not close the reading end.
	stdout, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	srvCmd.Stdout = w
	r.srv, err = startDaemon(srvCmd)
	w.Close() // the server holds its own copy
	if err != nil {
		stdout.Close()
		return nil, err
	}
	if _, err := waitLine(ctx, stdout, "listening on ", r.srv.exited); err != nil {
		return nil, fmt.Errorf("pgporter mover serve: %w (log %s)", err, r.srvLogName)
	}
	return r, nil
}

// close stops the receiver and removes the homes, the root and the logs.
func (r *pgporterRig) close() error {
	var err error
	if r.srv != nil {
		err = r.srv.stop()
	}
	for _, p := range []string{r.h, r.srvLogName, r.h + "-send.rss"} {
		if p != "" {
			err = errors.Join(err, os.RemoveAll(p))
		}
	}
	return err
}

// send runs 'pgporter send --json' of src to dest once, under GNU time
// (peak RSS to r.h-send.rss), and returns the finished command, its wall
// time and its summary.
func (r *pgporterRig) send(ctx context.Context, src, dest string) (*exec.Cmd, time.Duration, sendResult, error) {
	cmd := r.sendCmd(ctx, r.h+"-send.rss", src, dest)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	if err != nil {
		return cmd, wall, sendResult{}, fmt.Errorf("pgporter send: %w: %s", err, tail(stderr.String()))
	}
	sr, err := parseSendJSON(out.Bytes())
	return cmd, wall, sr, err
}

// sendCmd returns the command 'pgporter send --json' of src to dest in the
// sender's namespace, with the tool's flags and then extra; under GNU time
// writing its peak RSS to peak unless peak is "".
func (r *pgporterRig) sendCmd(ctx context.Context, peak, src, dest string, extra ...string) *exec.Cmd {
	t := r.t
	args := append(append([]string{"send", "--home", r.hs, "--to", r.addr, "--peer", r.rid, "--json"}, t.flags...), extra...)
	name, args := wrapCmd(t.perf, t.bin, append(args, src, dest)...)
	return t.job.link.SenderCmd(ctx, peak, name, args...)
}

// receiverMark is where a run's measure of the rig starts: the receiving
// mover's CPU-seconds and the bytes the sender has put on the link.
type receiverMark struct {
	cpu float64
	tx  int64
}

// mark reads the receiver's CPU and the link's bytes before a run.
func (r *pgporterRig) mark(ctx context.Context) (receiverMark, error) {
	cpu, err := procCPU(r.srv.cmd.Process.Pid)
	if err != nil {
		return receiverMark{}, err
	}
	tx, err := r.t.job.link.SenderTxBytes(ctx)
	return receiverMark{cpu: cpu, tx: tx}, err
}

// receiver returns the receiving mover's CPU-seconds since m and its peak
// RSS so far, after a run.
func (r *pgporterRig) receiver(m receiverMark) (cpu float64, hwm int64, err error) {
	pid := r.srv.cmd.Process.Pid
	c1, err := procCPU(pid)
	if err != nil {
		return 0, 0, err
	}
	hwm, err = procHWM(pid)
	return c1 - m.cpu, hwm, err
}

// measure sends src to dest once and measures it: wall time, both sides'
// CPU and peak RSS, the link's bytes; dest must then hold size bytes.
func (r *pgporterRig) measure(ctx context.Context, src, dest string, size int64) (Measure, error) {
	j := r.t.job
	m, err := r.mark(ctx)
	if err != nil {
		return Measure{}, err
	}
	cmd, wall, sr, err := r.send(ctx, src, dest)
	if err != nil {
		return Measure{}, err
	}
	cpu, hwm, err := r.receiver(m)
	if err != nil {
		return Measure{}, err
	}
	wire, rss, err := j.afterRunSize(ctx, m.tx, dest, r.h+"-send.rss", size)
	if err != nil {
		return Measure{}, err
	}
	r.last = sr
	var path string
	if p := sr.Path; p != nil {
		path = fmt.Sprintf("; %d connections, %d framed for loss repair (groups of %d), %d joined dialled ahead, %d packets lost by QUIC's count; congestion window mean %.0f kB, max %.0f kB; RTT min %.1f ms, smoothed %.1f ms",
			p.Connections, p.Repaired, p.RepairGroup, p.PreDialled, p.PacketsLost, float64(p.CwndMean)/1e3, float64(p.CwndMax)/1e3, p.MinRTT, p.SRTT)
	}
	tm := sr.Timing
	j.logf("%s: %s: %.1f MB on the wire by its count, %d of %d chunks sent, levels %v%s; connected at %.0f ms, opened %.0f, first chunk %.0f, last chunk %.0f, done %.0f",
		j.scenario(), r.t.name, float64(sr.WireBytes)/1e6, sr.ChunksSent, sr.ChunksTotal, sr.Levels, path,
		tm.Connected, tm.Opened, tm.FirstChunk, tm.LastChunk, tm.Done)
	return Measure{
		Wall: wall, CPUSender: usage(cmd), RSSSender: rss, CPUReceiver: cpu, RSSReceiver: hwm,
		WireBytes: wire,
		Extra:     map[string]float64{"reported_wire_MB": float64(sr.WireBytes) / 1e6},
	}, nil
}

// initHome makes a pgporter home and returns its peer ID.
func (t *pgporterTool) initHome(ctx context.Context, home string) (string, error) {
	return moverInit(ctx, t.bin, home)
}

// moverInit makes a pgporter home with bin and returns its peer ID, the
// last line 'mover init' prints.
func moverInit(ctx context.Context, bin, home string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "mover", "init", "--home", home).Output()
	if err != nil {
		return "", fmt.Errorf("pgporter mover init: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	id := strings.TrimSpace(lines[len(lines)-1])
	if id == "" {
		return "", errors.New("pgporter mover init printed no peer ID")
	}
	return id, nil
}

// sendResult is the part of 'pgporter send --json' the harness reads.
type sendResult struct {
	Bytes       int64            `json:"bytes"`
	WireBytes   int64            `json:"wire_bytes"`
	ChunksTotal int64            `json:"chunks_total"`
	ChunksSent  int64            `json:"chunks_sent"`
	Reconnects  int              `json:"reconnects"`
	Levels      map[string]int64 `json:"levels"`
	Path        *struct {
		Connections int     `json:"connections"`
		Repaired    int     `json:"repaired_connections"`
		RepairGroup int     `json:"repair_group"`
		PreDialled  int     `json:"predialled_connections"`
		PacketsLost uint64  `json:"packets_lost"`
		CwndMean    uint64  `json:"cwnd_mean"`
		CwndMax     uint64  `json:"cwnd_max"`
		MinRTT      float64 `json:"min_rtt_ms"`
		SRTT        float64 `json:"srtt_ms"`
	} `json:"path"`
	Timing struct {
		Connected  float64 `json:"connected_ms"`
		Opened     float64 `json:"opened_ms"`
		FirstChunk float64 `json:"first_chunk_ms"`
		LastChunk  float64 `json:"last_chunk_ms"`
		Done       float64 `json:"done_ms"`
	} `json:"timing"`

	// ResumedBytes were durable at the receiver when the send began: what
	// an earlier, interrupted send of the same transfer left.
	ResumedBytes int64 `json:"resumed_bytes"`
}

// parseSendJSON reads the JSON summary, the last line of send's stdout.
func parseSendJSON(out []byte) (sendResult, error) {
	var r sendResult
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	if err := json.Unmarshal(lines[len(lines)-1], &r); err != nil {
		return r, fmt.Errorf("parsing send --json output %q: %w", tail(string(out)), err)
	}
	if r.Bytes == 0 {
		return r, fmt.Errorf("send --json reported no bytes: %q", tail(string(out)))
	}
	return r, nil
}

// waitLine reads r until a line starts with prefix and returns that line;
// it drains the rest in the background so that the writer never blocks, and
// that goroutine closes r at EOF, when every writer has exited.
func waitLine(ctx context.Context, r io.ReadCloser, prefix string, exited <-chan struct{}) (string, error) {
	found := make(chan string, 1)
	go func() {
		defer r.Close()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), prefix) {
				found <- sc.Text()
				break
			}
		}
		_, _ = io.Copy(io.Discard, r) // the rest, or what follows an overlong line
	}()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	select {
	case line := <-found:
		return line, nil
	case <-exited:
		return "", errors.New("exited before it listened")
	case <-ctx.Done():
		return "", fmt.Errorf("waiting for %q: %w", prefix, ctx.Err())
	}
}

// ---- tar | zstd | nc ----

type tarTool struct{ job *lanJob }

func (t *tarTool) Name() string { return "tar|zstd|nc" }

func (t *tarTool) Run(ctx context.Context, rep int) (_ Measure, err error) {
	j := t.job
	dest := filepath.Join(j.dir, fmt.Sprintf("tar-%d", rep))
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return Measure{}, err
	}
	defer os.RemoveAll(dest)
	// OpenBSD nc: -d, the receiver reads no stdin; -N, the sender shuts the
	// socket down at the end of its input, which ends the receiver's nc.
	rpeak, speak := dest+"-recv.rss", dest+"-send.rss"
	defer os.Remove(rpeak)
	defer os.Remove(speak)
	recv := j.link.ReceiverCmd(ctx, rpeak, "bash", "-c", fmt.Sprintf("set -o pipefail; nc -d -l %d | zstd -d -q | tar -x -C %s", ncPort, shellQuote(dest)))
	var rerr bytes.Buffer
	recv.Stderr = &rerr
	rd, err := startDaemon(recv)
	if err != nil {
		return Measure{}, err
	}
	defer func() { err = errors.Join(err, rd.stop()) }()
	if err := waitListening(ctx, j.link.Receiver, ncPort, rd.exited); err != nil {
		return Measure{}, fmt.Errorf("nc -l: %w: %s", err, tail(rerr.String()))
	}
	tx0, err := j.link.SenderTxBytes(ctx)
	if err != nil {
		return Measure{}, err
	}
	send := j.link.SenderCmd(ctx, speak, "bash", "-c", fmt.Sprintf("set -o pipefail; tar -C %s -cf - . | zstd -1 -q | nc -N %s %d",
		shellQuote(j.data), j.link.ReceiverAddr, ncPort))
	var serr bytes.Buffer
	send.Stderr = &serr
	t0 := time.Now()
	if err := send.Run(); err != nil {
		return Measure{}, fmt.Errorf("tar|zstd|nc: %w: %s", err, tail(serr.String()))
	}
	select {
	case <-rd.exited:
	case <-ctx.Done():
		return Measure{}, ctx.Err()
	}
	wall := time.Since(t0)
	if rd.err != nil {
		return Measure{}, fmt.Errorf("nc|zstd -d|tar -x: %w: %s", rd.err, tail(rerr.String()))
	}
	wire, srss, err := j.afterRun(ctx, tx0, dest, speak)
	if err != nil {
		return Measure{}, err
	}
	rrss, err := readPeakRSS(rpeak)
	if err != nil {
		return Measure{}, err
	}
	return Measure{Wall: wall, CPUSender: usage(send), RSSSender: srss, CPUReceiver: usage(recv), RSSReceiver: rrss, WireBytes: wire}, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// tail returns the last 500 bytes of s, for error messages.
func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 500 {
		s = "…" + s[len(s)-500:]
	}
	return s
}
