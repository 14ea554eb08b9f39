// Command pgporter-bench runs the benchmark harness of package bench:
// pgporter against the tools users would pick instead, on the same data and
// links, with results as JSON, benchstat lines, Markdown tables and charts.
//
//	go run ./bench/cmd/pgporter-bench --list
//	go run ./bench/cmd/pgporter-bench --scenario lan --runs 5 --data /var/tmp/lan-dump
//	go run ./bench/cmd/pgporter-bench --scenario export --runs 3 --export-scale 70
//	go run ./bench/cmd/pgporter-bench --scenario export-mixed --runs 3 --perf /tmp/mixed.data
//	go run ./bench/cmd/pgporter-bench --scenario export-lan --runs 3 --export-scale 20
//	go run ./bench/cmd/pgporter-bench --scenario lan --data /var/tmp/lan-dump --perf /tmp/lan.data
//	go run ./bench/cmd/pgporter-bench --scenario wan,outage,delta --runs 3
//	go run ./bench/cmd/pgporter-bench --scenario resume,chunk-dump --runs 3
//	go run ./bench/cmd/pgporter-bench --scenario multidb,backup,scale-1x --runs 3
//	go run ./bench/cmd/pgporter-bench --smoke
//	go run ./bench/cmd/pgporter-bench --report bench/results/DATE.json
//	go run ./bench/cmd/pgporter-bench --report bench/results/DATE.json --doc docs/BENCHMARKS.md --doc-section make-bench
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/pgporter/pgporter/bench"
	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run parses args and runs the harness; it returns the exit code: 0 on
// success, 2 for a usage error, 130 when cancelled, 1 otherwise.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o bench.Options
	var list bool
	var report string
	var sendFlags string
	var doc, docSection string
	c := &cobra.Command{
		Use:           "pgporter-bench",
		Short:         "Benchmark pgporter against rsync, tar|zstd|nc and the other tools users would pick",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if list {
				for _, s := range bench.ScenarioNames() {
					fmt.Fprintf(stdout, "%-12s %s\n", s[0], s[1])
				}
				return nil
			}
			if (doc == "") != (docSection == "") {
				return usageError{errors.New("--doc and --doc-section go together")}
			}
			if doc != "" {
				// Refused now, not after an hour of runs.
				if err := bench.CheckDocSection(doc, docSection); err != nil {
					return usageError{err}
				}
			}
			if report != "" {
				f, err := bench.ReadJSON(report)
				if err != nil {
					return err
				}
				if doc != "" {
					return bench.UpdateDocSection(doc, docSection, report, f)
				}
				return bench.WriteTables(stdout, f)
			}
			var known []string
			for _, s := range bench.ScenarioNames() {
				known = append(known, s[0])
			}
			for _, name := range o.Scenarios {
				// A name chooses its variants too: wan chooses wan-lossy.
				if !slices.ContainsFunc(known, func(k string) bool { return k == name || strings.HasPrefix(k, name+"-") }) {
					return usageError{fmt.Errorf("unknown scenario %q (see --list)", name)}
				}
			}
			o.SendFlags = strings.Fields(sendFlags)
			if !slices.Contains([]string{"pgbench", "mixed", "tables"}, o.Export.Data) {
				return usageError{fmt.Errorf("--export-data %q: want pgbench, mixed or tables", o.Export.Data)}
			}
			// --smoke makes the export tiny unless a flag says otherwise.
			if o.Smoke {
				for name, v := range map[string]*int{"export-scale": &o.Export.Scale, "export-tables": &o.Export.Tables} {
					if !cmd.Flags().Changed(name) {
						*v = 0
					}
				}
				if !cmd.Flags().Changed("export-settle") {
					o.Export.Settle = 0
				}
			}
			w, err := bench.RunAll(ctx, o, stdout, stderr)
			if w != nil {
				fmt.Fprintf(stderr, "pgporter-bench: wrote %s, %s, %s and %d charts\n", w.JSON, w.Benchfmt, w.Markdown, len(w.Charts))
			}
			if err != nil || doc == "" || w == nil {
				return err
			}
			// Only a run that finished replaces the tables in the doc.
			f, err := bench.ReadJSON(w.JSON)
			if err == nil {
				err = bench.UpdateDocSection(doc, docSection, w.JSON, f)
			}
			if err == nil {
				fmt.Fprintf(stderr, "pgporter-bench: regenerated section %s of %s\n", docSection, doc)
			}
			return err
		},
	}
	f := c.Flags()
	f.StringSliceVar(&o.Scenarios, "scenario", nil, "scenarios to run, by name, comma-separated or repeated; a name runs its variants too (wan: wan and wan-lossy) (default all; see --list)")
	f.StringSliceVar(&o.Tools, "tools", nil, `the only tools to run in each scenario, by the names of its table, comma-separated or repeated, e.g. --tools pgporter,"rsync -z" (default all; a scenario with none of them fails)`)
	f.IntVar(&o.Runs, "runs", 0, "repetitions of each tool, interleaved (default 5, or 1 with --smoke)")
	f.StringVar(&o.Out, "out", "bench/results", "directory for the results: DATE.json, DATE.txt (benchstat), DATE.md and charts")
	f.StringVar(&doc, "doc", "", "after a run that finishes (or with --report), replace the tables of section --doc-section of the Markdown `FILE` (e.g. docs/BENCHMARKS.md), between its lines <!-- pgporter-bench:NAME begin --> and <!-- pgporter-bench:NAME end -->")
	f.StringVar(&docSection, "doc-section", "", "the section of --doc to replace, by `NAME` (make bench: make-bench; make bench-full: make-bench-full)")
	f.BoolVar(&list, "list", false, "list the scenarios and exit")
	f.StringVar(&report, "report", "", "print the Markdown tables of a results file (DATE.json) and exit")
	f.BoolVar(&o.Smoke, "smoke", false, "a tiny version of each scenario, for CI: seconds, not minutes")
	f.StringVar(&o.Data, "data", "", "lan, resume: directory to send (e.g. a pg_dump -Fd dump); chunk-dump: to cut; default: generated")
	f.StringVar(&o.Pgporter, "pgporter", "", "lan, resume, wan, outage, delta, export, export-mixed, export-lan, multidb, backup, s3-backup, s3-exports, scale, walpush, mount, mount-dump, mount-remote: pgporter binary (default: build ./cmd/pgporter into OUT/.bin)")
	f.StringVar(&o.Base, "pgporter-base", "", `lan, export, export-mixed, export-lan: an earlier pgporter binary, run as "pgporter (base)" or "pgporter export (base)" beside the others`)
	f.StringVar(&o.Perf, "perf", "", "lan, export, export-mixed, export-lan: record perf record -g of pgporter's sender (lan) or export (the others) into `FILE`, in an extra run not counted, and log its report's top lines; FILE.NAME (FILE.lan, FILE.export) when several run (needs perf, package linux-perf)")
	f.StringVar(&sendFlags, "send-flags", "", `lan, resume: extra flags of pgporter send, e.g. "--compress fastest"`)
	f.StringVar(&o.Export.BWLimit, "export-bwlimit", "", `export, export-mixed: cap on both pipelines' transfer, e.g. "25M" (pgporter export --bwlimit, rsync --bwlimit); default none (export-lan: the link is the cap)`)
	f.StringVar(&o.Link.Rate, "rate", "1gbit", "lan, resume, export-lan: link rate each way (tc tbf)")
	f.StringVar(&o.Link.SenderCPUs, "sender-cpus", "0", "lan, resume, export-lan: CPUs of the sending side; mount-remote: of the repository mover (taskset -c)")
	f.StringVar(&o.Link.ReceiverCPUs, "receiver-cpus", "1", "lan, resume, export-lan: CPUs of the receiving side; mount-remote: of the mount and its reader (taskset -c)")
	f.StringVar(&o.Export.Data, "export-data", "pgbench", "export, export-lan: shape of the database shop: pgbench, mixed (md5 text, numeric, timestamptz, jsonb) or tables (thousands of small tables)")
	f.IntVar(&o.Export.Scale, "export-scale", 70, "export, export-lan: pgbench scale of shop, or mixed's size in the same unit (1 with --smoke; export-mixed is 20, or 1)")
	f.BoolVar(&o.Export.Vacuum, "export-vacuum", false, "export, export-mixed: VACUUM FREEZE the database shop before its backup (by default nothing vacuums it: its tuples have no hint bits)")
	f.IntVar(&o.Export.Tables, "export-tables", 5000, "export, export-lan: with --export-data tables, the number of tables (50 with --smoke)")
	f.IntVar(&o.Export.Rows, "export-rows", 20, "export, export-lan: with --export-data tables, rows per table")
	f.IntVar(&o.Export.Jobs, "jobs", 2, "export, export-mixed, export-lan, s3-exports, scale: pgporter export --jobs")
	f.IntVar(&o.Export.RefJobs, "ref-jobs", 1, "export, export-mixed, export-lan: the reference's pg_dump -j")
	f.StringVar(&o.Link.TCPCongestion, "tcp-cc", "", `wan, outage, delta: TCP congestion control of the end hosts, e.g. "reno" (default: the machine's; a namespace may only pick one of net.ipv4.tcp_allowed_congestion_control)`)
	f.IntVar(&o.WANScale, "wan-scale", 4, "wan, outage, delta: pgbench scale of the dump they share (plus scale×30,000 rows of md5 text, jsonb and words)")
	f.IntVar(&o.LossyBytes, "lossy-bytes", 0, "wan-lossy: bytes of its synthetic tree (default 2 MiB, 64 KiB with --smoke)")
	f.DurationVar(&o.OutageLength, "outage", 0, "outage: how long the path is down (default 20s, 1s with --smoke)")
	f.IntVar(&o.MultiDBs, "multidb-dbs", 0, "multidb: databases in the cluster, shop included, each shaped by --export-data (default 4, 2 with --smoke)")
	f.IntVar(&o.MultiDBScale, "multidb-scale", 0, "multidb: pgbench scale of each database, or mixed's size in the same unit (default 20, 1 with --smoke)")
	f.IntVar(&o.BackupScale, "backup-scale", 0, "backup and s3-backup: pgbench scale of the cluster, plus scale×30,000 rows of md5 text, jsonb and words (default 20, 1 with --smoke)")
	f.IntVar(&o.S3ExportsDBs, "s3-exports-dbs", 0, "s3-exports: databases in the cluster, and exports at once (default 4, 2 with --smoke)")
	f.IntVar(&o.S3ExportsScale, "s3-exports-scale", 0, "s3-exports: pgbench scale of each database (default 5, 1 with --smoke)")
	f.StringVar(&o.MemoryProfile, "memory-profile", "", "scale-1x, scale-10x: leave in `DIR`/SCENARIO/runN each pgporter export run's memory diagnostics: VmRSS and VmHWM every 0.2 s (rss.tsv), and smaps_rollup, a heap profile and MemStats at the highest VmRSS sampled, gctrace")
	f.IntVar(&o.ScaleBase, "scale-base", 0, "scale-1x, scale-10x: pgbench scale at 1x, plus scale×30,000 rows of md5 text, jsonb and words (default 10, 1 with --smoke)")
	f.IntVar(&o.MountScale, "mount-scale", 0, "mount, mount-dump, mount-remote: pgbench scale of the cluster, plus scale×30,000 rows of md5 text, jsonb and words (default 20, 1 with --smoke)")
	f.DurationVar(&o.Export.Settle, "export-settle", 30*time.Second, "export, export-mixed, export-lan, s3-exports: quiet before every run, then sync and drop caches (ext4 skips inodes deleted in the last 30 s; 0 with --smoke)")
	c.SetArgs(args)
	c.SetOut(stdout)
	c.SetErr(stderr)
	c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	err := c.ExecuteContext(ctx)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "pgporter-bench: cancelled")
		return 130
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "pgporter-bench: %v\n%s", err, c.UsageString())
		return 2
	}
	fmt.Fprintf(stderr, "pgporter-bench: %v\n", err)
	return 1
}

type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }
