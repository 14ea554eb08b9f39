package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/pgporter/pgporter/internal/pgtool"
)

// S3Exports is issue 21's concurrency target: a cluster of Databases
// databases of the same shape and size (pgbench), backed up once into a
// bucket of the project's S3 test server; then, interleaved, one pgporter
// export of one database alone, and one export of each database started at
// once, each with its own --home, --staging-dir and PGPORTER_CACHE_DIR (a
// fresh cache every run: cold), as staging hosts would be. The second is
// timed until the last export ends. The figure the target names is the
// ratio of throughputs, the dump bytes delivered per second of wall time
// of all the exports at once over that of the one alone.
//
// Its name is not "export-s3" nor "multidb-s3": --scenario export and
// multidb choose their NAME-* variants, and this one needs the S3 server.
type S3Exports struct {
	// Pgporter is the pgporter binary to run; required.
	Pgporter string
	// Databases is the number of databases and of exports at once; 0
	// means 4, or 2 with Env.Smoke.
	Databases int
	// Scale is each database's pgbench scale; 0 means 5, or 1 with
	// Env.Smoke.
	Scale int
	// Jobs is each export's --jobs; 0 means 2.
	Jobs int
	// Settle is the quiet before every run, then sync and drop_caches
	// (exportSettle).
	Settle time.Duration
}

var _ Scenario = (*S3Exports)(nil)

func (*S3Exports) Name() string { return "s3-exports" }

func (*S3Exports) Describe() string {
	return "pgporter export of one database out of a backup on a local S3 server (SeaweedFS), alone and one per database at once, each its own home, staging directory and cold cache"
}

func (s *S3Exports) withDefaults(smoke bool) S3Exports {
	o := *s
	if o.Databases <= 0 {
		o.Databases = 4
		if smoke {
			o.Databases = 2
		}
	}
	if o.Scale <= 0 {
		o.Scale = 5
		if smoke {
			o.Scale = 1
		}
	}
	if o.Jobs <= 0 {
		o.Jobs = 2
	}
	return o
}

// s3ExportsBucket holds the scenario's one repository, s3://BUCKET/repo.
const s3ExportsBucket = "s3-exports"

// s3ExportDB names the i-th database (from 1).
func s3ExportDB(i int) string { return fmt.Sprintf("db%d", i) }

func (s *S3Exports) Prepare(ctx context.Context, env Env) (_ *Setup, err error) {
	o := s.withDefaults(env.Smoke)
	if o.Pgporter == "" {
		return nil, errors.New("s3-exports: no pgporter binary")
	}
	if err := RequireExportTools(); err != nil {
		return nil, err
	}
	if err := RequireS3Server(); err != nil {
		return nil, err
	}
	// The postgres user must reach the staging directories.
	if err := os.Chmod(env.Dir, 0o755); err != nil {
		return nil, err
	}
	var held closers
	defer func() {
		if err != nil {
			err = errors.Join(err, held.Close())
		}
	}()
	env.Logf("%s: starting the S3 server (scripts/s3-server start)", s.Name())
	srv, err := startS3Server(ctx, filepath.Join(env.Dir, "s3"))
	if err != nil {
		return nil, err
	}
	held.add(srv.Close)
	if err := srv.CreateBucket(ctx, s3ExportsBucket); err != nil {
		return nil, err
	}
	held.add(func() error {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		return srv.RemoveBucket(rctx, s3ExportsBucket)
	})
	repo := "s3://" + s3ExportsBucket + "/" + s3RepoPrefix
	env.Logf("%s: filling %d databases (pgbench -i -s %d each) and backing them up into %s", s.Name(), o.Databases, o.Scale, repo)
	db, err := makeS3ExportsRepo(ctx, o, srv, repo, env.Dir)
	if err != nil {
		return nil, err
	}
	repoBytes, objects, err := srv.Size(ctx, s3ExportsBucket, s3RepoPrefix+"/")
	if err != nil {
		return nil, err
	}
	env.Logf("%s: each database is about %d bytes, the cluster %d; the repository %d bytes in %d objects", s.Name(), db.bytes, db.cluster, repoBytes, objects)
	bin, err := pgtool.NewestServerBinDir()
	if err != nil {
		return nil, err
	}
	j := &s3ExportsJob{
		bin: o.Pgporter, repo: repo, dir: env.Dir, jobs: o.Jobs, srv: srv,
		check: &exportJob{pgBin: bin, tables: db.tables},
		logf:  env.Logf, name: s.Name(),
	}
	for i := 1; i <= o.Databases; i++ {
		j.dbs = append(j.dbs, s3ExportDB(i))
	}
	alone := &s3ExportsTool{job: j, n: 1}
	all := &s3ExportsTool{job: j, n: o.Databases}
	return &Setup{
		Bytes: db.bytes,
		Sides: []string{"export"},
		Notes: map[string]string{
			"data":       fmt.Sprintf("%d databases, each pgbench -i -s %d; the cluster %.0f MB; one pgporter backup --pgdata of it stopped, %.1f MB in %d objects", o.Databases, o.Scale, float64(db.cluster)/1e6, float64(repoBytes)/1e6, objects),
			"input":      "the size of one database (pg_database_size of db1); MB/s is that over the wall time, so for the exports at once read throughput_MB_s",
			"exports":    fmt.Sprintf("pgporter export --repo %s --db dbN --jobs %d, each with its own --home, --staging-dir and PGPORTER_CACHE_DIR, new every run (a cold cache); alone: the database rotates with the run", repo, o.Jobs),
			"figures":    "dump_MB: the dump bytes delivered by all the run's exports; throughput_MB_s: dump_MB over the wall time (until the last export ends); CPU_s_per_export: wait4's user+system of each pgporter export and the postgres and pg_dump it waited for, summed, over the exports; server_CPU_s_per_export: the weed process's CPU-seconds (/proc/PID/stat) over the run, over the exports",
			"s3":         fmt.Sprintf("SeaweedFS (weed server -filer -s3, scripts/s3-server) on loopback over HTTP (%s), on the same cores as the exports", srv.vars["AWS_ENDPOINT_URL"]),
			"settle":     fmt.Sprintf("%s of quiet, sync and drop_caches before every run", o.Settle),
			"export CPU": fmt.Sprintf("no CPU-s/GB column: it would divide all the exports' CPU by one database; see CPU_s_per_export, and cores_busy: the exports' and the server's CPU-seconds over the wall time, of the machine's %d", runtime.NumCPU()),
		},
		Tools:  []Tool{alone, all},
		Settle: func(ctx context.Context) error { return exportSettle(ctx, o.Settle) },
		Ratio:  &Ratio{Key: "throughput_MB_s", Of: all.Name(), Over: alone.Name(), Target: 0.9},
		Close:  held.Close,
	}, nil
}

// makeS3ExportsRepo fills o.Databases databases in a throwaway cluster,
// stops it, and backs its data directory up into repo on srv.
func makeS3ExportsRepo(ctx context.Context, o S3Exports, srv *s3Server, repo, dir string) (_ exportDB, err error) {
	var db exportDB
	c, err := newPGCluster(ctx, dir, "", nil)
	if err != nil {
		return db, err
	}
	defer func() { err = errors.Join(err, c.remove()) }()
	if err := c.start(ctx); err != nil {
		return db, err
	}
	stopped := false
	defer func() {
		if !stopped {
			err = errors.Join(err, c.stop())
		}
	}()
	if _, err := c.client(ctx, "postgres", "psql", "-qc", "ALTER ROLE postgres PASSWORD '"+exportPassword+"'"); err != nil {
		return db, err
	}
	// One after the other: pgbench -i runs one COPY per table, and the
	// fill is untimed.
	for i := 1; i <= o.Databases; i++ {
		name := s3ExportDB(i)
		if _, err := c.client(ctx, "postgres", "createdb", name); err != nil {
			return db, err
		}
		if _, err := c.client(ctx, name, "pgbench", "-i", "-q", "-s", strconv.Itoa(o.Scale), name); err != nil {
			return db, err
		}
	}
	first := s3ExportDB(1)
	size, err := c.client(ctx, first, "psql", "-Atc", "SELECT pg_database_size('"+first+"'), (SELECT sum(pg_database_size(oid)) FROM pg_database)")
	if err != nil {
		return db, err
	}
	if db.bytes, db.cluster, err = parseSizes(size); err != nil {
		return db, err
	}
	tables, err := c.client(ctx, first, "psql", "-Atc", "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
	if err != nil {
		return db, err
	}
	db.tables = strings.Fields(tables)
	stopped = true
	if err := c.stop(); err != nil {
		return db, err
	}
	cmd := exec.CommandContext(ctx, o.Pgporter, "--home", filepath.Join(dir, "home-backup"), "backup", "--repo", repo, "--pgdata", c.DataDir)
	cmd.Env = append(append(os.Environ(), srv.Env()...), "PGPORTER_CACHE_DIR="+filepath.Join(dir, "cache-backup"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return db, fmt.Errorf("pgporter backup: %w: %s", err, tail(string(out)))
	}
	return db, nil
}

// parseSizes reads psql -At's "A|B": a database's size and the cluster's.
func parseSizes(out string) (db, cluster int64, err error) {
	a, b, ok := strings.Cut(strings.TrimSpace(out), "|")
	if !ok {
		return 0, 0, fmt.Errorf("reading the sizes of the databases: %q is not SIZE|SIZE", out)
	}
	if db, err = strconv.ParseInt(a, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("reading the size of a database: %w", err)
	}
	if cluster, err = strconv.ParseInt(b, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("reading the size of the cluster: %w", err)
	}
	return db, cluster, nil
}

// s3ExportsJob is what the scenario's two tools share.
type s3ExportsJob struct {
	bin   string
	repo  string // s3://BUCKET/repo
	dir   string
	jobs  int
	dbs   []string
	srv   *s3Server
	check *exportJob // checkDump's: pg_restore and the tables every dump must hold
	logf  func(string, ...any)
	name  string
}

// s3ExportsTool runs n exports at once, each of a different database.
type s3ExportsTool struct {
	job *s3ExportsJob
	n   int
}

func (t *s3ExportsTool) Name() string {
	if t.n == 1 {
		return "1 export alone"
	}
	return fmt.Sprintf("%d exports at once", t.n)
}

// s3Export is one export process of a run and where it writes.
type s3Export struct {
	db, home, target string
	cmd              *exec.Cmd
	out, stderr      bytes.Buffer
}

func (t *s3ExportsTool) Run(ctx context.Context, rep int) (_ Measure, err error) {
	j := t.job
	// Short: each throwaway instance's socket lies below, within the
	// 107 bytes of a Unix socket path.
	d := filepath.Join(j.dir, fmt.Sprintf("x%d-%d", t.n, rep))
	if err := os.Mkdir(d, 0o755); err != nil {
		return Measure{}, err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(d)) }()
	var exports []*s3Export
	for i := range t.n {
		db := j.dbs[i]
		if t.n == 1 {
			db = j.dbs[rep%len(j.dbs)]
		}
		e := &s3Export{db: db}
		h := filepath.Join(d, strconv.Itoa(i))
		if err := os.Mkdir(h, 0o755); err != nil {
			return Measure{}, err
		}
		e.home, e.target = filepath.Join(h, "home"), filepath.Join(h, "target")
		e.cmd = exec.CommandContext(ctx, j.bin, "--home", e.home, "export", "--repo", j.repo, "--db", db, "--to", e.target,
			"--staging-dir", filepath.Join(h, "s"), "--jobs", strconv.Itoa(j.jobs), "--json")
		e.cmd.Env = append(append(os.Environ(), j.srv.Env()...), "PGPASSWORD="+exportPassword, "PGPORTER_CACHE_DIR="+filepath.Join(h, "cache"))
		e.cmd.Stdout, e.cmd.Stderr = &e.out, &e.stderr
		e.cmd.WaitDelay = 10 * time.Second
		exports = append(exports, e)
	}
	server0, err := j.srv.CPU()
	if err != nil {
		return Measure{}, err
	}
	t0 := time.Now()
	var started []*s3Export
	for _, e := range exports {
		if err = e.cmd.Start(); err != nil {
			err = fmt.Errorf("starting pgporter export --db %s: %w", e.db, err)
			// The run is lost: the others need not finish. An interrupt,
			// not a kill, so that each unmounts and stops its instance.
			for _, s := range started {
				_ = s.cmd.Process.Signal(os.Interrupt)
			}
			break
		}
		started = append(started, e)
	}
	// Every started export is waited for, also when another failed.
	waitErrs := make(chan error, len(started))
	for _, e := range started {
		go func() {
			if werr := e.cmd.Wait(); werr != nil {
				waitErrs <- fmt.Errorf("pgporter export --db %s: %w: %s", e.db, werr, tail(e.stderr.String()))
				return
			}
			waitErrs <- nil
		}()
	}
	for range started {
		err = errors.Join(err, <-waitErrs)
	}
	wall := time.Since(t0)
	if err != nil {
		return Measure{}, err
	}
	server1, err := j.srv.CPU()
	if err != nil {
		return Measure{}, err
	}
	// Untimed from here.
	var cpu float64
	var delivered int64
	for _, e := range exports {
		cpu += usage(e.cmd)
		n, err := j.checkExport(ctx, e)
		if err != nil {
			return Measure{}, err
		}
		delivered += n
	}
	x := s3ExportsFigures(t.n, wall, delivered, cpu, server1-server0)
	j.logf("%s: %s: %.1f s, %.1f MB of dumps, %.0f MB/s, %.2f CPU-s and %.2f server CPU-s per export",
		j.name, t.Name(), wall.Seconds(), x["dump_MB"], x["throughput_MB_s"], x["CPU_s_per_export"], x["server_CPU_s_per_export"])
	return Measure{Wall: wall, Extra: x}, nil
}

// s3ExportsFigures are a run's Extra figures: n exports that took wall
// until the last ended, delivered dump bytes in all, and used cpu and the
// S3 server's serverCPU CPU-seconds in all. cores_busy, both CPUs over the
// wall time, says how near the run came to filling the machine's cores.
func s3ExportsFigures(n int, wall time.Duration, delivered int64, cpu, serverCPU float64) map[string]float64 {
	return map[string]float64{
		"dump_MB":                 float64(delivered) / 1e6,
		"throughput_MB_s":         float64(delivered) / 1e6 / wall.Seconds(),
		"CPU_s_per_export":        cpu / float64(n),
		"server_CPU_s_per_export": serverCPU / float64(n),
		"cores_busy":              (cpu + serverCPU) / wall.Seconds(),
	}
}

// checkExport checks one export's result: its session is done, its target
// holds a dump of every table, of the bytes the session dumped, which it
// returns.
func (j *s3ExportsJob) checkExport(ctx context.Context, e *s3Export) (int64, error) {
	res, err := parseExportJSON(e.out.Bytes())
	if err != nil {
		return 0, err
	}
	js, err := exec.CommandContext(ctx, j.bin, "--home", e.home, "sessions", "show", res.Session, "--json").Output()
	if err != nil {
		return 0, fmt.Errorf("pgporter sessions show %s: %w", res.Session, err)
	}
	extra, err := exportFiguresOf(js, e.db)
	if err != nil {
		return 0, err
	}
	dump := filepath.Join(e.target, e.db)
	if err := j.check.checkDump(ctx, dump); err != nil {
		return 0, err
	}
	size, _, err := treeSize(dump)
	if err != nil {
		return 0, err
	}
	if math.Abs(float64(size)-extra["dump_MB"]*1e6) > 0.5 {
		return 0, fmt.Errorf("the target of %s holds %d bytes of dump, pgporter dumped %.0f", e.db, size, extra["dump_MB"]*1e6)
	}
	return size, nil
}
