package bench

import (
	"bytes"
	"context"
	"encoding/json"
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

// ---- pgporter export ----

// exportTool runs pgporter export, embedded (every role in the one
// process), under GNU time for its peak RSS.
type exportTool struct {
	job  *exportJob
	name string
	dir  string // prefix of each run's directory
	bin  string
	jobs int
	perf []string // a command line that runs pgporter export, e.g. perfRecord's; nil runs it alone
	// memProfile, when not empty, is where each run samples the export's
	// memory into a directory of its own (see memSampler).
	memProfile string
}

func (t *exportTool) Name() string { return t.name }

func (t *exportTool) Run(ctx context.Context, rep int) (Measure, error) {
	j := t.job
	if j.link != nil {
		return t.runLAN(ctx, rep)
	}
	// Short: the throwaway instance's socket lies below, within the
	// 107 bytes of a Unix socket path.
	d := filepath.Join(j.dir, fmt.Sprintf("%s%d", t.dir, rep))
	if err := os.Mkdir(d, 0o755); err != nil {
		return Measure{}, err
	}
	defer os.RemoveAll(d)
	home, target, staging := filepath.Join(d, "home"), filepath.Join(d, "target"), filepath.Join(d, "staging")
	peak := filepath.Join(d, "export.rss")
	cmd := exec.CommandContext(ctx, "/usr/bin/time", t.args(peak, home, target, staging)...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+exportPassword)
	cmd.WaitDelay = 10 * time.Second
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	var ms *memSampler
	if t.memProfile != "" {
		var err error
		if ms, err = newMemSampler(filepath.Join(t.memProfile, fmt.Sprintf("run%d", rep+1))); err != nil {
			return Measure{}, err
		}
		defer ms.close()
		cmd.Env = append(cmd.Env, ms.env()...)
		cmd.Stderr = io.MultiWriter(&stderr, ms.gctrace)
	}
	t0 := time.Now()
	err := cmd.Start()
	if err == nil {
		if ms != nil {
			ms.start(cmd.Process.Pid)
		}
		err = cmd.Wait()
	}
	wall := time.Since(t0)
	if ms != nil {
		if serr := ms.close(); err == nil && serr != nil {
			err = serr
		}
	}
	if err != nil {
		return Measure{}, fmt.Errorf("pgporter export: %w: %s", err, tail(stderr.String()))
	}
	// Untimed from here.
	extra, rss, err := t.finish(ctx, out.Bytes(), home, filepath.Join(target, j.dbName()), peak)
	if err != nil {
		return Measure{}, err
	}
	j.logf("%s: %s: %.1f s, dump %.1f MB, %.1f MB on the wire", j.name, t.name, wall.Seconds(), extra["dump_MB"], extra["wire_MB"])
	return Measure{Wall: wall, CPUSender: usage(cmd), RSSSender: rss, Extra: extra}, nil
}

// finish reads a finished export's figures: its session's steps (in
// home) from the JSON summary on its stdout out, its peak RSS (GNU time
// wrote it to peak); and checks its dump, which dump holds.
func (t *exportTool) finish(ctx context.Context, out []byte, home, dump, peak string) (map[string]float64, int64, error) {
	res, err := parseExportJSON(out)
	if err != nil {
		return nil, 0, err
	}
	js, err := exec.CommandContext(ctx, t.bin, "--home", home, "sessions", "show", res.Session, "--json").Output()
	if err != nil {
		return nil, 0, fmt.Errorf("pgporter sessions show %s: %w", res.Session, err)
	}
	extra, err := exportFiguresOf(js, t.job.dbName())
	if err != nil {
		return nil, 0, err
	}
	if err := t.job.checkDump(ctx, dump); err != nil {
		return nil, 0, err
	}
	size, _, err := treeSize(dump)
	if err != nil {
		return nil, 0, err
	}
	if float64(size) != extra["dump_MB"]*1e6 {
		return nil, 0, fmt.Errorf("the target holds %d bytes of dump, pgporter dumped %.0f", size, extra["dump_MB"]*1e6)
	}
	rss, err := readPeakRSS(peak)
	return extra, rss, err
}

// args is GNU time's command line that runs pgporter export of shop (under
// t.perf) and writes its peak RSS to peak.
func (t *exportTool) args(peak, home, target, staging string) []string {
	j := t.job
	args := []string{"--home", home, "export", "--repo", j.repo, "--db", j.dbName(), "--to", target,
		"--staging-dir", staging, "--jobs", strconv.Itoa(t.jobs), "--json"}
	if j.auth != "" {
		args = append(args, "--auth", j.auth)
	}
	if j.bwlimit != "" {
		args = append(args, "--bwlimit", j.bwlimit)
	}
	name, args := wrapCmd(t.perf, t.bin, args...)
	return append([]string{"-f", "%M", "-o", peak, name}, args...)
}

// exportJSON is the part of 'pgporter export --json' the harness reads.
type exportJSON struct {
	Session   string `json:"session"`
	State     string `json:"state"`
	Databases []struct {
		Name  string `json:"name"`
		Bytes int64  `json:"bytes"`
	} `json:"databases"`
}

// parseExportJSON reads the JSON summary, the last line of export's stdout.
func parseExportJSON(out []byte) (exportJSON, error) {
	var r exportJSON
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	if err := json.Unmarshal(lines[len(lines)-1], &r); err != nil {
		return r, fmt.Errorf("parsing export --json output %q: %w", tail(string(out)), err)
	}
	if r.Session == "" || r.State != "done" {
		return r, fmt.Errorf("export --json: session %q is %q, not done", r.Session, r.State)
	}
	return r, nil
}

// ---- the reference: mount, postgres, pg_dump, rsync ----

// refExportTool is the reference pipeline, "dump, then send": pgporter
// mount of the same restore point, postgres on it, pg_dump -Fd -j N with
// its default gzip into a staging directory, rsync -a to the target, then
// postgres stopped with SIGQUIT (immediate: no checkpoint, as pgporter's
// throwaway instance) and the mount ended.
type refExportTool struct {
	job  *exportJob
	jobs int
	// Over export-lan's link only: the tool's name ("" is pg_dump+rsync)
	// and rsync's flags beside -a.
	name  string
	rsync []string
}

func (t *refExportTool) Name() string {
	if t.name == "" {
		return "pg_dump+rsync"
	}
	return t.name
}

// refPort is the reference instance's port, on its own socket directory.
const refPort = 5433

func (t *refExportTool) Run(ctx context.Context, rep int) (_ Measure, err error) {
	j := t.job
	d := filepath.Join(j.dir, fmt.Sprintf("ref-%d", rep))
	mnt, sock, staging, target := filepath.Join(d, "mnt"), filepath.Join(d, "sock"), filepath.Join(d, "staging"), filepath.Join(d, "target")
	for _, p := range []string{mnt, sock, staging, target} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return Measure{}, err
		}
	}
	defer os.RemoveAll(d)
	if j.cred != nil {
		for _, p := range []string{sock, staging} {
			if err := os.Chown(p, int(j.cred.Uid), int(j.cred.Gid)); err != nil {
				return Measure{}, err
			}
		}
	}
	var cpu float64 // wait4's user+system of every process started here
	x := map[string]float64{}
	t0 := time.Now()

	mount, err := j.mountLatest(ctx, filepath.Join(d, "home"), mnt)
	if err != nil {
		return Measure{}, err
	}
	defer func() {
		if mount != nil {
			_ = mount.stop()
		}
	}()
	t1 := time.Now()
	x["mount_s"] = t1.Sub(t0).Seconds()
	_ = os.Remove(filepath.Join(mnt, "postmaster.pid"))

	pg, err := j.startInstance(ctx, mnt, sock)
	if err != nil {
		return Measure{}, err
	}
	defer func() {
		if pg != nil {
			_ = pg.cmd.Process.Signal(syscall.SIGQUIT)
			<-pg.exited
		}
	}()
	t2 := time.Now()
	x["instance_s"] = t2.Sub(t1).Seconds()

	var t4 time.Time
	var net Measure // over the link: rsync's, with pg_dump's peak RSS
	if j.link == nil {
		dumpCPU, end, err := j.dumpThenSend(ctx, sock, staging, target, t.jobs, t2, x)
		if err != nil {
			return Measure{}, err
		}
		cpu, t4 = cpu+dumpCPU, end
	} else {
		dumpCPU, end, dest, m, err := t.dumpThenSendLAN(ctx, d, sock, staging, rep, t2, x)
		if dest != "" {
			defer os.RemoveAll(dest)
		}
		if err != nil {
			return Measure{}, err
		}
		cpu, t4, target, net = cpu+dumpCPU, end, dest, m
	}

	_ = pg.cmd.Process.Signal(syscall.SIGQUIT)
	<-pg.exited
	cpu += usage(pg.cmd)
	pg = nil
	merr := mount.stop()
	cpu += usage(mount.cmd)
	mount = nil
	if merr != nil {
		return Measure{}, merr
	}
	t5 := time.Now()
	x["cleanup_s"] = t5.Sub(t4).Seconds()
	wall := t5.Sub(t0)

	// Untimed from here.
	sent, err := j.checkRef(ctx, staging, target)
	if err != nil {
		return Measure{}, err
	}
	x["dump_MB"] = float64(sent) / 1e6
	j.logf("%s: %s: %.1f s, dump %.1f MB", j.name, t.Name(), wall.Seconds(), x["dump_MB"])
	return Measure{Wall: wall, CPUSender: cpu, RSSSender: net.RSSSender, CPUReceiver: net.CPUReceiver, WireBytes: net.WireBytes, Extra: x}, nil
}

// mounted is a running pgporter mount of a restore point.
type mounted struct {
	*daemon
	log bytes.Buffer // its output, to explain an exit
}

// mountLatest mounts the latest restore point of j.repo at mnt, with home
// as pgporter's home (a fresh one: a fresh cache and copy-on-write layer),
// on the job's CPUs, and returns once PG_VERSION shows through it. The
// caller calls stop, also on error.
func (j *exportJob) mountLatest(ctx context.Context, home, mnt string) (*mounted, error) {
	// Not bound to ctx: the caller stops it, also on error.
	return startMount(ctx, j.pinned(context.Background(), j.bin, "--home", home, "mount", "--repo", j.repo, "--restore-point", "latest", mnt), mnt)
}

// startMount starts cmd, a pgporter mount at mnt, and returns once
// PG_VERSION shows through it. The caller calls stop, also on error.
func startMount(ctx context.Context, cmd *exec.Cmd, mnt string) (*mounted, error) {
	m := &mounted{}
	cmd.Stdout, cmd.Stderr = &m.log, &m.log
	d, err := startDaemon(cmd)
	if err != nil {
		return nil, err
	}
	m.daemon = d
	if err := pollUntil(ctx, func() (bool, error) {
		select {
		case <-m.exited:
			return false, fmt.Errorf("pgporter mount exited: %v: %s", m.err, tail(m.log.String()))
		default:
		}
		_, err := os.Stat(filepath.Join(mnt, "PG_VERSION"))
		return err == nil, nil
	}); err != nil {
		_ = m.stop()
		return nil, fmt.Errorf("waiting for the mount: %w", err)
	}
	return m, nil
}

// stop ends the mount (SIGINT: pgporter mount unmounts and exits) and
// waits for it; its error says why it failed, if it did.
func (m *mounted) stop() error {
	_ = m.cmd.Process.Signal(os.Interrupt)
	<-m.exited
	if m.err != nil {
		return fmt.Errorf("pgporter mount: %w: %s", m.err, tail(m.log.String()))
	}
	return nil
}

// startInstance starts postgres on dataDir as pgporter's throwaway instance
// is (fsync, full_page_writes, synchronous_commit and autovacuum off, a
// socket in sock only, on refPort) and returns once pg_isready says it
// accepts connections. The caller stops it (SIGQUIT: immediate, no
// checkpoint) and waits for it to exit; wait4's rusage then counts it and
// the backends it reaped.
func (j *exportJob) startInstance(ctx context.Context, dataDir, sock string) (*daemon, error) {
	pcmd := j.pinned(context.Background(), filepath.Join(j.pgBin, "postgres"), "-D", dataDir, "-c", "listen_addresses=", "-c", "unix_socket_directories="+sock,
		"-c", "port="+strconv.Itoa(refPort), "-c", "autovacuum=off", "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off")
	pcmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: j.cred}
	var plog bytes.Buffer
	pcmd.Stdout, pcmd.Stderr = &plog, &plog
	pg, err := startDaemon(pcmd)
	if err != nil {
		return nil, err
	}
	if err := pollUntil(ctx, func() (bool, error) {
		select {
		case <-pg.exited:
			return false, fmt.Errorf("postgres exited: %v: %s", pg.err, tail(plog.String()))
		default:
		}
		return exec.CommandContext(ctx, filepath.Join(j.pgBin, "pg_isready"), "-q", "-h", sock, "-p", strconv.Itoa(refPort), "-d", "postgres").Run() == nil, nil
	}); err != nil {
		_ = pg.cmd.Process.Signal(syscall.SIGQUIT)
		<-pg.exited
		return nil, fmt.Errorf("waiting for the reference postgres: %w", err)
	}
	return pg, nil
}

// dumpThenSend is the reference's dump of shop into staging, then its
// rsync to target: the CPU of both, the time it ended, and the steps'
// seconds in x (dump_s from since, transfer_s).
func (j *exportJob) dumpThenSend(ctx context.Context, sock, staging, target string, jobs int, since time.Time, x map[string]float64) (cpu float64, end time.Time, err error) {
	dumpCPU, err := j.dumpShop(ctx, sock, staging, jobs, "")
	if err != nil {
		return 0, end, err
	}
	t := time.Now()
	x["dump_s"] = t.Sub(since).Seconds()
	rsyncCPU, err := j.rsyncDump(ctx, staging, target)
	if err != nil {
		return 0, end, err
	}
	end = time.Now()
	x["transfer_s"] = end.Sub(t).Seconds()
	return dumpCPU + rsyncCPU, end, nil
}

// dumpShop runs pg_dump -Fd -j jobs (its default gzip) of shop from the
// instance on sock into staging/shop and returns its CPU-seconds; with peak
// set, under GNU time, which writes its peak RSS there.
func (j *exportJob) dumpShop(ctx context.Context, sock, staging string, jobs int, peak string) (float64, error) {
	name, args := filepath.Join(j.pgBin, "pg_dump"), []string{"-h", sock, "-p", strconv.Itoa(refPort), "-U", "postgres",
		"-Fd", "-j", strconv.Itoa(jobs), "-f", filepath.Join(staging, "shop"), "shop"}
	if peak != "" {
		name, args = wrapCmd([]string{"/usr/bin/time", "-f", "%M", "-o", peak}, name, args...)
	}
	dump := j.pinned(ctx, name, args...)
	dump.Env = append(os.Environ(), "PGPASSWORD="+exportPassword)
	if out, err := dump.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("pg_dump: %w: %s", err, tail(string(out)))
	}
	return usage(dump), nil
}

// rsyncDump runs rsync -a (with the job's --bwlimit) of staging/shop into
// target and returns its CPU-seconds.
func (j *exportJob) rsyncDump(ctx context.Context, staging, target string) (float64, error) {
	rargs := []string{"-a"}
	if j.bwlimit != "" {
		rargs = append(rargs, "--bwlimit="+j.bwlimit)
	}
	rsync := exec.CommandContext(ctx, "rsync", append(rargs, filepath.Join(staging, "shop"), target+"/")...)
	if out, err := rsync.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("rsync: %w: %s", err, tail(string(out)))
	}
	return usage(rsync), nil
}

// checkRef checks a reference's result: the dump in target lists the data
// of every table of shop, and holds every byte of the dump in staging,
// whose size it returns.
func (j *exportJob) checkRef(ctx context.Context, staging, target string) (int64, error) {
	if err := j.checkDump(ctx, filepath.Join(target, "shop")); err != nil {
		return 0, err
	}
	sent, _, err := treeSize(filepath.Join(staging, "shop"))
	if err != nil {
		return 0, err
	}
	got, _, err := treeSize(filepath.Join(target, "shop"))
	if err != nil {
		return 0, err
	}
	if got != sent {
		return 0, fmt.Errorf("rsync left %d bytes of the %d-byte dump in the target", got, sent)
	}
	return sent, nil
}

// ---- the pgBackRest reference: restore --db-include, postgres, pg_dump, rsync ----

// restoreExportTool is what a pgBackRest user does today to get one
// database out of a backup (scenario 6): pgbackrest restore
// --db-include=shop into an empty directory (the other databases' files
// restored as sparse zeros), postgres started on it, replaying the
// archived WAL to the backup's consistent point and promoting, pg_dump -Fd
// -j N (gzip) into a staging directory, rsync -a to the target, postgres
// stopped with SIGQUIT and the restored directory removed. Timed from the
// restore's start to the removal's end.
type restoreExportTool struct {
	job  *exportJob
	pbr  *pgBackRest
	jobs int
}

func (t *restoreExportTool) Name() string { return "pgbackrest restore+pg_dump+rsync" }

func (t *restoreExportTool) Run(ctx context.Context, rep int) (_ Measure, err error) {
	j := t.job
	d := filepath.Join(j.dir, fmt.Sprintf("pbr-%d", rep))
	data, sock, staging, target := filepath.Join(d, "data"), filepath.Join(d, "sock"), filepath.Join(d, "staging"), filepath.Join(d, "target")
	for _, p := range []string{data, sock, staging, target} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return Measure{}, err
		}
	}
	defer os.RemoveAll(d)
	// PostgreSQL refuses a data directory that others may read.
	if err := os.Chmod(data, 0o700); err != nil {
		return Measure{}, err
	}
	if j.cred != nil {
		for _, p := range []string{data, sock, staging} {
			if err := os.Chown(p, int(j.cred.Uid), int(j.cred.Gid)); err != nil {
				return Measure{}, err
			}
		}
	}
	var cpu float64 // wait4's user+system of every process started here
	x := map[string]float64{}
	t0 := time.Now()

	restore := t.pbr.cmd(ctx, "", "--pg1-path="+data, "restore", "--db-include=shop", "--type=immediate", "--target-action=promote", "--archive-mode=off")
	if out, err := restore.CombinedOutput(); err != nil {
		return Measure{}, fmt.Errorf("pgbackrest restore: %w: %s", err, tail(string(out)))
	}
	cpu += usage(restore)
	t1 := time.Now()
	x["restore_s"] = t1.Sub(t0).Seconds()

	pg, err := j.startInstance(ctx, data, sock)
	if err != nil {
		return Measure{}, err
	}
	defer func() {
		if pg != nil {
			_ = pg.cmd.Process.Signal(syscall.SIGQUIT)
			<-pg.exited
		}
	}()
	// pg_isready answers once recovery is consistent (hot standby); the
	// user waits for the promotion before dumping, as a script would.
	if err := pollUntil(ctx, func() (bool, error) {
		out, err := exec.CommandContext(ctx, filepath.Join(j.pgBin, "psql"), "-h", sock, "-p", strconv.Itoa(refPort), "-U", "postgres", "-d", "shop",
			"-XAtc", "SELECT pg_is_in_recovery()").Output()
		return err == nil && strings.TrimSpace(string(out)) == "f", nil
	}); err != nil {
		return Measure{}, fmt.Errorf("waiting for the restored postgres to promote: %w", err)
	}
	t2 := time.Now()
	x["instance_s"] = t2.Sub(t1).Seconds()

	dumpCPU, t4, err := j.dumpThenSend(ctx, sock, staging, target, t.jobs, t2, x)
	if err != nil {
		return Measure{}, err
	}
	cpu += dumpCPU

	_ = pg.cmd.Process.Signal(syscall.SIGQUIT)
	<-pg.exited
	cpu += usage(pg.cmd)
	pg = nil
	if err := os.RemoveAll(data); err != nil {
		return Measure{}, err
	}
	t5 := time.Now()
	x["cleanup_s"] = t5.Sub(t4).Seconds()
	wall := t5.Sub(t0)

	// Untimed from here.
	sent, err := j.checkRef(ctx, staging, target)
	if err != nil {
		return Measure{}, err
	}
	x["dump_MB"] = float64(sent) / 1e6
	j.logf("%s: %s: %.1f s (restore %.1f s), dump %.1f MB", j.name, t.Name(), wall.Seconds(), x["restore_s"], x["dump_MB"])
	return Measure{Wall: wall, CPUSender: cpu, Extra: x}, nil
}
