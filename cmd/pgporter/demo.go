package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/internal/pgtool"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/orchestrator"
	"github.com/pgporter/pgporter/staging"
)

type demoOpts struct {
	scale int
	keep  bool
	json  bool
	repo  string // "": a repository in the demo's directory
}

func newDemoCmd(g *globals) *cobra.Command {
	var o demoOpts
	c := &cobra.Command{
		Use:   "demo [--scale N] [--keep] [--json]",
		Short: "Run an end-to-end export on sample data",
		Long: `Show what pgporter does, end to end, on a throwaway sample cluster, using
the PostgreSQL installed here (15 if present, else the newest under
/usr/lib/postgresql):

  1. create a cluster (password authentication, a private socket, no TCP)
     with three databases: "shop" filled by 'pgbench -i -s N' (about
     14 MiB per scale unit: the default 70 makes about 1 GiB), "crm" (a few
     tables, a few MiB) and "empty";
  2. stop it and back it up into a repository;
  3. export "shop" and "crm" from that backup, as 'pgporter export' does
     (mount, throwaway instance, pg_dump, transfer over loopback QUIC);
  4. verify each delivered dump against its manifest, restart the sample
     cluster, restore "shop" into a new database and compare the row count
     of every pgbench table with the source;
  5. print sizes, wire bytes and time per step.

Everything lives in a temporary directory under /var/tmp, removed at the end,
also when a step fails or on Ctrl-C; --keep leaves it (the cluster stopped)
and says where. The demo has its own state directory there: --home is not
touched. Runs as root (the server runs as the postgres OS user) or as a user
who may run PostgreSQL and FUSE mounts.`,
		Example: `  pgporter demo
  pgporter demo --scale 5 --keep
  pgporter demo --scale 5 --repo s3://demo/pgporter   # with the AWS variables set`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDemo(cmd, g, o) },
	}
	f := c.Flags()
	f.IntVar(&o.scale, "scale", 70, "pgbench scale of the \"shop\" database (about 14 MiB each)")
	f.BoolVar(&o.keep, "keep", false, "keep the temporary directory (cluster, repository, dumps) and print where")
	f.BoolVar(&o.json, "json", false, "print a JSON summary, and nothing else, on stdout")
	f.StringVar(&o.repo, "repo", "", "back up into this repository instead of one in the temporary directory: a directory or s3://BUCKET/PREFIX (make demo-s3); its restore point stays there")
	return c
}

// pgbenchTables are the tables 'pgbench -i' creates; the demo compares their
// row counts between the source and the restored copy.
var pgbenchTables = []string{"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"}

// demoExported are the databases the demo exports; demoRestored is where
// the first is restored.
var demoExported = []string{"shop", "crm"}

const demoRestored = "shop_restored"

// crmSQL fills "crm": a few MB in tables of different shapes, with a
// quoted mixed-case table and column name that the dump must carry exactly.
const crmSQL = `
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE, created timestamptz NOT NULL);
INSERT INTO customers (name, email, created)
  SELECT 'Customer ' || g, 'c' || g || '@example.com', '2025-01-01'::timestamptz + g * interval '37 minutes'
  FROM generate_series(1, 20000) g;
CREATE TABLE "SalesNotes" (id bigserial PRIMARY KEY, customer int NOT NULL REFERENCES customers, "noteText" text, at timestamptz);
INSERT INTO "SalesNotes" (customer, "noteText", at)
  SELECT 1 + g % 20000, repeat(md5(g::text), 1 + g % 4), '2025-06-01'::timestamptz + g * interval '1 minute'
  FROM generate_series(1, 60000) g;
CREATE TABLE deals (id serial PRIMARY KEY, customer int REFERENCES customers, amount numeric(12,2),
  stage text NOT NULL CHECK (stage IN ('lead', 'won', 'lost')));
INSERT INTO deals (customer, amount, stage)
  SELECT 1 + g % 20000, (g % 9973) * 1.25, (ARRAY['lead', 'won', 'lost'])[1 + g % 3]
  FROM generate_series(1, 30000) g;
CREATE INDEX deals_stage ON deals (stage);
CREATE VIEW won_deals AS SELECT c.name, d.amount FROM deals d JOIN customers c ON c.id = d.customer WHERE d.stage = 'won';
`

// demoResult is the contract of 'demo --json'.
type demoResult struct {
	Session   string         `json:"session"`
	Dir       string         `json:"dir"`
	Kept      bool           `json:"kept"`
	Scale     int            `json:"scale"`
	PGVersion string         `json:"pg_version"`
	Databases []demoDB       `json:"databases"`
	Steps     []demoStep     `json:"steps"`
	Rows      []demoRowCount `json:"rows"`
	RowsMatch bool           `json:"rows_match"`
	Seconds   float64        `json:"seconds"`
}

type demoDB struct {
	Name            string  `json:"name"`
	SizeBytes       int64   `json:"size_bytes"` // pg_database_size in the sample cluster
	Exported        bool    `json:"exported"`
	DumpBytes       int64   `json:"dump_bytes,omitempty"`
	WireBytes       int64   `json:"wire_bytes,omitempty"`
	Ratio           float64 `json:"ratio,omitempty"` // dump bytes over wire bytes
	DumpSeconds     float64 `json:"dump_seconds,omitempty"`
	TransferSeconds float64 `json:"transfer_seconds,omitempty"`
	VerifiedFiles   int     `json:"verified_files,omitempty"`
}

type demoStep struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
	Bytes   int64   `json:"bytes,omitempty"`
	Detail  string  `json:"detail,omitempty"`
}

type demoRowCount struct {
	Table    string `json:"table"`
	Source   int64  `json:"source"`
	Restored int64  `json:"restored"`
}

// errRowsDiffer means the restored database does not hold what the source
// held: the demo's end-to-end check failed.
var errRowsDiffer = mark(errors.New("restored row counts differ from the source"), errVerification)

// demo is one run's state: what the deferred cleanup must undo, and what
// the summary reports.
type demo struct {
	g      *globals
	cmd    *cobra.Command
	o      demoOpts
	log    *slog.Logger
	dir    string
	bin    string
	pg     *pgtool.Cluster
	res    demoResult
	start  time.Time
	phases int
	phase  int
}

func runDemo(cmd *cobra.Command, g *globals, o demoOpts) (err error) {
	if o.scale < 1 {
		return usagef("--scale must be at least 1, not %d", o.scale)
	}
	d := &demo{g: g, cmd: cmd, o: o, log: g.log, start: time.Now(), phases: 4}
	d.res = demoResult{Scale: o.scale, Databases: []demoDB{}, Steps: []demoStep{}, Rows: []demoRowCount{}}
	// The library packages log each instance start and stop at info: noise
	// in a demo, unless the user asked for a log level.
	if !cmd.Flags().Changed("log-level") {
		d.log = slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if d.bin, err = demoBinDir(); err != nil {
		return err
	}
	for _, p := range []string{"initdb", "postgres", "pgbench", "pg_restore", "createdb"} {
		if _, err := exec.LookPath(filepath.Join(d.bin, p)); err != nil {
			return fmt.Errorf("the demo needs %s in %s: %w (run make setup)", p, d.bin, err)
		}
	}
	if d.dir, err = os.MkdirTemp("/var/tmp", "pgporter-demo-"); err != nil {
		return err
	}
	d.res.Dir = d.dir
	defer func() {
		if d.pg != nil {
			if serr := d.pg.Stop(); serr != nil && err == nil {
				err = serr
			}
		}
		if o.keep {
			d.res.Kept = true
			fmt.Fprintf(g.stderr, "kept %s: cluster data in cluster/data (stopped), repository in repo/, dumps in exports/\n", d.dir)
		} else if rerr := os.RemoveAll(d.dir); rerr != nil && err == nil {
			err = fmt.Errorf("removing %s: %w", d.dir, rerr)
		}
		if err != nil {
			if ctx := cmd.Context(); ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
				err = fmt.Errorf("%w (%v)", ctx.Err(), err)
			}
			return
		}
		d.res.Seconds = time.Since(d.start).Seconds()
		d.summary()
		if o.json {
			err = g.writeJSON(d.res)
		}
	}()
	// The postgres OS user must reach everything below (cluster, staging).
	if err := os.Chmod(d.dir, 0o755); err != nil {
		return err
	}
	fmt.Fprintf(g.stderr, "pgporter demo: working in %s\n", d.dir)
	if err := d.createCluster(cmd.Context()); err != nil {
		return err
	}
	rp, err := d.backup(cmd.Context())
	if err != nil {
		return err
	}
	s, err := d.export(cmd.Context(), rp)
	if err != nil {
		return err
	}
	if err := d.verify(cmd.Context(), s); err != nil {
		return err
	}
	return d.restore(cmd.Context(), s)
}

// step prints the header of the next phase.
func (d *demo) step(format string, args ...any) {
	d.phase++
	fmt.Fprintf(d.g.stderr, "\n[%d/%d] %s\n", d.phase, d.phases, fmt.Sprintf(format, args...))
}

// note prints a progress line within a phase.
func (d *demo) note(format string, args ...any) {
	fmt.Fprintf(d.g.stderr, "      "+format+"\n", args...)
}

// timed records how long a finished part of the demo took.
func (d *demo) timed(name string, start time.Time, bytes int64, detail string) float64 {
	secs := time.Since(start).Seconds()
	d.res.Steps = append(d.res.Steps, demoStep{Name: name, Seconds: secs, Bytes: bytes, Detail: detail})
	return secs
}

func (d *demo) db(name string) *demoDB {
	for i := range d.res.Databases {
		if d.res.Databases[i].Name == name {
			return &d.res.Databases[i]
		}
	}
	d.res.Databases = append(d.res.Databases, demoDB{Name: name})
	return &d.res.Databases[len(d.res.Databases)-1]
}

func (d *demo) createCluster(ctx context.Context) error {
	d.step("creating a sample cluster with %s", d.bin)
	t := time.Now()
	pg, version, err := newDemoCluster(ctx, d.bin, filepath.Join(d.dir, "cluster"))
	if err != nil {
		return err
	}
	d.pg = pg
	if err := pg.Start(ctx); err != nil {
		return err
	}
	d.res.PGVersion = version
	d.note("PostgreSQL %s: initdb --auth=scram-sha-256, pid %d, socket %s, port %d (no TCP)", version, pg.PID(), pg.SocketDir, pg.Port)
	d.timed("initdb+start", t, 0, "")

	for _, name := range []string{"shop", "crm", "empty"} {
		if err := d.exec(ctx, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
			return err
		}
	}
	t = time.Now()
	d.note("shop: pgbench -i -s %d (%d accounts)...", d.o.scale, d.o.scale*100000)
	if err := d.pgbench(ctx); err != nil {
		return err
	}
	d.timed("fill shop", t, 0, fmt.Sprintf("pgbench -i -s %d", d.o.scale))
	t = time.Now()
	d.note("crm: customers, \"SalesNotes\", deals, a view...")
	if err := d.exec(ctx, "crm", crmSQL); err != nil {
		return fmt.Errorf("filling crm: %w", err)
	}
	d.timed("fill crm", t, 0, "")
	for _, name := range []string{"shop", "crm", "empty"} {
		var size int64
		if err := d.queryRow(ctx, "postgres", "SELECT pg_database_size($1)", []any{name}, &size); err != nil {
			return err
		}
		d.db(name).SizeBytes = size
		d.note("%-6s %s", name, bytesize.Format(size))
	}
	src := map[string]int64{}
	for _, tbl := range pgbenchTables {
		var n int64
		if err := d.queryRow(ctx, "shop", "SELECT count(*) FROM "+pgx.Identifier{tbl}.Sanitize(), nil, &n); err != nil {
			return err
		}
		src[tbl] = n
	}
	for _, tbl := range pgbenchTables {
		d.res.Rows = append(d.res.Rows, demoRowCount{Table: tbl, Source: src[tbl]})
	}
	return nil
}

// pgbenchProgress matches pgbench -i -q's progress lines.
var pgbenchProgress = regexp.MustCompile(`^\d+ of \d+ tuples \(\d+%\) done`)

// pgbench fills "shop". Its progress lines are shown on a terminal; the
// rest of its output only if it fails.
func (d *demo) pgbench(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, filepath.Join(d.bin, "pgbench"), "-i", "-q", "-s", strconv.Itoa(d.o.scale), "shop")
	cmd.Env = d.pg.ClientEnv("postgres")
	cmd.Dir = d.dir
	out, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting pgbench: %w", err)
	}
	tty := isTTY(d.g.stderr)
	var log strings.Builder
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if pgbenchProgress.MatchString(line) {
			if tty {
				d.note("  %s", line)
			}
			continue
		}
		log.WriteString(line + "\n")
	}
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("pgbench -i failed (%v): %s", err, strings.TrimSpace(log.String()))
	}
	return nil
}

// repo is the demo's repository: --repo, else one in its directory.
func (d *demo) repo() string {
	if d.o.repo != "" {
		return d.o.repo
	}
	return filepath.Join(d.dir, "repo")
}

func (d *demo) backup(ctx context.Context) (*chunkstore.RestorePoint, error) {
	d.step("stopping the cluster and backing it up")
	if err := d.pg.Stop(); err != nil {
		return nil, err
	}
	t := time.Now()
	repo, err := chunkstore.OpenRepo(ctx, d.repo(), d.log)
	if err != nil {
		return nil, err
	}
	defer repo.Close()
	var bar *byteBar
	rp, err := repo.Backup(ctx, d.pg.DataDir, chunkstore.BackupOptions{Progress: func(done, total int64) {
		if bar == nil {
			bar = newByteBar(ctx, d.g.stderr, "backup", total)
		}
		bar.set(done)
	}})
	if bar != nil {
		bar.done(err == nil)
	}
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	if err := repo.Close(); err != nil {
		return nil, err
	}
	detail := fmt.Sprintf("%d files, %s read, %s stored", rp.Files, bytesize.Format(rp.Size), bytesize.Format(rp.StoredSize))
	secs := d.timed("backup", t, rp.Size, detail)
	d.note("restore point %s: %s in %.1fs", rp.ID, detail, secs)
	return rp, nil
}

func (d *demo) export(ctx context.Context, rp *chunkstore.RestorePoint) (*orchestrator.Session, error) {
	d.step("exporting %s from restore point %s", strings.Join(quoteAll(demoExported), " and "), rp.ID)
	r, err := orchestrator.NewRunner(orchestrator.Options{Home: filepath.Join(d.dir, "home"), Log: d.log, Password: d.pg.Password})
	if err != nil {
		return nil, err
	}
	s, err := r.Create(ctx, orchestrator.Plan{
		Repo: d.repo(), RestorePoint: "latest", Databases: demoExported,
		To: filepath.Join(d.dir, "exports"), StagingDir: filepath.Join(d.dir, "staging"), Jobs: 2,
	})
	if err != nil {
		return nil, err
	}
	d.res.Session = s.ID
	d.note("session %s", s.ID)
	t := time.Now()
	pr := &progressRenderer{w: d.g.stderr, ctx: d.cmd}
	r.SetEvents(pr.event)
	s, err = r.Run(ctx, s.ID)
	pr.close(err == nil)
	if err != nil {
		return nil, fmt.Errorf("export session: %w", err)
	}
	d.timed("export", t, 0, "session "+s.ID)
	steps := slices.Clone(s.Steps)
	slices.SortStableFunc(steps, func(a, b *orchestrator.Step) int { return a.Started.Compare(b.Started) })
	for _, st := range steps {
		d.res.Steps = append(d.res.Steps, demoStep{Name: "  " + st.Name, Seconds: st.Seconds(), Bytes: st.Bytes, Detail: st.Detail})
	}
	for _, name := range demoExported {
		dump, tr := s.Step(orchestrator.DumpStep(name)), s.Step(orchestrator.TransferStep(name))
		db := d.db(name)
		db.Exported, db.DumpBytes, db.WireBytes = true, tr.Bytes, tr.WireBytes
		db.DumpSeconds, db.TransferSeconds = dump.Seconds(), tr.Seconds()
		if tr.WireBytes > 0 {
			db.Ratio = float64(tr.Bytes) / float64(tr.WireBytes)
		}
	}
	return s, nil
}

func (d *demo) verify(ctx context.Context, s *orchestrator.Session) error {
	d.step("verifying the dumps, restoring \"shop\" into %q", demoRestored)
	t := time.Now()
	var bytes int64
	for _, name := range demoExported {
		rep, err := mover.Verify(ctx, s.TargetDir(name))
		if err != nil {
			if rep != nil && len(rep.Problems) > 0 {
				err = fmt.Errorf("%w: %s", err, rep.Problems[0])
			}
			return fmt.Errorf("verifying %s: %w", s.TargetDir(name), err)
		}
		d.db(name).VerifiedFiles = rep.Files
		bytes += rep.Bytes
		d.note("%s: %d files, %s match %s", s.TargetDir(name), rep.Files, bytesize.Format(rep.Bytes), mover.ManifestName)
	}
	d.timed("verify", t, bytes, "")
	return nil
}

func (d *demo) restore(ctx context.Context, s *orchestrator.Session) error {
	t := time.Now()
	if err := d.pg.Start(ctx); err != nil {
		return fmt.Errorf("restarting the sample cluster: %w", err)
	}
	d.timed("restart cluster", t, 0, "")
	t = time.Now()
	var said strings.Builder
	err := runRestore(ctx, restoreOptions{
		Dir: s.TargetDir("shop"), DBName: demoRestored, Create: true, BinDir: d.bin, Env: d.pg.ClientEnv("postgres"), Jobs: 2,
	}, &said, d.g.stderr)
	if err != nil {
		return err
	}
	d.timed("restore shop", t, 0, "pgporter restore --create --jobs 2")
	d.note("%s", strings.TrimSpace(said.String()))
	d.note("row counts, source and restored:")
	d.res.RowsMatch = true
	for i := range d.res.Rows {
		rc := &d.res.Rows[i]
		if err := d.queryRow(ctx, demoRestored, "SELECT count(*) FROM "+pgx.Identifier{rc.Table}.Sanitize(), nil, &rc.Restored); err != nil {
			return err
		}
		mark := "="
		if rc.Restored != rc.Source {
			mark, d.res.RowsMatch = "≠", false
		}
		d.note("%-18s %10d %s %d", rc.Table, rc.Source, mark, rc.Restored)
	}
	if !d.res.RowsMatch {
		return errRowsDiffer
	}
	return nil
}

// summary prints the results on stdout.
func (d *demo) summary() {
	w := d.g.stdout
	fmt.Fprintf(w, "\npgporter demo: done in %s (session %s, PostgreSQL %s, pgbench scale %d)\n\n",
		time.Duration(d.res.Seconds*float64(time.Second)).Round(100*time.Millisecond), d.res.Session, d.res.PGVersion, d.res.Scale)
	fmt.Fprintf(w, "  %-8s %11s %11s %11s %7s %10s %10s\n", "database", "size", "dump", "wire", "ratio", "dump", "transfer")
	for _, db := range d.res.Databases {
		if !db.Exported {
			fmt.Fprintf(w, "  %-8s %11s %11s\n", db.Name, bytesize.Format(db.SizeBytes), "(not exported)")
			continue
		}
		fmt.Fprintf(w, "  %-8s %11s %11s %11s %6.1fx %9.1fs %9.1fs\n", db.Name, bytesize.Format(db.SizeBytes), bytesize.Format(db.DumpBytes),
			bytesize.Format(db.WireBytes), db.Ratio, db.DumpSeconds, db.TransferSeconds)
	}
	fmt.Fprintln(w, "  (ratio: dump bytes over bytes on the wire. pgbench rows are mostly blank padding,")
	fmt.Fprintln(w, "  which zstd squeezes far more than real data; crm's ratio is nearer the usual.)")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  step\ttime\tbytes\tdetail")
	for _, st := range d.res.Steps {
		bytes := "-"
		if st.Bytes > 0 {
			bytes = bytesize.Format(st.Bytes)
		}
		fmt.Fprintf(tw, "  %s\t%6.1fs\t%s\t%s\n", st.Name, st.Seconds, bytes, st.Detail)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\n  row counts of the %d pgbench tables are equal in \"shop\" and %q\n", len(d.res.Rows), demoRestored)
}

// demoBinDir picks the PostgreSQL binaries: 15 if installed, else the
// newest major under /usr/lib/postgresql.
func demoBinDir() (string, error) {
	if d, err := pgtool.ServerBinDir("15", ""); err == nil {
		return d, nil
	}
	return pgtool.NewestServerBinDir()
}

// newDemoCluster makes the demo's sample cluster in base and starts it:
// password authentication, a private socket directory, no TCP listener; the
// server and initdb run as the postgres OS user when the demo runs as root.
func newDemoCluster(ctx context.Context, bin, base string) (*pgtool.Cluster, string, error) {
	pw := make([]byte, 12)
	_, _ = rand.Read(pw)
	pg, err := pgtool.NewCluster(pgtool.ClusterOptions{BinDir: bin, Base: base, Password: hex.EncodeToString(pw), Locale: "C",
		Settings: map[string]string{
			// A sample: durability off, and no WAL for pgbench's freshly
			// created tables.
			"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
			"wal_level": "minimal", "max_wal_senders": "0", "max_wal_size": "4GB", "logging_collector": "off",
		}})
	if err != nil {
		return nil, "", err
	}
	if err := pg.Initdb(ctx, pg.DataDir); err != nil {
		return nil, "", err
	}
	v, err := staging.ReadPGVersion(pg.DataDir)
	if err != nil {
		return nil, "", err
	}
	return pg, v, nil
}

// exec runs sql (several statements may be given) in db of the sample
// cluster.
func (d *demo) exec(ctx context.Context, db, sql string) error {
	conn, err := pgx.Connect(ctx, d.pg.ConnString(db))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("database %q: %w", db, err)
	}
	return nil
}

func (d *demo) queryRow(ctx context.Context, db, sql string, args []any, dest ...any) error {
	conn, err := pgx.Connect(ctx, d.pg.ConnString(db))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.QueryRow(ctx, sql, args...).Scan(dest...); err != nil {
		return fmt.Errorf("database %q: %w", db, err)
	}
	return nil
}
