package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgporter/pgporter/internal/pgtool"
)

// Mount is issue 4's figures of pgporter mount, once scripts/bench-repo's
// parts 2 and 3, as two scenarios on the same kind of data: a stopped
// cluster (fillBench's database bench) backed up by pgporter backup.
//
// "mount" reads every file of the data directory in sequence (tar -cf -
// -C DIR ., its bytes counted), from the local disk and from the latest
// restore point through a fresh pgporter mount, cold (the page cache
// dropped just before) and warm (after an untimed first read).
//
// "mount-dump" (Dump) runs pg_dump -Fd -Z0 -j 2 of bench from postgres
// started on the local data directory and on a fresh mount, both as the
// export's reference starts its instance (exportJob.startInstance), the
// page cache dropped before each dump.
//
// "mount-remote" (Remote) is issue 16's remote mount: the cold read of
// "mount" through pgporter mount --repo-peer, from a repository mover on
// RepoCPUs, against pgporter mount --repo of the same repository; the
// mount and the reader run on ReaderCPUs in both, so that the repository
// mover's CPU is another host's, as it is where users run it.
//
// They are separate scenarios because they are separate jobs: reading a
// data directory and dumping a database have different inputs, and the
// remote read pins its processes.
type Mount struct {
	// Pgporter is the pgporter binary to run; required.
	Pgporter string
	// Scale is the data's pgbench scale, with Scale×30,000 rows of the
	// docs table (the LAN dump's shape); 0 means 20, or 1 with Env.Smoke.
	Scale int
	// Dump makes this the "mount-dump" scenario.
	Dump bool
	// Remote makes this the "mount-remote" scenario, with the repository
	// mover on RepoCPUs and the mounts and readers on ReaderCPUs (taskset
	// -c lists; default "0" and "1").
	Remote               bool
	RepoCPUs, ReaderCPUs string
}

var _ Scenario = (*Mount)(nil)

func (s *Mount) Name() string {
	switch {
	case s.Dump:
		return "mount-dump"
	case s.Remote:
		return "mount-remote"
	}
	return "mount"
}

func (s *Mount) Describe() string {
	if s.Remote {
		return "cold sequential read of every file of a backup through pgporter mount --repo-peer, the repository mover on a CPU of its own (another host's), against pgporter mount --repo of the same repository; mount and reader on one CPU in both"
	}
	if s.Dump {
		return "pg_dump -Fd -Z0 -j2 of a database from postgres started on a fresh pgporter mount of its backup, against the same from the local data directory"
	}
	return "sequential read of every file of a backup through pgporter mount (tar of the mount), cold and warm, against the same of the local data directory"
}

// mountDumpJobs is the dump tools' pg_dump -j, scripts/bench-repo's.
const mountDumpJobs = 2

// RequireMountTools returns an error naming what the mount scenarios need
// and this machine lacks: the export scenario's needs, and tar.
func RequireMountTools() error {
	err := RequireExportTools()
	if _, lerr := exec.LookPath("tar"); lerr != nil {
		err = errors.Join(err, errors.New("the mount scenarios need tar"))
	}
	return err
}

func (s *Mount) Prepare(ctx context.Context, env Env) (_ *Setup, err error) {
	if s.Pgporter == "" {
		return nil, fmt.Errorf("%s: no pgporter binary", s.Name())
	}
	if err := RequireMountTools(); err != nil {
		return nil, err
	}
	j, err := prepareMountData(ctx, env, s.Name(), s.Pgporter, s.Scale, s.Dump)
	if err != nil {
		return nil, err
	}
	if s.Remote {
		return s.prepareRemote(ctx, env, j)
	}
	notes := map[string]string{
		"data":   j.describe(),
		"mount":  "pgporter mount --restore-point latest of the backup, with a fresh home (cache, copy-on-write layer) in every run",
		"settle": "sync and drop_caches before every run",
	}
	if !s.Dump {
		notes["input"] = fmt.Sprintf("the data directory of the stopped cluster, %d files; each tool reads it as a tar stream, tar headers included (read_MB)", j.files)
		notes["cold"] = "the page cache dropped after the mount is up and just before the read"
		notes["warm"] = "the read after an untimed first one, through the same mount"
		notes["CPU"] = "tar's, and pgporter mount's over the read"
		local, mount := &readTool{job: j}, &readTool{job: j, mount: true}
		return &Setup{
			Bytes:  j.size,
			Sides:  []string{"reader"},
			Notes:  notes,
			Tools:  []Tool{local, &readTool{job: j, warm: true}, mount, &readTool{job: j, mount: true, warm: true}},
			Settle: func(ctx context.Context) error { return exportSettle(ctx, 0) },
			// Issue 21's target for a cold sequential read through a mount,
			// here against the local disk rather than a local repository's mount.
			Ratio: &Ratio{Key: "MB_s", Of: mount.Name(), Over: local.Name(), Target: 0.7},
			Close: j.cluster.remove,
		}, nil
	}
	notes["input"] = "the size of the database bench (pg_database_size)"
	notes["postgres"] = "started for every run, as pgporter's throwaway instance is (fsync, full_page_writes, synchronous_commit and autovacuum off); the page cache dropped once it accepts connections, just before pg_dump; timed is pg_dump alone"
	notes["CPU"] = "pg_dump's, the server's from the dump's start to its exit, and pgporter mount's over the dump"
	local, mount := &dumpTool{job: j}, &dumpTool{job: j, mount: true}
	return &Setup{
		Bytes:  j.db,
		Sides:  []string{"dump"},
		Notes:  notes,
		Tools:  []Tool{local, mount},
		Settle: func(ctx context.Context) error { return exportSettle(ctx, 0) },
		// Issue 4's target, pg_dump from the mount at most 1.5x the time
		// from the local disk, as a ratio of throughputs.
		Ratio: &Ratio{Key: "MB_s", Of: mount.Name(), Over: local.Name(), Target: 1 / 1.5},
		Close: j.cluster.remove,
	}, nil
}

// prepareRemote starts the repository mover of j's repository on
// s.RepoCPUs, on loopback, and returns the mount-remote scenario's setup.
func (s *Mount) prepareRemote(ctx context.Context, env Env, j *mountJob) (_ *Setup, err error) {
	repoCPUs, readerCPUs := cmp.Or(s.RepoCPUs, "0"), cmp.Or(s.ReaderCPUs, "1")
	defer func() {
		if err != nil {
			err = errors.Join(err, j.cluster.remove())
		}
	}()
	p := &repoPeer{home: filepath.Join(env.Dir, "home-repo")}
	if p.id, err = moverInit(ctx, s.Pgporter, p.home); err != nil {
		return nil, err
	}
	// Not bound to ctx: Close stops it.
	cmd := exec.Command("taskset", "-c", repoCPUs, s.Pgporter, "--home", p.home, "mover", "serve", "--repo", j.repo, "--listen", "127.0.0.1:0")
	stdout, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = w, w
	p.srv, err = startDaemon(cmd)
	w.Close() // the server holds its own copy
	if err != nil {
		stdout.Close()
		return nil, err
	}
	line, err := waitLine(ctx, stdout, "listening on ", p.srv.exited)
	if f := strings.Fields(line); err == nil && len(f) >= 3 {
		p.addr = f[2]
	} else {
		return nil, errors.Join(fmt.Errorf("pgporter mover serve --repo: %w, %q", err, line), p.srv.stop())
	}
	local := &readTool{job: j, mount: true, cpus: readerCPUs}
	remote := &readTool{job: j, mount: true, cpus: readerCPUs, peer: p}
	return &Setup{
		Bytes: j.size,
		Sides: []string{"reader", "repository"},
		Notes: map[string]string{
			"data":  j.describe(),
			"input": fmt.Sprintf("the data directory of the stopped cluster, %d files; each tool reads it as a tar stream, tar headers included (read_MB)", j.files),
			"mount": "pgporter mount --restore-point latest, with a fresh home (cache, copy-on-write layer) in every run: --repo of the repository, or --repo-peer of pgporter mover serve --repo of it on loopback",
			"CPUs":  fmt.Sprintf("the mount and tar on CPU %s (taskset -c); the repository mover on CPU %s, as another host's; reader CPU is tar's and the mount's over the read, repository CPU the mover's", readerCPUs, repoCPUs),
			"cold":  "the page cache dropped after the mount is up and just before the read",
		},
		Tools:  []Tool{local, remote},
		Settle: func(ctx context.Context) error { return exportSettle(ctx, 0) },
		// Issue 16's target for --repo-peer.
		Ratio: &Ratio{Key: "MB_s", Of: remote.Name(), Over: local.Name(), Target: 0.8},
		Close: func() error { return errors.Join(p.srv.stop(), j.cluster.remove()) },
	}, nil
}

// repoPeer is a running pgporter mover serve --repo: its home, peer ID and
// address.
type repoPeer struct {
	home, id, addr string
	srv            *daemon
}

// mountJob is what the mount tools share: the export's job around the
// repository (the mount, postgres on it), and the data directory it backs
// up.
type mountJob struct {
	*exportJob
	cluster     *pgCluster // stopped; its data directory is the local side
	scale, docs int
	size        int64 // the data directory's bytes
	files       int
	db          int64 // pg_database_size('bench'), with Dump
}

func (j *mountJob) describe() string {
	return fmt.Sprintf("pgbench -i -s %d plus %d rows of md5 text, jsonb and words in database bench, then VACUUM (FREEZE, ANALYZE); the stopped cluster's data directory %.0f MB, backed up by pgporter backup --pgdata",
		j.scale, j.docs, float64(j.size)/1e6)
}

// source returns the data directory a run reads: the cluster's own, or
// with mount a fresh mount of its backup at d/mnt (a fresh home in d, so
// a cold cache), which the caller stops.
func (j *mountJob) source(ctx context.Context, d string, mount bool) (string, *mounted, error) {
	if !mount {
		return j.cluster.DataDir, nil, nil
	}
	mnt := filepath.Join(d, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return "", nil, err
	}
	m, err := j.mountLatest(ctx, filepath.Join(d, "home"), mnt)
	return mnt, m, err
}

// prepareMountData fills a throwaway cluster (fillBench at scale, 0
// meaning 20 or 1 with env.Smoke), vacuums it, stops it and backs its
// data directory up into a new repository under env.Dir; with dump it
// also measures database bench and lists its tables, for the dumps'
// checks. The caller removes j.cluster.
func prepareMountData(ctx context.Context, env Env, name, bin string, scale int, dump bool) (_ *mountJob, err error) {
	scale = clusterScale(scale, env.Smoke)
	docs := scale * 30_000
	// The postgres user must reach the mounts and the socket directories.
	if err := os.Chmod(env.Dir, 0o755); err != nil {
		return nil, err
	}
	env.Logf("%s: filling bench (pgbench -s %d, %d rows of docs) and backing it up", name, scale, docs)
	c, err := newBenchCluster(ctx, scale, docs)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.remove())
		}
	}()
	j := &mountJob{cluster: c, scale: scale, docs: docs}
	// VACUUM FREEZE sets the hint bits that docs (CREATE TABLE AS) lacks:
	// without it the first dump of the local cluster would write them there
	// for every later run, while each fresh mount starts from the backup
	// and writes them again into its copy-on-write layer (93 MB, 2.7x the
	// local dump's time, in a run without it).
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	_, err = c.client(ctx, "bench", "psql", "-XAtc", "VACUUM (FREEZE, ANALYZE)")
	var size, tables string
	if err == nil && dump {
		size, err = c.client(ctx, "bench", "psql", "-XAtc", "SELECT pg_database_size('bench')")
		if err == nil {
			tables, err = c.client(ctx, "bench", "psql", "-XAtc", "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
		}
	}
	if err = errors.Join(err, c.stop()); err != nil {
		return nil, err
	}
	j.exportJob = &exportJob{tables: strings.Fields(tables)}
	if dump {
		if j.db, err = strconv.ParseInt(strings.TrimSpace(size), 10, 64); err != nil {
			return nil, fmt.Errorf("reading the size of bench: %w", err)
		}
	}
	if j.size, j.files, err = treeSize(c.DataDir); err != nil {
		return nil, err
	}
	repo := filepath.Join(env.Dir, "repo")
	if err := backupInto(ctx, bin, c.DataDir, repo, filepath.Join(env.Dir, "home-backup")); err != nil {
		return nil, err
	}
	pgBin, err := pgtool.NewestServerBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := pgtool.ServerCredential("")
	if err != nil {
		return nil, err
	}
	x := j.exportJob
	x.bin, x.pgBin, x.cred, x.repo, x.dir, x.logf, x.name = bin, pgBin, cred, repo, env.Dir, env.Logf, name
	env.Logf("%s: the data directory is %d bytes in %d files", name, j.size, j.files)
	return j, nil
}

// readTool reads every file of the data directory in sequence, as
// scripts/bench-repo did (tar -cf - -C DIR . | wc -c): from the local disk
// or through a fresh pgporter mount of its backup; cold, or warm after an
// untimed first read.
type readTool struct {
	job   *mountJob
	mount bool
	warm  bool
	cpus  string    // taskset -c list of the mount and tar, if not ""
	peer  *repoPeer // the mount's --repo-peer, if not nil
}

func (t *readTool) Name() string {
	switch {
	case t.peer != nil:
		return "mount --repo-peer (cold)"
	case t.cpus != "":
		return "mount --repo (cold)"
	}
	name := "local read"
	if t.mount {
		name = "mount read"
	}
	if t.warm {
		return name + " (warm)"
	}
	return name + " (cold)"
}

func (t *readTool) Run(ctx context.Context, rep int) (_ Measure, err error) {
	j := t.job
	d := filepath.Join(j.dir, fmt.Sprintf("read-%t-%t-%d", t.mount, t.warm, rep))
	if err := os.Mkdir(d, 0o755); err != nil {
		return Measure{}, err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(d)) }()
	src, m, err := t.source(ctx, d)
	if m != nil {
		defer func() { err = errors.Join(err, m.stop()) }()
	}
	if err != nil {
		return Measure{}, err
	}
	if t.warm {
		if _, _, err := tarCount(ctx, t.cpus, src); err != nil {
			return Measure{}, err
		}
	} else if err := exportSettle(ctx, 0); err != nil {
		return Measure{}, err
	}
	var mountCPU0, repoCPU0 float64
	if m != nil {
		if mountCPU0, err = procCPU(m.cmd.Process.Pid); err != nil {
			return Measure{}, err
		}
	}
	if t.peer != nil {
		if repoCPU0, err = procCPU(t.peer.srv.cmd.Process.Pid); err != nil {
			return Measure{}, err
		}
	}
	t0 := time.Now()
	n, cpu, err := tarCount(ctx, t.cpus, src)
	wall := time.Since(t0)
	if err != nil {
		return Measure{}, err
	}
	// Untimed from here.
	x := map[string]float64{"read_MB": float64(n) / 1e6, "MB_s": float64(n) / 1e6 / wall.Seconds()}
	var repoCPU float64
	if t.peer != nil {
		repoCPU1, err := procCPU(t.peer.srv.cmd.Process.Pid)
		if err != nil {
			return Measure{}, err
		}
		repoCPU = repoCPU1 - repoCPU0
		x["repo_CPU_s"] = repoCPU
	}
	if m != nil {
		mountCPU1, err := procCPU(m.cmd.Process.Pid)
		if err != nil {
			return Measure{}, err
		}
		x["mount_CPU_s"] = mountCPU1 - mountCPU0
		cpu += mountCPU1 - mountCPU0
	}
	// A tar stream holds every byte of the files, and headers.
	if n < j.size {
		return Measure{}, fmt.Errorf("tar of %s gave %d bytes, the data directory holds %d", src, n, j.size)
	}
	j.logf("%s: %s: %.2f s, %.0f MB/s", j.name, t.Name(), wall.Seconds(), x["MB_s"])
	return Measure{Wall: wall, CPUSender: cpu, CPUReceiver: repoCPU, Extra: x}, nil
}

// source returns the directory a run reads, and the mount to stop if not
// nil (also on error): as mountJob.source, or with t.cpus or t.peer a
// fresh mount on those CPUs at d/mnt, of the repository or through the
// repository mover, which is made to trust the mount's fresh home.
func (t *readTool) source(ctx context.Context, d string) (string, *mounted, error) {
	j := t.job
	if t.cpus == "" && t.peer == nil {
		return j.source(ctx, d, t.mount)
	}
	mnt, home := filepath.Join(d, "mnt"), filepath.Join(d, "home")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return "", nil, err
	}
	src := []string{"--repo", j.repo}
	if t.peer != nil {
		id, err := moverInit(ctx, j.bin, home)
		if err != nil {
			return "", nil, err
		}
		if out, err := exec.CommandContext(ctx, j.bin, "mover", "trust", id, "--allow", "read", "--home", t.peer.home).CombinedOutput(); err != nil {
			return "", nil, fmt.Errorf("pgporter mover trust: %w: %s", err, tail(string(out)))
		}
		src = []string{"--repo-peer", t.peer.addr + "#" + t.peer.id}
	}
	args := append(append([]string{j.bin, "--home", home, "mount"}, src...), "--restore-point", "latest", mnt)
	if t.cpus != "" {
		args = append([]string{"taskset", "-c", t.cpus}, args...)
	}
	// Not bound to ctx: the caller stops it.
	m, err := startMount(ctx, exec.Command(args[0], args[1:]...), mnt)
	return mnt, m, err
}

// tarCount runs tar -cf - -C dir ., on cpus if not "" (taskset -c), and
// returns the bytes it wrote and its CPU-seconds.
func tarCount(ctx context.Context, cpus, dir string) (int64, float64, error) {
	var n countWriter
	cmd := exec.CommandContext(ctx, "tar", "-cf", "-", "-C", dir, ".")
	if cpus != "" {
		cmd = exec.CommandContext(ctx, "taskset", "-c", cpus, "tar", "-cf", "-", "-C", dir, ".")
	}
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &n, &stderr
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("tar -cf - -C %s .: %w: %s", dir, err, tail(stderr.String()))
	}
	return int64(n), usage(cmd), nil
}

// countWriter counts what is written to it, as wc -c.
type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}

// dumpTool runs pg_dump -Fd -Z0 -j mountDumpJobs of bench from postgres
// freshly started on the local data directory, or on a fresh mount of its
// backup. Timed is pg_dump alone, the page cache dropped just before.
type dumpTool struct {
	job   *mountJob
	mount bool
}

func (t *dumpTool) Name() string {
	if t.mount {
		return "pg_dump from mount"
	}
	return "pg_dump local"
}

func (t *dumpTool) Run(ctx context.Context, rep int) (_ Measure, err error) {
	j := t.job
	// Short: the instance's socket lies below, within the 107 bytes of a
	// Unix socket path.
	d := filepath.Join(j.dir, fmt.Sprintf("d%t%d", t.mount, rep))
	sock, out := filepath.Join(d, "sock"), filepath.Join(d, "out")
	for _, p := range []string{d, sock} {
		if err := os.Mkdir(p, 0o755); err != nil {
			return Measure{}, err
		}
	}
	defer func() { err = errors.Join(err, os.RemoveAll(d)) }()
	if j.cred != nil {
		if err := os.Chown(sock, int(j.cred.Uid), int(j.cred.Gid)); err != nil {
			return Measure{}, err
		}
	}
	data, m, err := j.source(ctx, d, t.mount)
	if err != nil {
		return Measure{}, err
	}
	if m != nil {
		defer func() { err = errors.Join(err, m.stop()) }()
		_ = os.Remove(filepath.Join(data, "postmaster.pid"))
	}
	t0 := time.Now()
	pg, err := j.startInstance(ctx, data, sock)
	if err != nil {
		return Measure{}, err
	}
	// The local cluster stops cleanly (a fast shutdown and its checkpoint),
	// so that its next start needs no recovery; the mount's copy-on-write
	// layer is thrown away, so it stops as the export's instance does.
	stopSig := syscall.SIGQUIT
	if !t.mount {
		stopSig = syscall.SIGINT
	}
	defer func() {
		if pg != nil {
			_ = pg.cmd.Process.Signal(stopSig)
			<-pg.exited
		}
	}()
	x := map[string]float64{"instance_s": time.Since(t0).Seconds()}

	if err := exportSettle(ctx, 0); err != nil {
		return Measure{}, err
	}
	pgCPU0, err := procCPU(pg.cmd.Process.Pid)
	if err != nil {
		return Measure{}, err
	}
	var mountCPU0 float64
	if m != nil {
		if mountCPU0, err = procCPU(m.cmd.Process.Pid); err != nil {
			return Measure{}, err
		}
	}
	dump := exec.CommandContext(ctx, filepath.Join(j.pgBin, "pg_dump"), "-h", sock, "-p", strconv.Itoa(refPort), "-U", "postgres",
		"-Fd", "-Z0", "-j", strconv.Itoa(mountDumpJobs), "-f", out, "bench")
	t1 := time.Now()
	b, err := dump.CombinedOutput()
	wall := time.Since(t1)
	if err != nil {
		return Measure{}, fmt.Errorf("pg_dump: %w: %s", err, tail(string(b)))
	}
	// Untimed from here.
	cpu := usage(dump)
	if m != nil {
		mountCPU1, err := procCPU(m.cmd.Process.Pid)
		if err != nil {
			return Measure{}, err
		}
		x["mount_CPU_s"] = mountCPU1 - mountCPU0
		cpu += mountCPU1 - mountCPU0
		// What the server wrote through the mount (hint bits set as the
		// dump read the rows, pages evicted), landed in the copy-on-write
		// layer a chunk at a time: its sparse files' blocks.
		cow, err := diskUsage(filepath.Join(d, "home", "cow"))
		if err != nil {
			return Measure{}, err
		}
		x["cow_MB"] = float64(cow) / 1e6
	}
	_ = pg.cmd.Process.Signal(stopSig)
	<-pg.exited
	cpu += usage(pg.cmd) - pgCPU0
	pg = nil
	if err := j.checkDump(ctx, out); err != nil {
		return Measure{}, err
	}
	size, _, err := treeSize(out)
	if err != nil {
		return Measure{}, err
	}
	x["dump_MB"] = float64(size) / 1e6
	x["MB_s"] = float64(j.db) / 1e6 / wall.Seconds()
	j.logf("%s: %s: %.2f s, dump %.1f MB", j.name, t.Name(), wall.Seconds(), x["dump_MB"])
	return Measure{Wall: wall, CPUSender: cpu, Extra: x}, nil
}

// diskUsage returns the bytes of the blocks that the regular files under
// dir occupy (du, not du --apparent-size: the copy-on-write layer's files
// are sparse).
func diskUsage(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measuring %s: %w", dir, err)
	}
	return n, nil
}
