package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/internal/config"
	"github.com/pgporter/pgporter/orchestrator"
	"github.com/pgporter/pgporter/protocol"
	"github.com/pgporter/pgporter/staging"
	"github.com/spf13/cobra"
)

type exportOpts struct {
	plan         orchestrator.Plan
	bwlimit      string
	splitTables  string
	published    string
	passwordFile string
	sourcePort   int
	memoryLimit  string
	json         bool
	at           string
	atLSN        string
	atTimeline   string
	atName       string
	filter       staging.DumpFilter
}

func newExportCmd(g *globals) *cobra.Command {
	var eo exportOpts
	c := &cobra.Command{
		Use:   "export (--repo DIR | --repo-peer ADDR#ID | --published ID) --db NAME... --to DIR",
		Short: "Export databases from a restore point to a target directory",
		Long: `Export databases out of a backup: mount the restore point (FUSE, copy-on-write,
the backup is never modified), start a throwaway PostgreSQL instance on it,
check the user's credentials and privileges and the free space, run
'pg_dump -Fd' for each database into the staging directory, and move each dump
to the target through the movers (zstd chunks addressed by BLAKE3 over QUIC),
where it is verified and committed as DIR/<db>/ with pgporter-manifest.json.

By default every role runs on this machine: the target mover runs in-process
and is reached over loopback QUIC, the same code path as across hosts. Across
hosts, name the movers as ADDR#PEER_ID ('pgporter mover id' prints the ID):
--repo-peer (a 'mover serve --repo' host), --staging (a 'mover serve' host that
mounts, dumps and sends; it runs the steps and this command follows them) and
--target (a 'mover serve --root' host; --to is a path there). Trust: the
staging mover trusts this home's ID with orchestrate, the repository mover
trusts the staging mover with read, the target trusts it with send.

The PostgreSQL user (--pg-user, default postgres) logs in with its password as
of the backup, taken from, in this order: --password-file; the service PGSERVICE
names (PGSERVICEFILE or ~/.pg_service.conf, then the system pg_service.conf; its
user replaces the default --pg-user); PGPASSWORD; the password file (the
service's passfile, PGPASSFILE or ~/.pgpass, mode 0600 or stricter, matched for
host localhost and --source-port); and last a prompt when stdin is a terminal.
Without a terminal, a missing password fails at once (exit code 2).
With --auth backup-hba, no password: the throwaway instance uses the local
lines of the backup's own pg_hba.conf, and the export is refused before the
instance starts unless they let the role in without a password (trust, or
peer, which needs pgporter to run as the OS user named like the role: as root,
peer cannot work).

With --published ID the export dumps from a running publication ('pgporter
publish') instead of a restore point, on the publication's host (its mover's,
for 'publish --on'), with no mount or instance of its own: into --to there
(inside the mover's --roots), or sent on to --target. The publication keeps
serving, unless --unpublish-after.

--table, --schema, --exclude-table, --data-only and --schema-only narrow
each dump with pg_dump's own options and pattern rules (quoting included);
each --table and --schema pattern must match something in the restore
point, checked before any dump, and a pattern that matches nothing is an
error that names the closest tables.

With --at TIME (or --at-lsn, --at-name, or --at end) the export is as of a
point in time: the newest restore point taken before TIME, whose throwaway
instance replays the repository's WAL archive ('pgporter wal-push') up to the
target and is promoted before the dumps. 'sessions show' says the point the
replay reached. A target the archive does not reach fails before any dump.
After a failover the archive holds several timelines: recovery follows the
newest one that descends from the restore point (--at-timeline latest), or
stays on the restore point's own (--at-timeline current), or takes the one
named; 'restore-points' shows where each timeline ends. With --repo-peer the
archive is the repository mover's: the process that runs the instance (this
one, or the staging mover's with --staging) fetches the WAL for it, and its
restore_command reaches it through a socket only the instance's OS user can
use.

Every step is journaled under --home. If the export fails or is interrupted,
'pgporter retry SESSION' continues from the first unfinished step (finished
dumps are not redone; transfers send only missing chunks), and
'pgporter cancel SESSION' removes everything the session left.

Flags that make no sense together are refused, naming both.`,
		Example: `  pgporter export --repo /srv/repo --restore-point latest \
      --db shop --db crm --to /srv/exports
  pgporter export --repo-peer 10.0.0.5:7448#REPO-ID \
      --staging 10.0.0.6:7448#STAGING-ID --target 10.0.0.7:7448#TARGET-ID \
      --db shop --to /srv/exports
  pgporter export --published p-20260101-120000-a1b2c3 \
      --db shop --to /srv/exports
  pgporter export --repo /srv/repo --at '2026-12-01 14:32:00+00' \
      --db shop --table orders --to /srv/exports`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runExport(cmd, g, eo) },
	}
	f := c.Flags()
	f.StringVar(&eo.plan.Repo, "repo", "", "repository: directory or s3://BUCKET/PREFIX")
	f.StringVar(&eo.plan.RestorePoint, "restore-point", "latest", "restore point ID, or latest (with --at TIME: the newest taken before TIME)")
	f.StringVar(&eo.at, "at", "", "export as of this time (RFC 3339, or '2006-01-02 15:04:05[.999999][+00]'; no zone means UTC), or 'end' for the end of the WAL archive")
	f.StringVar(&eo.atLSN, "at-lsn", "", "export as of this WAL location (like 0/3000148)")
	f.StringVar(&eo.atName, "at-name", "", "export as of this named restore point (pg_create_restore_point)")
	f.StringVar(&eo.atTimeline, "at-timeline", "", "with --at, --at-lsn or --at-name: the timeline recovery follows after a failover: latest (default: the newest in the archive), current (the restore point's), or a timeline ID")
	f.StringArrayVar(&eo.filter.Tables, "table", nil, "dump only tables matching this pg_dump pattern (repeat for several; each must match something)")
	f.StringArrayVar(&eo.filter.Schemas, "schema", nil, "dump only schemas matching this pg_dump pattern (repeat for several; each must match something)")
	f.StringArrayVar(&eo.filter.ExcludeTables, "exclude-table", nil, "do not dump tables matching this pg_dump pattern (repeat for several)")
	f.BoolVar(&eo.filter.DataOnly, "data-only", false, "dump only the data, not the schema")
	f.BoolVar(&eo.filter.SchemaOnly, "schema-only", false, "dump only the schema, no data")
	f.StringArrayVar(&eo.plan.Databases, "db", nil, "database to export, matched exactly (repeat for several)")
	f.StringVar(&eo.plan.To, "to", "", "target directory; each database lands in DIR/<db>/")
	f.StringVar(&eo.plan.PGUser, "pg-user", "postgres", "PostgreSQL user that dumps (needs CONNECT and SELECT, or pg_read_all_data)")
	f.StringVar(&eo.passwordFile, "password-file", "", "file whose first line is the PostgreSQL user's password")
	f.StringVar(&eo.plan.Auth, "auth", orchestrator.AuthPassword, "how pgporter logs in to the throwaway instance: password (pgporter's own password-only pg_hba.conf) or backup-hba (the local lines of the backup's pg_hba.conf: trust, or peer as pgporter's OS user; no password)")
	f.IntVar(&eo.sourcePort, "source-port", 5432, "port of the backed-up server, to match ~/.pgpass entries")
	f.IntVar(&eo.plan.Jobs, "jobs", 2, "parallel pg_dump jobs per database")
	f.BoolVar(&eo.plan.Overwrite, "overwrite", false, "replace DIR/<db> if it exists (the old one is kept until the new one is committed)")
	f.StringVar(&eo.plan.StagingDir, "staging-dir", "/var/tmp/pgporter", "where dumps are written before they move (must be reachable by the postgres OS user)")
	f.StringVar(&eo.plan.OSUser, "os-user", "postgres", "OS user that runs the throwaway instance")
	f.StringVar(&eo.plan.RepoPeer, "repo-peer", "", "repository mover ADDR#PEER_ID (instead of --repo); the staging side needs read there")
	f.StringVar(&eo.plan.Staging, "staging", "", "staging mover ADDR#PEER_ID that mounts, dumps and sends (needs --repo-peer and --target); it must trust this home's ID with orchestrate")
	f.StringVar(&eo.plan.Target, "target", "", "target mover ADDR#PEER_ID; --to is then a path on it, inside one of its roots; the staging side needs send there")
	f.StringVar(&eo.published, "published", "", "export from publication ID ('pgporter published'): pg_dump runs against it on its host, into --to there (inside its mover's roots for 'publish --on'), or sends to --target; a session like any export (retry, cancel)")
	f.BoolVar(&eo.plan.UnpublishAfter, "unpublish-after", false, "with --published: unpublish the publication once the export is done")
	f.BoolVar(&eo.plan.AllowMissingPreload, "allow-missing-preload", false, "start the throwaway instance without shared_preload_libraries this host lacks (they are named); without it, such a backup is refused")
	f.BoolVar(&eo.plan.Globals, "globals", false, "add pg_dumpall --globals-only (roles, tablespaces) to each dump as globals.sql")
	f.StringVar(&eo.bwlimit, "bwlimit", "", "limit on each transfer's wire bytes per second, e.g. 50M")
	f.StringVar(&eo.splitTables, "split-tables-from", "off", "experimental: dump the data of tables at least this big (e.g. 64M) in parallel page ranges (--jobs connections, one snapshot; still an ordinary pg_dump -Fd archive); slower than pg_dump on 2 cores, see docs/BENCHMARKS.md")
	f.BoolVar(&eo.json, "json", false, "print a JSON summary, and nothing else, on stdout")
	addMemoryLimitFlag(f, &eo.memoryLimit, exportMemoryLimit)
	addCacheSizeFlag(f)
	c.MarkFlagsMutuallyExclusive("repo", "repo-peer")
	c.MarkFlagsMutuallyExclusive("repo", "staging") // the staging host reads the repository through --repo-peer
	c.MarkFlagsMutuallyExclusive("overwrite", "target")
	c.MarkFlagsMutuallyExclusive("at", "at-lsn", "at-name")
	c.MarkFlagsMutuallyExclusive("data-only", "schema-only")
	// The publication is the source and the staging host; its instance is
	// running already, and it dumps what it has.
	for _, f := range []string{"repo", "repo-peer", "staging", "restore-point", "allow-missing-preload", "globals", "overwrite", "at", "at-lsn", "at-name", "at-timeline", "table", "schema", "exclude-table", "data-only", "schema-only"} {
		c.MarkFlagsMutuallyExclusive("published", f)
	}
	setGroupedUsage(c, exportFlagGroups)
	return c
}

// exportFlagGroups are the headings of 'export --help'. A new flag goes
// under one of them (TestExportHelpGroups).
var exportFlagGroups = []flagGroup{
	{"Source", []string{"repo", "restore-point", "db", "at", "at-lsn", "at-name", "at-timeline", "repo-password-file"}},
	{"Destination", []string{"to", "overwrite"}},
	{"Cross-host", []string{"repo-peer", "staging", "target"}},
	{"Published instance", []string{"published", "unpublish-after"}},
	{"Dump", []string{"table", "schema", "exclude-table", "data-only", "schema-only", "jobs", "globals", "split-tables-from", "staging-dir", "os-user", "allow-missing-preload"}},
	{"Transfer", []string{"bwlimit"}},
	{"Credentials", []string{"pg-user", "password-file", "auth", "source-port"}},
	{otherFlags, []string{"json", "memory-limit", "cache-size", "help"}},
}

// checkExportModes refuses the flags that make no sense in the mode the
// others choose, which the flag groups cannot say (they are only mutually
// exclusive).
func checkExportModes(cmd *cobra.Command, eo exportOpts) error {
	if eo.published == "" && config.OnCommandLine(cmd.Flags(), "unpublish-after") {
		return usagef("--unpublish-after works only with --published ID")
	}
	if eo.plan.Staging != "" {
		// The staging host reaches the repository and the target itself.
		switch {
		case eo.plan.RepoPeer == "":
			return usagef("export --staging needs --repo-peer ADDR#PEER_ID: the repository, as the staging host reaches it")
		case eo.plan.Target == "":
			return usagef("export --staging needs --target ADDR#PEER_ID: the target, as the staging host reaches it")
		}
	}
	return nil
}

func runExport(cmd *cobra.Command, g *globals, eo exportOpts) error {
	if err := applyMemoryLimit(cmd, eo.memoryLimit); err != nil {
		return err
	}
	if err := checkExportModes(cmd, eo); err != nil {
		return err
	}
	if eo.published != "" {
		return runPublishedExport(cmd, g, eo)
	}
	switch {
	case eo.plan.Repo == "" && eo.plan.RepoPeer == "":
		return usagef("export needs --repo DIR or --repo-peer ADDR#PEER_ID")
	case eo.plan.To == "":
		return usagef("export needs --to DIR")
	case len(eo.plan.Databases) == 0:
		return usagef("export needs at least one --db NAME")
	case eo.plan.Jobs < 1:
		return usagef("--jobs %d: pg_dump needs at least 1 job", eo.plan.Jobs)
	}
	at, err := parseAt(eo.at, eo.atLSN, eo.atName, eo.atTimeline)
	if err != nil {
		return err
	}
	eo.plan.At = at
	if !eo.filter.IsZero() {
		eo.plan.Filter = &eo.filter
	}
	if eo.plan.Staging != "" {
		// The staging host decides where it writes and who runs PostgreSQL.
		for _, name := range []string{"staging-dir", "os-user"} {
			if config.OnCommandLine(cmd.Flags(), name) {
				return usagef("--%s is set by the staging mover ('pgporter mover serve --%s' on its host), not by the orchestrator", name, name)
			}
		}
		eo.plan.StagingDir, eo.plan.OSUser = "", ""
	}
	return startExport(cmd, g, eo, func(p orchestrator.Plan) string { return "restore point " + p.RestorePoint })
}

// startExport creates the session of the export eo and drives it; from
// names what it exports from, for the first line.
func startExport(cmd *cobra.Command, g *globals, eo exportOpts, from func(orchestrator.Plan) string) error {
	eo.plan.PasswordFile = eo.passwordFile
	if f := passwordFileFlag(cmd); f != "" {
		abs, err := filepath.Abs(f) // a retry may run from anywhere
		if err != nil {
			return err
		}
		eo.plan.RepoPasswordFile = abs
	}
	if err := eo.parseSizes(); err != nil {
		return err
	}
	fl := cmd.Flags()
	cred := &credentials{user: eo.plan.PGUser, userSet: fl.Changed("pg-user"), passwordFile: eo.passwordFile,
		port: eo.sourcePort, portSet: fl.Changed("source-port"), auth: eo.plan.Auth, published: eo.published != ""}
	if err := cred.check(); err != nil {
		return err
	}
	r, err := newSessionRunner(g, cred)
	if err != nil {
		return err
	}
	s, err := r.Create(cmd.Context(), eo.plan)
	if err != nil { // orchestrator.ErrBadPlan is a usage error, unless more specific
		return err
	}
	fmt.Fprintf(g.stderr, "session %s: exporting %s from %s to %s\n", s.ID, strings.Join(quoteAll(s.Plan.Databases), ", "), from(s.Plan), s.Plan.To)
	return driveSession(cmd, g, r, s.ID, eo.json)
}

// parseSizes reads --bwlimit and --split-tables-from into the plan.
func (eo *exportOpts) parseSizes() error {
	if eo.bwlimit != "" {
		n, err := bytesize.Parse(eo.bwlimit)
		if err != nil || n <= 0 {
			return usagef("--bwlimit %q: want a positive size per second, e.g. 50M", eo.bwlimit)
		}
		eo.plan.BWLimit = n
	}
	switch v := strings.ToLower(strings.TrimSpace(eo.splitTables)); v {
	case "off", "0", "none":
		eo.plan.SplitTables = 0
	default:
		n, err := bytesize.Parse(v)
		if err != nil || n <= 0 {
			return usagef("--split-tables-from %q: want a size such as 64M, or off", eo.splitTables)
		}
		eo.plan.SplitTables = n
	}
	return nil
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

// exportResult is the contract of 'export --json' and 'retry --json'.
type exportResult struct {
	Session   string     `json:"session"`
	State     string     `json:"state"`
	Error     string     `json:"error,omitempty"`
	Databases []dbResult `json:"databases"`
}

type dbResult struct {
	Name      string  `json:"name"`
	Path      string  `json:"path"`
	Bytes     int64   `json:"bytes"`
	WireBytes int64   `json:"wire_bytes"`
	Seconds   float64 `json:"seconds"` // dump + transfer
}

func resultOf(s *orchestrator.Session) exportResult {
	res := exportResult{Session: s.ID, State: string(s.State), Error: s.Error, Databases: []dbResult{}}
	for _, db := range s.Plan.Databases {
		d, t := s.Step(orchestrator.DumpStep(db)), s.Step(orchestrator.TransferStep(db))
		res.Databases = append(res.Databases, dbResult{Name: db, Path: s.TargetDir(db), Bytes: t.Bytes, WireBytes: t.WireBytes, Seconds: d.Seconds() + t.Seconds()})
	}
	return res
}

// driveSession runs (or retries) a session with progress on stderr and
// the summary on stdout.
func driveSession(cmd *cobra.Command, g *globals, r *orchestrator.Runner, id string, asJSON bool) error {
	ctx := cmd.Context()
	pr := &progressRenderer{w: g.stderr, ctx: cmd}
	r.SetEvents(pr.event)
	s, err := r.Run(ctx, id)
	pr.close(err == nil)
	if s == nil {
		return err
	}
	if err == nil {
		printSummary(g.stdout, s)
	} else {
		fmt.Fprintf(g.stderr, "session %s failed; 'pgporter retry %s' continues it, 'pgporter cancel %s' removes what it left\n", s.ID, s.ID, s.ID)
	}
	if asJSON {
		if jerr := g.writeJSON(resultOf(s)); jerr != nil && err == nil {
			err = jerr
		}
	}
	return err
}

func printSummary(w io.Writer, s *orchestrator.Session) {
	fmt.Fprintf(w, "session %s %s\n", s.ID, s.State)
	for _, db := range s.Plan.Databases {
		d, t := s.Step(orchestrator.DumpStep(db)), s.Step(orchestrator.TransferStep(db))
		ratio := 0.0
		if t.WireBytes > 0 {
			ratio = float64(t.Bytes) / float64(t.WireBytes)
		}
		fmt.Fprintf(w, "  %-20q %s  dump %s in %.1fs, wire %s (%.1fx) in %.1fs\n", db, s.TargetDir(db), bytesize.Format(t.Bytes), d.Seconds(), bytesize.Format(t.WireBytes), ratio, t.Seconds())
	}
}

// progressRenderer prints one line per step and a byte bar per transfer
// (bars only on a terminal).
type progressRenderer struct {
	w   io.Writer
	ctx *cobra.Command

	mu  sync.Mutex
	bar *byteBar
}

func (p *progressRenderer) event(e orchestrator.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch e.Kind {
	case protocol.EventStart:
		p.endBar(true)
		fmt.Fprintf(p.w, "• %s\n", e.Step)
	case protocol.EventProgress:
		if kind, _, _ := orchestrator.ParseStep(e.Step); kind == orchestrator.StepTransfer && e.Total > 0 {
			if p.bar == nil {
				p.bar = newByteBar(p.ctx.Context(), p.w, e.Step, e.Total)
			}
			p.bar.set(e.Done)
		}
	case protocol.EventDone:
		p.endBar(true)
		if e.Text != "" {
			fmt.Fprintf(p.w, "  done: %s\n", e.Text)
		}
	case protocol.EventSkip:
		if e.Step != "" {
			fmt.Fprintf(p.w, "• %s: %s\n", e.Step, e.Text)
		} else {
			fmt.Fprintln(p.w, e.Text)
		}
	case protocol.EventWarning:
		fmt.Fprintf(p.w, "  warning: %s\n", e.Text)
	}
}

func (p *progressRenderer) endBar(ok bool) {
	if p.bar != nil {
		p.bar.done(ok)
		p.bar = nil
	}
}

func (p *progressRenderer) close(ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endBar(ok)
}

// runPublishedExport exports from a publication: a session whose steps run
// on the publication's host (this one, or its mover's for 'publish --on'),
// which retry and cancel reach like any other.
func runPublishedExport(cmd *cobra.Command, g *globals, eo exportOpts) error {
	// The flags of a restore point's export are refused by their flag groups.
	switch {
	case eo.plan.To == "":
		return usagef("export --published ID needs --to DIR (on the publication's host, or on --target)")
	case len(eo.plan.Databases) == 0:
		return usagef("export --published ID needs at least one --db NAME")
	}
	eo.plan.Published = eo.published
	return startExport(cmd, g, eo, func(p orchestrator.Plan) string { return "publication " + p.Published })
}

// atLayouts are the forms --at accepts besides RFC 3339: PostgreSQL's own
// timestamp text, with or without a zone (none means UTC).
var atLayouts = []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07", "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999", "2006-01-02T15:04:05.999999999"}

// parseAt reads --at, --at-lsn and --at-name (at most one is set: the flags
// are exclusive) and --at-timeline into the plan's point in time; none
// gives nil.
func parseAt(at, lsn, name, timeline string) (*orchestrator.PointInTime, error) {
	pit, err := parseAtTarget(at, lsn, name)
	switch {
	case err != nil:
		return nil, err
	case timeline == "":
		return pit, nil
	case pit == nil:
		return nil, usagef("--at-timeline needs --at, --at-lsn or --at-name")
	}
	if timeline != "latest" && timeline != "current" {
		if n, err := strconv.ParseUint(timeline, 10, 32); err != nil || n == 0 {
			return nil, usagef("--at-timeline %q is not a timeline: latest, current, or a timeline ID such as 2", timeline)
		}
	}
	pit.Timeline = timeline
	return pit, nil
}

func parseAtTarget(at, lsn, name string) (*orchestrator.PointInTime, error) {
	switch {
	case lsn != "":
		return &orchestrator.PointInTime{LSN: lsn}, nil
	case name != "":
		return &orchestrator.PointInTime{Name: name}, nil
	case at == "":
		return nil, nil
	case at == "end":
		return &orchestrator.PointInTime{}, nil
	}
	for _, layout := range atLayouts {
		if t, err := time.Parse(layout, at); err == nil {
			return &orchestrator.PointInTime{Time: t}, nil
		}
	}
	return nil, usagef("--at %q is not a time: use RFC 3339 (2026-12-01T14:32:00Z) or '2026-12-01 14:32:00+00', or 'end'", at)
}
