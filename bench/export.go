package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgporter/pgporter/internal/pgtool"
	"github.com/pgporter/pgporter/orchestrator"
)

// Export is scenario 7 on one machine: export the database "shop" out of
// a pgporter backup, with pgporter export (embedded: mount, throwaway
// instance, checks, pg_dump -Fd -Z0, zstd chunks over loopback QUIC,
// verify, commit, cleanup) against the reference "dump, then send" from the same restore
// point: pgporter mount, postgres started on it as pgporter's throwaway
// instance is, pg_dump -Fd (gzip) into a staging directory, rsync -a to the
// target directory, postgres stopped, unmounted. Both are timed whole, from
// the mount to the unmount.
type Export struct {
	// Pgporter is the pgporter binary to run; required.
	Pgporter string
	// Data is the shape of "shop": "pgbench" (pgbench -i -s Scale, the
	// default; rows mostly blank padding), "mixed" (about the same size per
	// unit of Scale of md5 text, numeric, timestamptz and jsonb in four
	// tables) or "tables" (Tables small tables of Rows rows each: a dump
	// of thousands of small files, where per-file costs dominate).
	Data string
	// Scale is pgbench's scale, or mixed's size in the same unit; 0 means
	// 70 (about 1 GB), or 1 with Env.Smoke.
	Scale int
	// Tables and Rows shape the "tables" data; 0 means 5000 and 20, or 50
	// and 20 with Env.Smoke.
	Tables, Rows int
	// Vacuum runs VACUUM FREEZE on shop before its backup, so that its
	// tuples carry their hint bits (otherwise nothing vacuums it).
	Vacuum bool
	// Jobs is pgporter export's --jobs; 0 means 2.
	Jobs int
	// RefJobs is the reference's pg_dump -j; 0 means 1.
	RefJobs int
	// Base, when set, is another pgporter binary (an earlier build), whose
	// export runs as the tool "pgporter export (base)". The backup and the
	// reference's mount use Pgporter.
	Base string
	// BWLimit, when set (e.g. "25M"), caps the transfer of both pipelines
	// (pgporter export --bwlimit, rsync --bwlimit): a link slower than
	// loopback, on one machine.
	BWLimit string
	// Settle is the quiet before every run, after which the harness syncs
	// and drops the page cache (see exportSettle).
	Settle time.Duration
	// Databases, when 2 or more, makes this scenario 6 ("multidb"): the
	// cluster holds shop and Databases-1 other databases of the same shape
	// and size, archives its WAL into a pgBackRest repository
	// (archive_command = pgbackrest archive-push) and is backed up online
	// by pgbackrest backup --type=full as well as by pgporter backup. The
	// reference is then what a pgBackRest user does to get one database
	// out: pgbackrest restore --db-include=shop, postgres started on the
	// restored directory, pg_dump, rsync (restoreExportTool).
	Databases int
	// Link, when not nil, makes this scenario 7 over the LAN scenario's
	// link ("export-lan"): two network namespaces joined by a veth pair
	// shaped with tc tbf (Rate defaults to 1gbit). pgporter export runs in
	// the sending namespace on the sender's CPUs and sends to a pgporter
	// mover serve in the receiving one (--target); the reference runs its
	// mount, postgres and pg_dump on the sender's CPUs and rsyncs to an
	// rsync daemon in the receiving namespace, plain and with -z. BWLimit
	// and Databases do not apply.
	Link *LinkOptions
	// Mixed makes this the loopback scenario on data shaped like an
	// application's ("export-mixed"): Data is "mixed", whatever the
	// options say, and Scale defaults to 20 (about 250 MB).
	Mixed bool
}

var _ Scenario = (*Export)(nil)

func (s *Export) Name() string {
	switch {
	case s.Databases > 1:
		return "multidb"
	case s.Link != nil:
		return "export-lan"
	case s.Mixed:
		return "export-mixed"
	}
	return "export"
}

// standalone is true for export-lan and export-mixed: "--scenario export"
// keeps choosing the loopback scenario alone, whose figures and needs (no
// netns) stay what they were.
func (s *Export) standalone() bool { return s.Link != nil || s.Mixed }

func (s *Export) Describe() string {
	if s.Databases > 1 {
		return "export one database out of a backup of a multi-database cluster: pgporter export against pgbackrest restore --db-include, postgres, pg_dump -Fd (gzip) and rsync -a"
	}
	if s.Link != nil {
		return "export one database out of a pgporter backup to another host over a 1 Gbit/s veth link (tc tbf): pgporter export --target against pgporter mount, postgres, pg_dump -Fd (gzip) and rsync to an rsync daemon"
	}
	if s.Mixed {
		return "the export scenario on data shaped like an application's (md5 text, numeric, timestamptz and jsonb; by default never vacuumed), on one machine"
	}
	return "export one database out of a pgporter backup: pgporter export against pgporter mount, postgres, pg_dump -Fd (gzip) and rsync -a, on one machine"
}

// exportPassword is the postgres role's password in the backup, which both
// pipelines log in with.
const exportPassword = "bench"

func (s *Export) withDefaults(smoke bool) Export {
	o := *s
	if o.Data == "" {
		o.Data = "pgbench"
	}
	if o.Mixed {
		o.Data = "mixed"
		o.Scale = clusterScale(o.Scale, smoke)
	}
	if o.Scale <= 0 {
		o.Scale = 70
		if smoke {
			o.Scale = 1
		}
	}
	if o.Tables <= 0 {
		o.Tables = 5000
		if smoke {
			o.Tables = 50
		}
	}
	if o.Rows <= 0 {
		o.Rows = 20
	}
	if o.Jobs <= 0 {
		o.Jobs = 2
	}
	if o.RefJobs <= 0 {
		o.RefJobs = 1
	}
	if o.Link != nil {
		lo := *o.Link
		if lo.Rate == "" {
			lo.Rate = "1gbit"
		}
		if lo.SenderCPUs == "" {
			lo.SenderCPUs = "0"
		}
		if lo.ReceiverCPUs == "" {
			lo.ReceiverCPUs = "1"
		}
		o.Link = &lo
		o.BWLimit, o.Databases = "", 0
	}
	return o
}

func (s *Export) Prepare(ctx context.Context, env Env) (_ *Setup, err error) {
	o := s.withDefaults(env.Smoke)
	if o.Pgporter == "" {
		return nil, errors.New("export: no pgporter binary")
	}
	if err := RequireExportTools(); err != nil {
		return nil, err
	}
	if o.Databases > 1 {
		if err := RequirePgBackRest(); err != nil {
			return nil, err
		}
	}
	if o.Link != nil {
		if err := RequireLinkTools(); err != nil {
			return nil, err
		}
	}
	// The postgres user must reach the staging directories and the mount.
	if err := os.Chmod(env.Dir, 0o755); err != nil {
		return nil, err
	}
	shape := fmt.Sprintf("pgbench -i -s %d", o.Scale)
	switch o.Data {
	case "mixed":
		shape = fmt.Sprintf("4 tables of %d rows of md5 text, numeric, timestamptz and jsonb", o.Scale*12000)
	case "tables":
		shape = fmt.Sprintf("%d tables of %d rows", o.Tables, o.Rows)
	}
	name := s.Name()
	if o.Databases > 1 {
		env.Logf("%s: filling shop and %d other databases (%s each) and backing them up with pgbackrest and pgporter", name, o.Databases-1, shape)
	} else {
		env.Logf("%s: filling shop (%s) and backing it up", name, shape)
	}
	repo := filepath.Join(env.Dir, "repo")
	db, err := makeExportRepo(ctx, o, repo, env.Dir)
	if err != nil {
		return nil, err
	}
	env.Logf("%s: shop is %d bytes in %d tables, the cluster %d bytes", name, db.bytes, len(db.tables), db.cluster)
	bin, err := pgtool.NewestServerBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := pgtool.ServerCredential("")
	if err != nil {
		return nil, err
	}
	j := &exportJob{bin: o.Pgporter, bwlimit: o.BWLimit, pgBin: bin, cred: cred, repo: repo, dir: env.Dir, tables: db.tables, logf: env.Logf, name: name}
	var held closers
	defer func() {
		if err != nil {
			err = errors.Join(err, held.Close())
		}
	}()
	if o.Link != nil {
		if err := j.startLink(ctx, *o.Link, &held); err != nil {
			return nil, err
		}
	}
	tools := []Tool{&exportTool{job: j, name: "pgporter export", dir: "p", bin: o.Pgporter, jobs: o.Jobs}}
	if o.Base != "" {
		tools = append(tools, &exportTool{job: j, name: "pgporter export (base)", dir: "b", bin: o.Base, jobs: o.Jobs})
	}
	var ref Tool = &refExportTool{job: j, jobs: o.RefJobs}
	if o.Databases > 1 {
		ref = &restoreExportTool{job: j, pbr: db.pbr, jobs: o.RefJobs}
	}
	tools = append(tools, ref)
	if o.Link != nil {
		tools = append(tools, &refExportTool{job: j, jobs: o.RefJobs, name: "pg_dump+rsync -z", rsync: rsyncZstd})
	}
	link := "none (loopback)"
	if o.BWLimit != "" {
		link = o.BWLimit + "/s (pgporter export --bwlimit, rsync --bwlimit)"
	}
	sides := []string{"pipeline"}
	notes := map[string]string{
		"data":   fmt.Sprintf("%s (%s)%s", o.Data, shape, vacuumNote(o.Vacuum)),
		"jobs":   fmt.Sprintf("pgporter export --jobs %d, reference pg_dump -j %d", o.Jobs, o.RefJobs),
		"settle": fmt.Sprintf("%s of quiet, sync and drop_caches before every run", o.Settle),
		"link":   link,
		"input":  "the size of the database shop (pg_database_size)",
	}
	if o.Databases > 1 {
		notes["data"] = fmt.Sprintf("shop and %d other databases, each %s (%s); the cluster %.0f MB", o.Databases-1, o.Data, shape, float64(db.cluster)/1e6)
		notes["backups"] = fmt.Sprintf("of the same data: pgporter backup --pgdata of the stopped cluster; %s backup --type=full of it running, WAL archived by archive_command = pgbackrest archive-push, %s, process-max=%d",
			pgBackRestVersion(ctx), strings.Join(pgBackRestCompress, " "), runtime.NumCPU())
		notes["reference"] = "pgbackrest restore --db-include=shop --type=immediate --target-action=promote --archive-mode=off, postgres on it until promoted, pg_dump, rsync -a, postgres stopped (SIGQUIT), the restored directory removed"
	}
	if o.Link != nil {
		sides = []string{"sender", "receiver"}
		notes["link"] = o.Link.Rate + " (tc tbf) each way, between two network namespaces"
		notes["sender CPUs"] = j.link.SenderCPUs
		notes["receiver CPUs"] = j.link.ReceiverCPUs
		notes["sender"] = "pgporter export (mount, throwaway instance, pg_dump, chunks) in the sending namespace; the reference's mount, postgres, pg_dump and rsync on the sender's CPUs"
		notes["receiver"] = "a fresh pgporter mover serve --root per run (trusting the export's home with send); one rsync daemon"
	}
	return &Setup{
		Bytes:  db.bytes,
		Sides:  sides,
		Notes:  notes,
		Tools:  tools,
		Settle: func(ctx context.Context) error { return exportSettle(ctx, o.Settle) },
		// In a run of its own, not a timed one: perf's overhead stays out
		// of the figures.
		Profile: func(ctx context.Context, file string) error {
			t := &exportTool{job: j, name: "pgporter export (perf)", dir: "perf", bin: o.Pgporter, jobs: o.Jobs, perf: perfRecord(file, 999, false)}
			_, err := t.Run(ctx, 0)
			return err
		},
		SpeedUp: &SpeedUp{Of: "pgporter export", Over: ref.Name()},
		Close:   held.Close,
	}, nil
}

// RequireExportTools returns an error naming what the export scenario needs
// and this machine lacks: root (FUSE mounts, dropping caches, the postgres
// OS user), /dev/fuse, PostgreSQL, rsync and GNU time.
func RequireExportTools() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		missing = append(missing, "/dev/fuse")
	}
	if _, err := pgtool.NewestServerBinDir(); err != nil {
		missing = append(missing, "PostgreSQL under /usr/lib/postgresql")
	}
	for _, p := range []string{"rsync", "/usr/bin/time"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the export scenario needs %s (scripts/setup)", strings.Join(missing, ", "))
	}
	return nil
}

// exportSettle waits d, syncs and drops the page cache, so that each
// pipeline starts cold and from the same state. The wait is for ext4
// without a journal, which skips inodes deleted in the last
// dirty_expire_centisecs (30 s) when it allocates one, so the other
// pipeline's just-deleted files make every file a pipeline creates cost
// more. Dropping caches needs root; without it the cache stays warm.
func exportSettle(ctx context.Context, d time.Duration) error {
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	unix.Sync()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200)
	return nil
}

// exportDB is what the scenario's data turned out to be.
type exportDB struct {
	bytes   int64       // pg_database_size('shop')
	cluster int64       // the sum of every database's size
	tables  []string    // public tables, sorted: what each dump must hold
	pbr     *pgBackRest // with Databases > 1: the stanza holding the cluster's backup
}

// otherDB names the i-th database beside shop (i from 1).
func otherDB(i int) string { return fmt.Sprintf("other%d", i) }

// makeExportRepo fills shop (and, with o.Databases > 1, the other
// databases, and backs the running cluster up with pgBackRest into a
// stanza under dir) in a throwaway cluster, stops it, and backs its data
// directory up into a new pgporter repository at repo.
func makeExportRepo(ctx context.Context, o Export, repo, dir string) (_ exportDB, err error) {
	var db exportDB
	c, err := newPGCluster(ctx, "", "", nil)
	if err != nil {
		return db, err
	}
	defer func() { err = errors.Join(err, c.remove()) }()
	if o.Databases > 1 {
		cred, err := pgtool.ServerCredential("")
		if err != nil {
			return db, err
		}
		db.pbr, err = newPgBackRest(filepath.Join(dir, "pgbackrest"), pgBackRestServer{PGData: c.DataDir, Socket: c.SocketDir, Port: c.Port}, cred)
		if err != nil {
			return db, err
		}
		c.Settings["archive_mode"] = "on"
		c.Settings["archive_command"] = db.pbr.archiveCommand()
	}
	// Nothing vacuums shop before its backup, as after a bulk load: its
	// tuples carry no hint bits (mixed's; pgbench -i vacuums its own), and
	// the export's reads set them on every page.
	c.Settings["autovacuum"] = "off"
	if err := c.start(ctx); err != nil {
		return db, err
	}
	stopped := false
	defer func() {
		if !stopped {
			err = errors.Join(err, c.stop())
		}
	}()
	if db.pbr != nil {
		if err := db.pbr.run(ctx, "stanza-create"); err != nil {
			return db, err
		}
	}
	if _, err := c.client(ctx, "postgres", "psql", "-qc", "ALTER ROLE postgres PASSWORD '"+exportPassword+"'"); err != nil {
		return db, err
	}
	names := []string{"shop"}
	for i := 1; i < o.Databases; i++ {
		names = append(names, otherDB(i))
	}
	for _, name := range names {
		if _, err := c.client(ctx, "postgres", "createdb", name); err != nil {
			return db, err
		}
		switch o.Data {
		case "pgbench":
			_, err = c.client(ctx, name, "pgbench", "-i", "-q", "-s", strconv.Itoa(o.Scale), name)
		case "mixed":
			err = fillMixed(ctx, c, name, o.Scale)
		case "tables":
			err = fillTables(ctx, c, name, o.Tables, o.Rows, dir)
		default:
			err = fmt.Errorf("export: data %q: want pgbench, mixed or tables", o.Data)
		}
		if err != nil {
			return db, err
		}
	}
	if o.Vacuum {
		if _, err := c.client(ctx, "shop", "psql", "-qc", "VACUUM FREEZE"); err != nil {
			return db, err
		}
	}
	size, err := c.client(ctx, "shop", "psql", "-Atc", "SELECT pg_database_size('shop'), (SELECT sum(pg_database_size(oid)) FROM pg_database)")
	if err != nil {
		return db, err
	}
	sizes := strings.Split(strings.TrimSpace(size), "|")
	if db.bytes, err = strconv.ParseInt(sizes[0], 10, 64); err != nil {
		return db, fmt.Errorf("reading the size of shop: %w", err)
	}
	if db.cluster, err = strconv.ParseInt(sizes[len(sizes)-1], 10, 64); err != nil {
		return db, fmt.Errorf("reading the size of the cluster: %w", err)
	}
	tables, err := c.client(ctx, "shop", "psql", "-Atc", "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
	if err != nil {
		return db, err
	}
	db.tables = strings.Fields(tables)
	if db.pbr != nil {
		// Online, as pgBackRest backs up a production cluster: it waits
		// for the backup's last WAL segment to be archived (archive-check).
		if err := db.pbr.run(ctx, "backup", "--type=full"); err != nil {
			return db, err
		}
	}
	stopped = true
	if err := c.stop(); err != nil {
		return db, err
	}
	return db, backupInto(ctx, o.Pgporter, c.DataDir, repo, filepath.Join(dir, "home-backup"))
}

// backupInto backs the stopped cluster's data directory pgdata up with
// pgporter bin into a new repository at repo, untimed: the export tools'
// source.
func backupInto(ctx context.Context, bin, pgdata, repo, home string) error {
	cmd := exec.CommandContext(ctx, bin, "--home", home, "backup", "--repo", repo, "--pgdata", pgdata)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgporter backup: %w: %s", err, tail(string(out)))
	}
	return nil
}

// mixedTable (a format: %[1]d is the table's number, %[2]d its rows) is
// the data shape "mixed": md5 text, numeric, timestamptz and jsonb, as
// an application would hold, which compress about 2x where pgbench's
// padding compresses 30x.
const mixedTable = `CREATE TABLE orders_%[1]d AS
	SELECT g AS id, md5(g::text) AS customer, (random() * 1e6)::numeric(12,2) AS amount,
	       now() - g * interval '1 second' AS placed, md5((g * 7)::text) || md5((g * 13)::text) AS note,
	       jsonb_build_object('sku', g %% 9973, 'qty', g %% 17, 'tag', md5((g * 3)::text)) AS attrs
	  FROM generate_series(1, %[2]d) g`

// fillMixed makes about 14.5 MB of mixedTable rows per unit of scale, in
// four tables filled at once, so that pg_dump -j has work to spread.
func fillMixed(ctx context.Context, c *pgCluster, db string, scale int) error {
	errs := make(chan error, 4)
	for t := 1; t <= 4; t++ {
		go func() {
			_, err := c.client(ctx, db, "psql", "-q", "-v", "ON_ERROR_STOP=1", "-c", fmt.Sprintf(mixedTable, t, scale*12000))
			errs <- err
		}()
	}
	var err error
	for range 4 {
		err = errors.Join(err, <-errs)
	}
	return err
}

// fillTables makes n tables of rows rows each, one statement per
// transaction: a single transaction creating them all would run out of
// lock table slots.
func fillTables(ctx context.Context, c *pgCluster, db string, n, rows int, dir string) error {
	var b strings.Builder
	b.WriteString("SET synchronous_commit = off;\n")
	for t := 1; t <= n; t++ {
		fmt.Fprintf(&b, "CREATE TABLE item_%d AS SELECT g AS id, md5((%d * 1000 + g)::text) AS name, g * 1.5 AS price, now() AS added FROM generate_series(1, %d) g;\n", t, t, rows)
	}
	sql := filepath.Join(dir, "tables.sql")
	if err := os.WriteFile(sql, []byte(b.String()), 0o644); err != nil {
		return err
	}
	defer os.Remove(sql)
	_, err := c.client(ctx, db, "psql", "-q", "-v", "ON_ERROR_STOP=1", "-f", sql)
	return err
}

// exportJob is what the export tools share.
type exportJob struct {
	bin     string              // pgporter: the backup and the reference's mount
	bwlimit string              // both pipelines' transfer cap, or ""
	pgBin   string              // PostgreSQL's bin directory
	cred    *syscall.Credential // the postgres OS user, or nil
	repo    string
	dir     string
	db      string // the database to export; "" means shop
	auth    string // pgporter export --auth; "" means its default, a password
	tables  []string
	logf    func(string, ...any)
	name    string // the scenario's, for log lines
	// export-lan only, else nil: the link both pipelines send over, and
	// the reference's rsync daemon on its receiving side.
	link   *Link
	rsyncd *rsyncd
}

// checkDump returns an error unless pg_restore -l lists the data of every
// table of shop, and no other, in the dump at dir: a pipeline that moved
// an incomplete dump cannot post a fast time.
func (j *exportJob) checkDump(ctx context.Context, dir string) error {
	out, err := exec.CommandContext(ctx, filepath.Join(j.pgBin, "pg_restore"), "-l", dir).Output()
	if err != nil {
		return fmt.Errorf("pg_restore -l %s: %w", dir, err)
	}
	got := tableData(string(out))
	if !slices.Equal(got, j.tables) {
		return fmt.Errorf("the dump in %s holds the data of %d tables, shop has %d (%v, want %v)", dir, len(got), len(j.tables), head(got), head(j.tables))
	}
	return nil
}

// dbName is the database the job's pgporter export tools export.
func (j *exportJob) dbName() string {
	if j.db == "" {
		return "shop"
	}
	return j.db
}

func head(s []string) []string { return s[:min(len(s), 5)] }

// tableData returns the tables whose data a pg_restore -l listing holds
// ("3345; 0 16390 TABLE DATA public pgbench_accounts postgres"), sorted.
func tableData(list string) []string {
	var names []string
	sc := bufio.NewScanner(strings.NewReader(list))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 7 && !strings.HasPrefix(f[0], ";") && strings.HasSuffix(f[0], ";") && f[3] == "TABLE" && f[4] == "DATA" {
			names = append(names, f[6])
		}
	}
	slices.Sort(names)
	return names
}

// exportSteps are the steps of pgporter export's session that the harness
// keeps for database db, with the key of each in Measure.Extra.
func exportSteps(db string) [][2]string {
	return [][2]string{
		{orchestrator.StepMount, "mount_s"}, {orchestrator.StepStart, "instance_s"}, {orchestrator.StepCheck, "check_s"},
		{orchestrator.DumpStep(db), "dump_s"}, {orchestrator.TransferStep(db), "transfer_s"}, {orchestrator.StepCleanup, "cleanup_s"},
	}
}

// sessionSteps is the part of 'pgporter sessions show --json' the harness reads.
type sessionSteps struct {
	ID    string        `json:"id"`
	State string        `json:"state"`
	Steps []sessionStep `json:"steps"`
}

type sessionStep struct {
	Name      string    `json:"name"`
	Started   time.Time `json:"started"`
	Ended     time.Time `json:"ended"`
	Bytes     int64     `json:"bytes"`
	WireBytes int64     `json:"wire_bytes"`
}

// exportFigures reads a done session's journal record (sessions show
// --json) of the export of shop: the seconds of each step of exportSteps,
// the dump's bytes, the transfer's wire bytes and the mount's CoW layer's
// bytes, as Measure.Extra keys.
func exportFigures(js []byte) (map[string]float64, error) { return exportFiguresOf(js, "shop") }

// exportFiguresOf is exportFigures of the export of database db.
func exportFiguresOf(js []byte, db string) (map[string]float64, error) {
	var s sessionSteps
	if err := json.Unmarshal(js, &s); err != nil {
		return nil, fmt.Errorf("parsing sessions show --json: %w", err)
	}
	if s.State != "done" {
		return nil, fmt.Errorf("session %s is %q, not done", s.ID, s.State)
	}
	extra := map[string]float64{}
	for _, want := range exportSteps(db) {
		i := slices.IndexFunc(s.Steps, func(st sessionStep) bool { return st.Name == want[0] })
		if i < 0 {
			return nil, fmt.Errorf("session %s has no step %s", s.ID, want[0])
		}
		st := s.Steps[i]
		if st.Started.IsZero() || st.Ended.Before(st.Started) {
			return nil, fmt.Errorf("session %s: step %s has no times", s.ID, want[0])
		}
		extra[want[1]] = st.Ended.Sub(st.Started).Seconds()
		switch want[0] {
		case orchestrator.StepMount:
			// Journals before the mount recorded its CoW layer have none.
			if st.Bytes > 0 {
				extra["cow_MB"] = float64(st.Bytes) / 1e6
			}
		case orchestrator.DumpStep(db):
			extra["dump_MB"] = float64(st.Bytes) / 1e6
		case orchestrator.TransferStep(db):
			extra["wire_MB"] = float64(st.WireBytes) / 1e6
		}
	}
	return extra, nil
}

// vacuumNote is what the data note adds for Export.Vacuum.
func vacuumNote(v bool) string {
	if v {
		return ", VACUUM FREEZE before the backup"
	}
	return ""
}
