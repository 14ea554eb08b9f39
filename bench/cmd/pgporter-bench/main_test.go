package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgporter/pgporter/bench"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

func TestList(t *testing.T) {
	var out, errb bytes.Buffer
	require.Equal(t, 0, run(context.Background(), []string{"--list"}, &out, &errb), errb.String())
	require.Regexp(t, `(?m)^chunk +chunk engine`, out.String())
	require.Regexp(t, `(?m)^lan +cold transfer`, out.String())
	require.Regexp(t, `(?m)^export +export one database`, out.String())
	for _, name := range []string{"wan", "wan-lossy", "outage", "delta"} {
		require.Regexp(t, `(?m)^`+name+` +\S`, out.String())
	}
}

func TestUsage(t *testing.T) {
	var out, errb bytes.Buffer
	require.Equal(t, 2, run(context.Background(), []string{"--no-such-flag"}, &out, &errb))
	require.Contains(t, errb.String(), "unknown flag")
	errb.Reset()
	require.Equal(t, 2, run(context.Background(), []string{"--scenario", "nope", "--out", t.TempDir()}, &out, &errb))
	require.Contains(t, errb.String(), `unknown scenario "nope"`)
	errb.Reset()
	require.Equal(t, 2, run(context.Background(), []string{"--scenario", "export", "--export-data", "wide", "--out", t.TempDir()}, &out, &errb))
	require.Contains(t, errb.String(), `--export-data "wide": want pgbench, mixed or tables`)
}

func TestPerfFlag(t *testing.T) {
	var out, errb bytes.Buffer
	require.Equal(t, 0, run(context.Background(), []string{"--help"}, &out, &errb), errb.String())
	require.Contains(t, out.String(), "--perf FILE")
	errb.Reset()
	// Checked before anything is built or run: no scenario but lan and
	// export profiles pgporter.
	outDir := t.TempDir()
	require.Equal(t, 1, run(context.Background(), []string{"--scenario", "chunk,multidb", "--perf", "/tmp/p.data", "--out", outDir}, &out, &errb))
	require.Contains(t, errb.String(), "--perf profiles pgporter in the lan, export, export-mixed and export-lan scenarios; none of them is chosen")
	require.NoDirExists(t, filepath.Join(outDir, ".bin"))
	require.Equal(t, 2, run(context.Background(), []string{"--perf"}, &out, &errb), "--perf takes a file")
}

// smoke runs the harness with --smoke, --out out and args within timeout,
// checks that it succeeded and wrote one results file, and returns that
// file read back, its path, and what the run printed on stdout.
func smoke(t *testing.T, out string, timeout time.Duration, args ...string) (f *bench.File, path, stdout string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var so, se bytes.Buffer
	start := time.Now()
	code := run(ctx, append([]string{"--smoke", "--out", out}, args...), &so, &se)
	require.Equal(t, 0, code, se.String())
	t.Logf("%v took %s", args, time.Since(start))
	files, err := filepath.Glob(filepath.Join(out, "*.json"))
	require.NoError(t, err)
	require.Len(t, files, 1)
	f, err = bench.ReadJSON(files[0])
	require.NoError(t, err)
	return f, files[0], so.String()
}

// TestSmokeChunk runs the in-process scenario alone: it needs nothing, so
// it runs (and guards the output path) wherever the LAN smoke is skipped.
//
// It also regenerates a section of a Markdown file (--doc), as make bench
// does with docs/BENCHMARKS.md.
func TestSmokeChunk(t *testing.T) {
	out := t.TempDir()
	doc := filepath.Join(t.TempDir(), "BENCH.md")
	before := "# Benchmarks\n\nAnalysis above.\n\n<!-- pgporter-bench:smoke begin -->\nold tables\n<!-- pgporter-bench:smoke end -->\n\nAnalysis below.\n"
	require.NoError(t, os.WriteFile(doc, []byte(before), 0o644))
	f, path, stdout := smoke(t, out, time.Minute, "--scenario", "chunk", "--doc", doc, "--doc-section", "smoke")
	require.Len(t, f.Results, 1)
	require.Equal(t, "chunk", f.Results[0].Scenario)
	require.Len(t, f.Results[0].Runs, len(bench.ChunkLevels)+2, "cdc, cdc+blake3 and each level, once")
	require.Contains(t, stdout, "| fastest |")
	require.NoDirExists(t, filepath.Join(out, ".bin"), "no pgporter built for the chunk scenario")

	got, err := os.ReadFile(doc)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(got), "# Benchmarks\n\nAnalysis above.\n\n<!-- pgporter-bench:smoke begin -->\n"), string(got))
	require.True(t, strings.HasSuffix(string(got), "<!-- pgporter-bench:smoke end -->\n\nAnalysis below.\n"), string(got))
	require.NotContains(t, string(got), "old tables")
	require.Contains(t, string(got), "| fastest |")
	relJSON, err := filepath.Rel(filepath.Dir(doc), path)
	require.NoError(t, err)
	require.Contains(t, string(got), "from ["+filepath.Base(path)+"]("+relJSON+")")
	rel, err := filepath.Rel(filepath.Dir(doc), strings.TrimSuffix(path, ".json")+"-chunk-wall.svg")
	require.NoError(t, err)
	require.Contains(t, string(got), "![chunk-wall]("+rel+")", "the chart, linked from the doc's directory")
}

// TestDocFlags: --doc is checked before anything runs.
func TestDocFlags(t *testing.T) {
	var out, errb bytes.Buffer
	outDir := t.TempDir()
	require.Equal(t, 2, run(context.Background(), []string{"--scenario", "chunk", "--doc", "x.md", "--out", outDir}, &out, &errb))
	require.Contains(t, errb.String(), "--doc and --doc-section go together")
	errb.Reset()
	doc := filepath.Join(t.TempDir(), "B.md")
	require.NoError(t, os.WriteFile(doc, []byte("no markers\n"), 0o644))
	require.Equal(t, 2, run(context.Background(), []string{"--scenario", "chunk", "--doc", doc, "--doc-section", "s", "--out", outDir}, &out, &errb))
	require.Contains(t, errb.String(), "has no section \"s\": add the lines <!-- pgporter-bench:s begin --> and <!-- pgporter-bench:s end -->")
	entries, err := os.ReadDir(outDir)
	require.NoError(t, err)
	require.Empty(t, entries, "nothing ran")
}

// TestSmokeChunkDump runs --smoke of chunk-dump (a few seconds): a
// pg_dump -Fd -Z0 of pgbench -s 1 from a throwaway cluster, cut file by
// file, with the chunk sizes in the notes. It needs PostgreSQL; when
// CI=true a missing one fails the test.
func TestSmokeChunkDump(t *testing.T) {
	testsupport.RequirePG(t)
	out := t.TempDir()
	f, _, stdout := smoke(t, out, time.Minute, "--scenario", "chunk-dump")
	require.Len(t, f.Results, 1, "chunk-dump alone: it does not choose chunk")
	r := f.Results[0]
	require.Equal(t, "chunk-dump", r.Scenario)
	require.Len(t, r.Runs, len(bench.ChunkLevels)+2)
	require.Contains(t, r.Notes["data"], "pg_dump -Fd -Z0 of pgbench -s 1")
	require.Regexp(t, `^min \d+ B, median \d+, p90 \d+, max \d+$`, r.Notes["chunk sizes"])
	for _, run := range r.Runs {
		if run.Tool != "cdc" && run.Tool != "cdc+blake3" {
			// pgbench's blank padding: every level compresses the dump.
			require.Greater(t, run.Extra["ratio"], 3.0, run.Tool)
		}
	}
	require.Contains(t, stdout, "| cdc+blake3 |")
	require.NoDirExists(t, filepath.Join(out, ".bin"), "no pgporter built for the chunk engine")
}

// TestSmoke runs --smoke of every scenario end to end, as CI does to keep
// the harness working: the chunk engine in process, the LAN transfer over
// network namespaces with every tool, and the export of a pgbench -s 1
// database out of a backup by pgporter export and by mount, postgres,
// pg_dump and rsync. The LAN part needs root, ip netns, tc, rsync, zstd, nc
// and GNU time, the export PostgreSQL and FUSE (scripts/setup); when
// CI=true a missing one fails the test instead of skipping it.
func TestSmoke(t *testing.T) {
	testsupport.RequireNetns(t)
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	for _, req := range []func() error{bench.RequireLinkTools, bench.RequireExportTools} {
		if err := req(); err != nil {
			testsupport.SkipOrFail(t, "smoke: "+err.Error())
		}
	}
	out := t.TempDir()
	// The WAN scenarios have a smoke test of their own (TestSmokeWAN).
	f, file, stdout := smoke(t, out, 2*time.Minute, "--scenario", "chunk,lan,export")
	require.True(t, f.Smoke)
	require.Len(t, f.Results, 3)
	stamp := strings.TrimSuffix(filepath.Base(file), ".json")
	for _, r := range f.Results {
		require.NotEmpty(t, r.Tools, r.Scenario)
		require.Len(t, r.Runs, len(r.Tools), "%s: one run of each tool", r.Scenario)
		require.FileExists(t, filepath.Join(out, fmt.Sprintf("%s-%s-wall.svg", stamp, r.Scenario)))
		require.FileExists(t, filepath.Join(out, fmt.Sprintf("%s-%s-cpu.svg", stamp, r.Scenario)))
	}
	for _, ext := range []string{".txt", ".md"} {
		require.FileExists(t, filepath.Join(out, stamp+ext))
	}
	require.Contains(t, stdout, "| pgporter |")
	md, err := os.ReadFile(filepath.Join(out, stamp+".md"))
	require.NoError(t, err)
	require.Equal(t, string(md), stdout, "the tables printed are the tables written")
	var report, stderr bytes.Buffer
	require.Equal(t, 0, run(context.Background(), []string{"--report", file}, &report, &stderr), stderr.String())
	require.Equal(t, string(md), report.String(), "--report regenerates the tables from the JSON")

	lan := f.Results[1]
	require.Equal(t, "lan", lan.Scenario)
	require.Equal(t, []string{"pgporter", "rsync -z", "rsync -z --fsync", "rsync", "tar|zstd|nc"}, lan.Tools)
	for _, r := range lan.Runs {
		require.Positive(t, r.Wall, r.Tool)
		require.Positive(t, r.CPUSender, r.Tool)
		require.Positive(t, r.RSSSender, r.Tool)
		require.Positive(t, r.WireBytes, r.Tool)
		// The smoke data compresses about 8x: tools that compress put far
		// less on the link than plain rsync, which puts it all.
		if r.Tool == "rsync" {
			require.Greater(t, r.WireBytes, lan.Bytes, "plain rsync sends every byte")
		} else {
			require.Less(t, r.WireBytes, lan.Bytes/2, "%s compresses", r.Tool)
		}
	}
	pp := lan.Runs[0]
	require.Equal(t, "pgporter", pp.Tool)
	require.Positive(t, pp.RSSReceiver, "mover serve's VmHWM")
	require.Positive(t, pp.Extra["reported_wire_MB"], "send --json's wire_bytes")

	exp := f.Results[2]
	require.Equal(t, "export", exp.Scenario)
	require.Equal(t, []string{"pgporter export", "pg_dump+rsync"}, exp.Tools)
	require.Greater(t, exp.Bytes, int64(15e6), "pgbench -s 1 is about 23 MB")
	for _, r := range exp.Runs {
		require.Positive(t, r.Wall, r.Tool)
		require.Positive(t, r.CPUSender, r.Tool)
		for _, k := range []string{"mount_s", "instance_s", "dump_s", "transfer_s", "cleanup_s"} {
			require.Positive(t, r.Extra[k], "%s: %s", r.Tool, k)
			require.Less(t, r.Extra[k], r.Wall.Seconds(), "%s: %s is part of the total", r.Tool, k)
		}
	}
	pe, ref := exp.Runs[0], exp.Runs[1]
	// The reference's parts run one after the other and are all of its
	// time; pgporter's dump and transfer overlap (the transfer streams the
	// dump's files while pg_dump writes them), so they are not summed.
	var parts float64
	for _, k := range []string{"mount_s", "instance_s", "dump_s", "transfer_s", "cleanup_s"} {
		parts += ref.Extra[k]
	}
	require.InDelta(t, ref.Wall.Seconds(), parts, 0.01, "the reference's parts add up to its total")
	require.Equal(t, "pgporter export", pe.Tool)
	require.Positive(t, pe.RSSSender, "GNU time's peak RSS of pgporter export")
	require.Positive(t, pe.Extra["check_s"])
	require.Positive(t, pe.Extra["wire_MB"])
	// pgporter dumps with -Z0, the reference with pg_dump's gzip, and
	// pgbench's blank padding compresses about 30x.
	require.Greater(t, pe.Extra["dump_MB"], 5*ref.Extra["dump_MB"])
	require.Less(t, pe.Extra["wire_MB"], pe.Extra["dump_MB"]/5, "pgporter compresses on the wire")
	_, ok := exp.SpeedUpRatio()
	require.True(t, ok)
	require.Contains(t, stdout, "speed-up of pgporter export over pg_dump+rsync: ")
	mounts, err := os.ReadFile("/proc/self/mounts")
	require.NoError(t, err)
	require.NotContains(t, string(mounts), "pgporter-bench-export-", "every mount ended")

	// Nothing the harness started is left: namespaces and daemons.
	ns, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	require.NotContains(t, string(ns), fmt.Sprintf("pgp-bench17-%d-", os.Getpid()))
	ps, err := exec.Command("pgrep", "-P", fmt.Sprint(os.Getpid())).Output()
	require.Empty(t, strings.TrimSpace(string(ps)), "children of the test still running")
	_ = err // pgrep exits 1 when it finds none
}

// TestSmokeExportVariants runs the export scenario's other shape and
// options: the tables data, a transfer cap on both pipelines and a base
// binary beside pgporter's (--export-data tables, --export-bwlimit,
// --pgporter-base), so that they keep working. It needs root, PostgreSQL, FUSE, rsync and
// GNU time; when CI=true a missing one fails the test.
func TestSmokeExportVariants(t *testing.T) {
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	if err := bench.RequireExportTools(); err != nil {
		testsupport.SkipOrFail(t, "export smoke: "+err.Error())
	}
	out := t.TempDir()
	// The harness builds OUT/.bin/pgporter before any scenario prepares:
	// the same binary as the base is enough to check that the base runs.
	base := filepath.Join(out, ".bin", "pgporter")
	f, _, stdout := smoke(t, out, 2*time.Minute, "--scenario", "export", "--export-data", "tables", "--export-tables", "30",
		"--export-bwlimit", "50M", "--pgporter-base", base)
	require.Len(t, f.Results, 1)
	exp := f.Results[0]
	require.Equal(t, []string{"pgporter export", "pgporter export (base)", "pg_dump+rsync"}, exp.Tools)
	require.Equal(t, "tables (30 tables of 20 rows)", exp.Notes["data"])
	require.Contains(t, exp.Notes["link"], "50M/s")
	require.Len(t, exp.Runs, 3)
	for _, r := range exp.Runs {
		require.Positive(t, r.Wall, r.Tool)
		require.Positive(t, r.Extra["dump_MB"], r.Tool)
	}
	require.Contains(t, stdout, "| pgporter export (base) |")
}

// TestSmokeExportLAN runs --smoke of export-lan (about 20 s): the export
// of a pgbench -s 1 database out of a backup over the 1 Gbit/s veth link,
// by pgporter export to a mover serve in the receiving namespace and by
// mount, postgres, pg_dump and rsync (plain and -z) to the rsync daemon
// there. It needs what TestSmoke's lan and export parts need; when CI=true
// a missing one fails the test.
func TestSmokeExportLAN(t *testing.T) {
	testsupport.RequireNetns(t)
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	for _, req := range []func() error{bench.RequireLinkTools, bench.RequireExportTools} {
		if err := req(); err != nil {
			testsupport.SkipOrFail(t, "export-lan smoke: "+err.Error())
		}
	}
	out := t.TempDir()
	f, _, stdout := smoke(t, out, time.Minute, "--scenario", "export-lan")
	require.Len(t, f.Results, 1)
	exp := f.Results[0]
	t.Logf("%+v", exp.Runs)
	require.Equal(t, "export-lan", exp.Scenario)
	require.Equal(t, []string{"pgporter export", "pg_dump+rsync", "pg_dump+rsync -z"}, exp.Tools)
	require.Equal(t, []string{"sender", "receiver"}, exp.Sides)
	require.Contains(t, exp.Notes["link"], "1gbit (tc tbf)")
	for _, r := range exp.Runs {
		require.Positive(t, r.Wall, r.Tool)
		require.Positive(t, r.CPUSender, r.Tool)
		require.Positive(t, r.RSSSender, r.Tool)
		require.Positive(t, r.Extra["dump_MB"], r.Tool)
		for _, k := range []string{"mount_s", "instance_s", "dump_s", "transfer_s", "cleanup_s"} {
			require.Positive(t, r.Extra[k], "%s: %s", r.Tool, k)
		}
		// Every pipeline's bytes cross the link.
		require.Positive(t, r.WireBytes, r.Tool)
		if r.Tool == "pg_dump+rsync" {
			require.Greater(t, float64(r.WireBytes), r.Extra["dump_MB"]*1e6, "plain rsync sends every byte of the dump")
		}
	}
	pe := exp.Runs[0]
	require.Equal(t, "pgporter export", pe.Tool)
	require.Positive(t, pe.RSSReceiver, "mover serve's VmHWM")
	// The rsync daemon's worker takes under a clock tick to write the
	// 100 kB of gzip at smoke size: its CPU may read 0.
	require.Positive(t, pe.CPUReceiver, "mover serve's CPU")
	require.InEpsilon(t, pe.Extra["wire_MB"]*1e6, float64(pe.WireBytes), 0.5, "the link carried what pgporter counted, give or take headers and acks")
	require.Contains(t, stdout, "speed-up of pgporter export over pg_dump+rsync: ")

	mounts, err := os.ReadFile("/proc/self/mounts")
	require.NoError(t, err)
	require.NotContains(t, string(mounts), "pgporter-bench-export-lan-", "every mount ended")
	ns, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	require.NotContains(t, string(ns), fmt.Sprintf("pgp-bench17-%d-", os.Getpid()))
	ps, err := exec.Command("pgrep", "-P", fmt.Sprint(os.Getpid())).Output()
	require.Empty(t, strings.TrimSpace(string(ps)), "children of the test still running")
	_ = err // pgrep exits 1 when it finds none
}

// TestSmokeResume runs --smoke of resume (about 10 s): on the LAN
// scenario's link, pgporter send and rsync -z --partial each killed by PID
// at half of the smoke data on the receiver and run again, beside their
// cold runs. It needs what the LAN part of TestSmoke needs; when CI=true a
// missing one fails the test.
func TestSmokeResume(t *testing.T) {
	testsupport.RequireNetns(t)
	if err := bench.RequireLinkTools(); err != nil {
		testsupport.SkipOrFail(t, "resume smoke: "+err.Error())
	}
	f, _, stdout := smoke(t, t.TempDir(), time.Minute, "--scenario", "resume")
	require.Len(t, f.Results, 1)
	r := f.Results[0]
	require.Equal(t, "resume", r.Scenario)
	require.Equal(t, []string{"pgporter send (cold)", "pgporter send (resumed)", "rsync -z (cold)", "rsync -z --partial (resumed)"}, r.Tools)
	for _, run := range r.Runs {
		require.Positive(t, run.Wall, run.Tool)
		require.Positive(t, run.WireBytes, run.Tool)
		require.InDelta(t, float64(run.WireBytes)/1e6, run.Extra["wire_MB"], 1e-9, run.Tool)
		if strings.HasSuffix(run.Tool, "(resumed)") {
			// The kill came at half of the data or after, never at its end.
			require.GreaterOrEqual(t, run.Extra["killed_at_pct"], 50.0, run.Tool)
			require.Less(t, run.Extra["killed_at_pct"], 100.0, run.Tool)
			// The second run sent less than a cold one.
			require.Less(t, run.Extra["wire_pct"], 100.0, run.Tool)
		}
	}
	require.Positive(t, r.Runs[1].Extra["chunks_pct"])
	require.Less(t, r.Runs[1].Extra["chunks_pct"], 100.0, "the second send skipped what the first made durable")
	_, ok := r.RatioValue()
	require.True(t, ok)
	require.Contains(t, stdout, "wire_MB of pgporter send (resumed) over pgporter send (cold): ")
	require.Contains(t, stdout, "target at most 0.55x")

	ns, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	require.NotContains(t, string(ns), fmt.Sprintf("pgp-bench17-%d-", os.Getpid()))
	ps, _ := exec.Command("pgrep", "-P", fmt.Sprint(os.Getpid())).Output() // exits 1 when it finds none
	require.Empty(t, strings.TrimSpace(string(ps)), "children of the test still running")
}

// TestSmokeMount runs --smoke of mount, mount-dump and mount-remote (about
// 30 s): reads of a pgbench -s 1 cluster's data directory from the local
// disk and through fresh mounts of its backup, cold and warm, pg_dump of
// it from postgres on each, and cold reads through mounts of the
// repository and of a repository mover serving it. It needs root, PostgreSQL, FUSE, tar and GNU time; when
// CI=true a missing one fails the test.
func TestSmokeMount(t *testing.T) {
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	if err := bench.RequireMountTools(); err != nil {
		testsupport.SkipOrFail(t, "mount smoke: "+err.Error())
	}
	f, _, stdout := smoke(t, t.TempDir(), 2*time.Minute, "--scenario", "mount")
	require.Len(t, f.Results, 3, "mount chooses mount-dump and mount-remote too")

	read := f.Results[0]
	require.Equal(t, "mount", read.Scenario)
	require.Equal(t, []string{"local read (cold)", "local read (warm)", "mount read (cold)", "mount read (warm)"}, read.Tools)
	readMB := map[string]float64{}
	for _, r := range read.Runs {
		require.Positive(t, r.Wall, r.Tool)
		require.Positive(t, r.Extra["MB_s"], r.Tool)
		require.GreaterOrEqual(t, r.Extra["read_MB"]*1e6, float64(read.Bytes), "%s: every byte of the data directory read", r.Tool)
		readMB[r.Tool] = r.Extra["read_MB"]
		_, mountCPU := r.Extra["mount_CPU_s"]
		require.Equal(t, strings.HasPrefix(r.Tool, "mount"), mountCPU, r.Tool)
	}
	require.Equal(t, readMB["local read (cold)"], readMB["mount read (cold)"], "the mount shows the data directory's files, no more, no fewer")
	_, ok := read.RatioValue()
	require.True(t, ok)
	require.Contains(t, stdout, "MB_s of mount read (cold) over local read (cold): ")

	dump := f.Results[1]
	require.Equal(t, "mount-dump", dump.Scenario)
	require.Equal(t, []string{"pg_dump local", "pg_dump from mount"}, dump.Tools)
	dumpMB := map[string]float64{}
	for _, r := range dump.Runs {
		require.Positive(t, r.Wall, r.Tool)
		require.Positive(t, r.CPUSender, r.Tool)
		require.Positive(t, r.Extra["instance_s"], r.Tool)
		_, cow := r.Extra["cow_MB"]
		require.Equal(t, r.Tool == "pg_dump from mount", cow, "the copy-on-write layer is measured: %s", r.Tool)
		dumpMB[r.Tool] = r.Extra["dump_MB"]
	}
	require.Positive(t, dumpMB["pg_dump local"])
	require.InEpsilon(t, dumpMB["pg_dump local"], dumpMB["pg_dump from mount"], 0.01, "the same database dumped")
	_, ok = dump.RatioValue()
	require.True(t, ok)

	remote := f.Results[2]
	require.Equal(t, "mount-remote", remote.Scenario)
	require.Equal(t, []string{"mount --repo (cold)", "mount --repo-peer (cold)"}, remote.Tools)
	remoteMB := map[string]float64{}
	for _, r := range remote.Runs {
		require.Positive(t, r.Extra["MB_s"], r.Tool)
		require.Positive(t, r.Extra["mount_CPU_s"], r.Tool)
		_, repoCPU := r.Extra["repo_CPU_s"]
		require.Equal(t, r.Tool == "mount --repo-peer (cold)", repoCPU, "the repository mover's CPU is measured: %s", r.Tool)
		if repoCPU {
			require.Positive(t, r.CPUReceiver, "the repository mover served the read")
		}
		remoteMB[r.Tool] = r.Extra["read_MB"]
	}
	require.Equal(t, readMB["local read (cold)"], remoteMB["mount --repo (cold)"])
	require.Equal(t, readMB["local read (cold)"], remoteMB["mount --repo-peer (cold)"], "the remote mount shows the same files")
	_, ok = remote.RatioValue()
	require.True(t, ok)
	require.Contains(t, stdout, "MB_s of mount --repo-peer (cold) over mount --repo (cold): ")

	mounts, err := os.ReadFile("/proc/self/mounts")
	require.NoError(t, err)
	require.NotContains(t, string(mounts), "pgporter-bench-mount", "every mount ended")
	ps, _ := exec.Command("pgrep", "-P", fmt.Sprint(os.Getpid())).Output() // exits 1 when it finds none
	require.Empty(t, strings.TrimSpace(string(ps)), "children of the test still running")
}

// TestSmokeWAN runs --smoke of the outage and delta scenarios end to end, as
// CI does: the emulated WAN path (router namespace, TUN, tc tbf), every
// tool's cold run (the outage's calibration), a 1 s outage at half of each
// tool's bytes with the reruns, and a delta send to a target holding the
// previous tree. wan and wan-lossy run the same tools on the same path
// without the outage, so they are left out to keep CI short (about 25 s).
// It needs root, ip netns, tc, /dev/net/tun, rsync, zstd, nc and GNU time;
// when CI=true a missing one fails the test instead of skipping it.
func TestSmokeWAN(t *testing.T) {
	testsupport.RequireNetns(t)
	if err := bench.RequireLinkTools(); err != nil {
		testsupport.SkipOrFail(t, "WAN smoke: "+err.Error())
	}
	out := t.TempDir()
	f, file, stdout := smoke(t, out, 2*time.Minute, "--scenario", "outage,delta")
	require.Len(t, f.Results, 2)

	outage := f.Results[0]
	require.Equal(t, "outage", outage.Scenario)
	require.Equal(t, []string{"pgporter", "rsync -z --partial", "rsync --partial", "tar|zstd|nc"}, outage.Tools)
	require.Contains(t, outage.Notes["link"], "40ms RTT, 0.5% loss each way")
	require.Len(t, outage.Runs, 4)
	for _, r := range outage.Runs {
		require.GreaterOrEqual(t, r.Wall, time.Second, "%s: the 1 s outage is in the time", r.Tool)
		require.Positive(t, r.WireBytes, r.Tool)
		require.Positive(t, r.CPUSender, r.Tool)
		require.GreaterOrEqual(t, r.Extra["attempts"], 1.0, r.Tool)
		// Half of the calibration run's bytes, give or take what loss and
		// compression change from one run to the next.
		require.InDelta(t, 50, r.Extra["outage_at_pct"], 30, r.Tool)
	}
	require.Contains(t, stdout, "speed-up of pgporter over rsync -z --partial: ")

	delta := f.Results[1]
	require.Equal(t, "delta", delta.Scenario)
	require.Equal(t, []string{"pgporter", "rsync -z", "rsync"}, delta.Tools)
	for _, r := range delta.Runs {
		require.Positive(t, r.Wall, r.Tool)
		// 100 rows of a 1 MiB tree moved: every tool sends a small part of it.
		require.Less(t, r.Extra["wire_pct"], 25.0, r.Tool)
	}
	require.Positive(t, delta.Runs[0].Extra["reported_wire_MB"])
	// Every tool of both scenarios puts its bytes on the path: both have a
	// wire chart.
	stamp := strings.TrimSuffix(filepath.Base(file), ".json")
	for _, sc := range []string{"outage", "delta"} {
		require.FileExists(t, filepath.Join(out, fmt.Sprintf("%s-%s-wire.svg", stamp, sc)))
	}

	ns, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	require.NotContains(t, string(ns), fmt.Sprintf("pgp-bench17-%d-", os.Getpid()))
	ps, _ := exec.Command("pgrep", "-P", fmt.Sprint(os.Getpid())).Output() // exits 1 when it finds none
	require.Empty(t, strings.TrimSpace(string(ps)), "children of the test still running")
}

// TestSmokePgBackRest runs --smoke of the scenarios against pgBackRest and
// of scale at 1x, as CI does (about 30 s; scale-10x stays out of CI): the
// export of one database of a two-database cluster by pgporter export and
// by pgbackrest restore --db-include, postgres, pg_dump and rsync; backups
// before and after changes by pgporter and pgbackrest full and incr; and
// pgporter send, backup and export of a data directory. It needs root, PostgreSQL,
// FUSE, pgbackrest, ip netns, tc, rsync and GNU time; when CI=true a
// missing one fails the test instead of skipping it.
func TestSmokePgBackRest(t *testing.T) {
	testsupport.RequireNetns(t)
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	for _, req := range []func() error{bench.RequireLinkTools, bench.RequireExportTools, bench.RequirePgBackRest} {
		if err := req(); err != nil {
			testsupport.SkipOrFail(t, "pgBackRest smoke: "+err.Error())
		}
	}
	f, _, _ := smoke(t, t.TempDir(), 2*time.Minute, "--scenario", "multidb,backup,scale-1x")
	require.Len(t, f.Results, 3)

	multi := f.Results[0]
	require.Equal(t, "multidb", multi.Scenario)
	require.Equal(t, []string{"pgporter export", "pgbackrest restore+pg_dump+rsync"}, multi.Tools)
	require.Contains(t, multi.Notes["data"], "shop and 1 other databases")
	for _, r := range multi.Runs {
		require.Positive(t, r.Wall, r.Tool)
		require.Positive(t, r.CPUSender, r.Tool)
		require.Positive(t, r.Extra["dump_MB"], r.Tool)
	}
	ref := multi.Runs[1]
	var parts float64
	for _, k := range []string{"restore_s", "instance_s", "dump_s", "transfer_s", "cleanup_s"} {
		require.Positive(t, ref.Extra[k], k)
		parts += ref.Extra[k]
	}
	require.InDelta(t, ref.Wall.Seconds(), parts, 0.01, "the reference's parts add up to its total")

	backup := f.Results[1]
	require.Equal(t, "backup", backup.Scenario)
	require.Equal(t, []string{"pgporter backup", "pgporter backup (after changes)", "pgbackrest full", "pgbackrest incr"}, backup.Tools)
	growth := map[string]float64{}
	for _, r := range backup.Runs {
		require.Positive(t, r.Wall, r.Tool)
		require.Positive(t, r.CPUSender, r.Tool)
		require.Positive(t, r.RSSSender, r.Tool)
		require.Positive(t, r.Extra["growth_MB"], r.Tool)
		require.GreaterOrEqual(t, r.Extra["repo_MB"], r.Extra["growth_MB"], r.Tool)
		growth[r.Tool] = r.Extra["growth_MB"]
	}
	// The second backup of each tool stores what changed, far less than
	// the first: a tool that stored it all again would show here.
	require.Less(t, growth["pgporter backup (after changes)"], growth["pgporter backup"]/2)
	require.Less(t, growth["pgbackrest incr"], growth["pgbackrest full"]/2)
	_, ok := backup.SpeedUpRatio()
	require.True(t, ok)

	scale := f.Results[2]
	require.Equal(t, "scale-1x", scale.Scenario)
	require.Equal(t, []string{"pgporter send", "pgporter backup", "pgbackrest full", "pgporter export"}, scale.Tools)
	for _, r := range scale.Runs {
		require.Positive(t, r.Wall, r.Tool)
		require.Positive(t, r.RSSSender, r.Tool)
	}
	require.Positive(t, scale.Runs[3].Extra["dump_MB"], "the export of bench")
	require.Positive(t, scale.Runs[0].RSSReceiver, "mover serve's VmHWM")
	require.Positive(t, scale.Runs[0].WireBytes)

	ns, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	require.NotContains(t, string(ns), fmt.Sprintf("pgp-bench17-%d-", os.Getpid()))
	ps, _ := exec.Command("pgrep", "-P", fmt.Sprint(os.Getpid())).Output() // exits 1 when it finds none
	require.Empty(t, strings.TrimSpace(string(ps)), "children of the test still running")
}

// TestSmokeS3Backup runs --smoke of s3-backup (about 35 s): the backup
// scenario's tools into directories and into buckets of the S3 test server,
// which the scenario starts through scripts/s3-server and must stop. It
// needs what TestSmokePgBackRest needs, less FUSE and netns, and the weed
// binary (make s3-server).
func TestSmokeS3Backup(t *testing.T) {
	testsupport.RequirePG(t)
	for _, req := range []func() error{bench.RequirePgBackRest, bench.RequireS3Server} {
		if err := req(); err != nil {
			testsupport.SkipOrFail(t, "S3 backup smoke: "+err.Error())
		}
	}
	out := t.TempDir()
	f, _, _ := smoke(t, out, 3*time.Minute, "--scenario", "s3-backup")
	require.Len(t, f.Results, 1)
	r := f.Results[0]
	require.Equal(t, "s3-backup", r.Scenario)
	require.Equal(t, []string{
		"pgporter backup", "pgporter backup (after changes)", "pgporter backup to S3", "pgporter backup to S3 (after changes)",
		"pgbackrest full", "pgbackrest incr", "pgbackrest full to S3", "pgbackrest incr to S3",
		"pgporter backup to S3, encrypted", "pgporter backup to S3, encrypted (after changes)",
		"pgbackrest full to S3, encrypted", "pgbackrest incr to S3, encrypted",
	}, r.Tools)
	repo := map[string]float64{}
	for _, run := range r.Runs {
		require.Positive(t, run.Wall, run.Tool)
		require.Positive(t, run.CPUSender, run.Tool)
		require.Positive(t, run.Extra["growth_MB"], run.Tool)
		repo[run.Tool] = run.Extra["repo_MB"]
		_, server := run.Extra["server_CPU_s"]
		_, cache := run.Extra["cache_MB"]
		onS3 := strings.Contains(run.Tool, "to S3")
		require.Equal(t, onS3, server, "the server's CPU is measured for the S3 runs: %s", run.Tool)
		require.Equal(t, onS3 && strings.HasPrefix(run.Tool, "pgporter"), cache, "pgporter's cache is measured on S3: %s", run.Tool)
		_, open := run.Extra["open_s"]
		require.Equal(t, onS3 && strings.HasPrefix(run.Tool, "pgporter"), open, "opening pgporter's S3 repository is timed: %s", run.Tool)
	}
	// The same backups stored in a bucket take what they take in a
	// directory: a listing that missed objects, or counted another
	// repository's, would show here. Sealed, they take a little more
	// (nonces, tags, padding, the key files), not another size.
	for _, pair := range [][2]string{
		{"pgporter backup (after changes)", "pgporter backup to S3 (after changes)"},
		{"pgbackrest incr", "pgbackrest incr to S3"},
		{"pgporter backup to S3 (after changes)", "pgporter backup to S3, encrypted (after changes)"},
		{"pgbackrest incr to S3", "pgbackrest incr to S3, encrypted"},
	} {
		require.InEpsilon(t, repo[pair[0]], repo[pair[1]], 0.1, pair[1])
	}
	_, ok := r.SpeedUpRatio()
	require.True(t, ok)
	ps, _ := exec.Command("pgrep", "-f", "weed.*pgporter-bench-s3-backup").Output() // exits 1 when it finds none
	require.Empty(t, strings.TrimSpace(string(ps)), "the S3 server still running")
}

// TestSmokeS3Exports runs --smoke of s3-exports (about 25 s): a backup of
// two databases into a bucket of the S3 test server, one export alone and
// two at once, each checked, and the server stopped. It needs root,
// PostgreSQL, FUSE, rsync, GNU time and the weed binary (make s3-server).
func TestSmokeS3Exports(t *testing.T) {
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	for _, req := range []func() error{bench.RequireExportTools, bench.RequireS3Server} {
		if err := req(); err != nil {
			testsupport.SkipOrFail(t, "S3 exports smoke: "+err.Error())
		}
	}
	out := t.TempDir()
	f, _, stdout := smoke(t, out, 3*time.Minute, "--scenario", "s3-exports")
	require.Len(t, f.Results, 1)
	r := f.Results[0]
	require.Equal(t, "s3-exports", r.Scenario)
	require.Equal(t, []string{"1 export alone", "2 exports at once"}, r.Tools)
	require.Len(t, r.Runs, 2)
	dump := map[string]float64{}
	for _, run := range r.Runs {
		require.Positive(t, run.Wall, run.Tool)
		for _, k := range []string{"dump_MB", "throughput_MB_s", "CPU_s_per_export", "server_CPU_s_per_export", "cores_busy"} {
			require.Positive(t, run.Extra[k], "%s: %s", run.Tool, k)
		}
		dump[run.Tool] = run.Extra["dump_MB"]
	}
	require.InEpsilon(t, 2*dump["1 export alone"], dump["2 exports at once"], 0.05, "two databases of the same size: twice the bytes")
	_, ok := r.RatioValue()
	require.True(t, ok)
	require.Contains(t, stdout, "throughput_MB_s of 2 exports at once over 1 export alone: ")
	ps, _ := exec.Command("pgrep", "-f", "weed.*pgporter-bench-s3-exports").Output() // exits 1 when it finds none
	require.Empty(t, strings.TrimSpace(string(ps)), "the S3 server still running")
	mounts, err := os.ReadFile("/proc/self/mounts")
	require.NoError(t, err)
	require.NotContains(t, string(mounts), "pgporter-bench-s3-exports-", "every mount ended")
}
