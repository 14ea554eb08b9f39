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
	"time"
)

// rsyncZstd are the flags of the reference's rsync -z over the link, as
// the LAN scenario's rsync -z.
var rsyncZstd = []string{"-z", "--compress-choice=zstd", "--compress-level=1"}

// startLink makes export-lan's link and starts the reference's rsync
// daemon on its receiving side, both added to held.
func (j *exportJob) startLink(ctx context.Context, o LinkOptions, held *closers) error {
	link, err := NewLink(ctx, o)
	if err != nil {
		return err
	}
	held.add(link.Close)
	d, err := startRsyncd(ctx, link, filepath.Join(j.dir, "rsync"))
	if err != nil {
		return err
	}
	held.add(d.Close)
	j.link, j.rsyncd = link, d
	return nil
}

// pinned returns a command that runs name on the sender's CPUs over the
// link, or name itself on loopback, where nothing is pinned.
func (j *exportJob) pinned(ctx context.Context, name string, args ...string) *exec.Cmd {
	if j.link != nil {
		name, args = "taskset", append([]string{"-c", j.link.SenderCPUs, name}, args...)
	}
	return exec.CommandContext(ctx, name, args...)
}

// runLAN is Run over export-lan's link: pgporter export in the sending
// namespace, on the sender's CPUs, sends shop to a fresh pgporter mover
// serve in the receiving namespace (pgporterTool's rig: a home for the
// export, and the target's, which trusts it with send). Timed is the
// export alone; the rig is made and stopped outside the time.
func (t *exportTool) runLAN(ctx context.Context, rep int) (_ Measure, err error) {
	j := t.job
	d := filepath.Join(j.dir, fmt.Sprintf("%s%d", t.dir, rep))
	if err := os.Mkdir(d, 0o755); err != nil {
		return Measure{}, err
	}
	defer os.RemoveAll(d)
	mover := &pgporterTool{job: &lanJob{link: j.link, logf: j.logf, name: j.name}, name: t.name, bin: t.bin}
	rig, err := mover.newRig(ctx, filepath.Join(d, "rig"))
	if err != nil {
		return Measure{}, err
	}
	defer func() { err = errors.Join(err, rig.close()) }()
	to := filepath.Join(rig.root, "x")
	staging, peak := filepath.Join(d, "staging"), filepath.Join(d, "export.rss")
	args := []string{"--home", rig.hs, "export", "--repo", j.repo, "--db", "shop", "--to", to, "--target", rig.addr + "#" + rig.rid,
		"--staging-dir", staging, "--jobs", strconv.Itoa(t.jobs), "--json"}
	name, args := wrapCmd(t.perf, t.bin, args...)
	cmd := j.link.SenderCmd(ctx, peak, name, args...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+exportPassword)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr

	m, err := rig.mark(ctx)
	if err != nil {
		return Measure{}, err
	}
	t0 := time.Now()
	err = cmd.Run()
	wall := time.Since(t0)
	if err != nil {
		return Measure{}, fmt.Errorf("pgporter export --target: %w: %s", err, tail(stderr.String()))
	}
	// Untimed from here.
	cpu, hwm, err := rig.receiver(m)
	if err != nil {
		return Measure{}, err
	}
	tx1, err := j.link.SenderTxBytes(ctx)
	if err != nil {
		return Measure{}, err
	}
	extra, rss, err := t.finish(ctx, out.Bytes(), rig.hs, filepath.Join(to, "shop"), peak)
	if err != nil {
		return Measure{}, err
	}
	j.logf("%s: %s: %.1f s, dump %.1f MB, %.1f MB on the wire by its count, %.1f MB by the link's", j.name, t.name, wall.Seconds(),
		extra["dump_MB"], extra["wire_MB"], float64(tx1-m.tx)/1e6)
	return Measure{Wall: wall, CPUSender: usage(cmd), RSSSender: rss, CPUReceiver: cpu, RSSReceiver: hwm, WireBytes: tx1 - m.tx, Extra: extra}, nil
}

// dumpThenSendLAN is dumpThenSend over export-lan's link: pg_dump of shop
// into staging under GNU time, then rsync -a (with t.rsync) of staging,
// which holds shop, into the module directory of the rsync daemon on the
// receiving side, run in the sending namespace on the sender's CPUs and
// measured as the LAN scenario's rsync (lanJob.rsyncTo). It returns the
// CPU of both, the time it ended, the directory on the receiving side
// that holds shop (the caller removes it, also on error), and a measure
// of the transfer: both sides' CPU, the link's bytes, and the larger of
// pg_dump's and rsync's peak RSS. The steps' seconds go to x as in
// dumpThenSend.
func (t *refExportTool) dumpThenSendLAN(ctx context.Context, d, sock, staging string, rep int, since time.Time, x map[string]float64) (
	cpu float64, end time.Time, dest string, net Measure, err error,
) {
	j := t.job
	peak := filepath.Join(d, "pg_dump.rss")
	dumpCPU, err := j.dumpShop(ctx, sock, staging, t.jobs, peak)
	if err != nil {
		return 0, end, "", net, err
	}
	rss, err := readPeakRSS(peak)
	if err != nil {
		return 0, end, "", net, err
	}
	start := time.Now()
	x["dump_s"] = start.Sub(since).Seconds()
	size, _, err := treeSize(staging)
	if err != nil {
		return 0, end, "", net, err
	}
	sub := fmt.Sprintf("%s-%d", benchLabel(t.Name()), rep)
	dest = filepath.Join(j.rsyncd.root, sub)
	lj := &lanJob{link: j.link, data: staging, size: size, dir: d, logf: j.logf, name: j.name}
	m, err := lj.rsyncTo(ctx, j.rsyncd, t.rsync, sub, dest)
	if err != nil {
		return 0, end, dest, net, err
	}
	end = time.Now()
	x["transfer_s"] = end.Sub(start).Seconds()
	net = Measure{CPUReceiver: m.CPUReceiver, WireBytes: m.WireBytes, RSSSender: max(rss, m.RSSSender)}
	return dumpCPU + m.CPUSender, end, dest, net, nil
}
