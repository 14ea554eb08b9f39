package bench

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/perf/benchfmt"
)

// sampleFile is a two-scenario results file with every kind of figure.
func sampleFile() *File {
	return &File{
		Started: time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC), Commit: "abc123", Cores: 2, GoVersion: "go1.26",
		LoadBefore: [3]float64{0.5, 0.4, 0.3}, LoadAfter: [3]float64{1.5, 0.6, 0.3},
		Results: []Result{{
			Scenario: "lan", Description: "a link", Bytes: 2e9,
			LoadBefore: [3]float64{0.5, 0.4, 0.3}, LoadAfter: [3]float64{1.5, 0.6, 0.3}, Sides: []string{"sender", "receiver"},
			Notes: map[string]string{"link": "1gbit"}, Reps: 2, Tools: []string{"pgporter", "tar|zstd|nc"},
			SpeedUp: &SpeedUp{Of: "pgporter", Over: "tar|zstd|nc"},
			Runs: []Sample{
				{Tool: "pgporter", Rep: 0, Measure: Measure{Wall: 10 * time.Second, CPUSender: 4, CPUReceiver: 2, WireBytes: 3e8, RSSSender: 100e6, RSSReceiver: 50e6, Extra: map[string]float64{"reported_wire_MB": 290}}},
				{Tool: "tar|zstd|nc", Rep: 0, Measure: Measure{Wall: 20 * time.Second, CPUSender: 6, CPUReceiver: 3, WireBytes: 4e8, RSSSender: 10e6}},
				{Tool: "tar|zstd|nc", Rep: 1, Measure: Measure{Wall: 22 * time.Second, CPUSender: 6, CPUReceiver: 3, WireBytes: 4e8, RSSSender: 10e6}},
				{Tool: "pgporter", Rep: 1, Measure: Measure{Wall: 12 * time.Second, CPUSender: 4, CPUReceiver: 2, WireBytes: 3e8, RSSSender: 100e6, RSSReceiver: 50e6, Extra: map[string]float64{"reported_wire_MB": 290}}},
			},
		}, {
			Scenario: "chunk", Bytes: 1e8, Sides: []string{"process"}, Reps: 1, Tools: []string{"cdc", "s2"},
			Runs: []Sample{
				{Tool: "cdc", Measure: Measure{Wall: 50 * time.Millisecond, CPUSender: 0.05}},
				{Tool: "s2", Measure: Measure{Wall: 100 * time.Millisecond, CPUSender: 0.1, Extra: map[string]float64{"ratio": 5}}},
			},
		}},
	}
}

func TestJSONRoundTrip(t *testing.T) {
	f := sampleFile()
	path := filepath.Join(t.TempDir(), "r.json")
	require.NoError(t, WriteJSON(path, f))
	got, err := ReadJSON(path)
	require.NoError(t, err)
	require.Equal(t, f, got)

	require.NoError(t, os.WriteFile(path, []byte("{"), 0o644))
	_, err = ReadJSON(path)
	require.ErrorContains(t, err, "decoding results")
}

func TestBenchfmtParses(t *testing.T) {
	var b bytes.Buffer
	require.NoError(t, WriteBenchfmt(&b, sampleFile()))
	r := benchfmt.NewReader(&b, "results.txt")
	type key struct{ name, unit string }
	vals := map[key][]float64{}
	var names []string
	var commit string
	for r.Scan() {
		res, ok := r.Result().(*benchfmt.Result)
		if !ok {
			t.Fatalf("not a result: %v", r.Result())
		}
		names = append(names, string(res.Name))
		if v := res.GetConfig("commit"); v != "" {
			commit = v
		}
		require.Equal(t, 1, res.Iters)
		for _, v := range res.Values {
			vals[key{string(res.Name), v.Unit}] = append(vals[key{string(res.Name), v.Unit}], v.Value)
		}
	}
	require.NoError(t, r.Err())
	require.Equal(t, "abc123", commit)
	require.Equal(t, []string{
		"Lan/tool=pgporter", "Lan/tool=tar|zstd|nc", "Lan/tool=tar|zstd|nc", "Lan/tool=pgporter",
		"Chunk/tool=cdc", "Chunk/tool=s2",
	}, names)
	// The reader turns ns/op into sec/op, as benchstat shows it.
	require.Equal(t, []float64{10, 12}, vals[key{"Lan/tool=pgporter", "sec/op"}])
	// And MB/s into B/s; the figures have six significant digits.
	mbps := vals[key{"Lan/tool=pgporter", "B/s"}]
	require.Len(t, mbps, 2)
	require.InDelta(t, 200e6, mbps[0], 1)
	require.InDelta(t, 2e9/12, mbps[1], 1e3)
	require.Equal(t, []float64{4e8, 4e8}, vals[key{"Lan/tool=tar|zstd|nc", "wire-B/op"}])
	require.Equal(t, []float64{2, 2}, vals[key{"Lan/tool=pgporter", "receiver-cpu-sec/op"}])
	require.Equal(t, []float64{290, 290}, vals[key{"Lan/tool=pgporter", "reported_wire_MB"}])
	require.Equal(t, []float64{5}, vals[key{"Chunk/tool=s2", "ratio"}])
	require.Equal(t, []float64{0.1}, vals[key{"Chunk/tool=s2", "process-cpu-sec/op"}], "units name the scenario's sides")
	require.Nil(t, vals[key{"Chunk/tool=cdc", "ratio"}], "no ratio measured, none written")
}

func TestBenchLabel(t *testing.T) {
	require.Equal(t, "rsync_-z_--fsync", benchLabel("rsync -z --fsync"))
	require.Equal(t, "a_b_c", benchLabel("a/b=c"))
	require.Equal(t, "BenchmarkLan", benchName("lan"))
}

func TestTables(t *testing.T) {
	var b strings.Builder
	require.NoError(t, WriteTables(&b, sampleFile()))
	out := b.String()
	lan, chunk, ok := strings.Cut(out, "**chunk**")
	require.True(t, ok, out)
	require.Contains(t, lan, "2000.0 MB of input, 2 runs of each tool interleaved, medians; link: 1gbit; 2 cores, load 0.50 before, 1.50 after; commit abc123")
	require.Contains(t, lan, "| tool | wall s | MB/s | sender CPU-s/GB | receiver CPU-s/GB | wire MB | sender peak RSS MB | receiver peak RSS MB | reported_wire_MB | time / pgporter's |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	require.Contains(t, lan, "| pgporter | 11.000 (10.000–12.000) | 182 | 2.00 | 1.00 | 300.0 | 100.0 | 50.0 | 290 | 1.00x |\n")
	require.Contains(t, lan, "| tar\\|zstd\\|nc | 21.000 (20.000–22.000) | 95 | 3.00 | 1.50 | 400.0 | 10.0 | – | – | 1.91x |\n")
	// One side, no wire or memory figures: those columns are left out.
	require.Contains(t, chunk, "| tool | wall s | MB/s | process CPU-s/GB | ratio | time / cdc's |\n")
	require.Contains(t, chunk, "| s2 | 0.100 (0.100–0.100) | 1000 | 1.00 | 5 | 2.00x |\n")
	require.Contains(t, chunk, "| cdc | 0.050 (0.050–0.050) | 2000 | 0.50 | – | 1.00x |\n")
}

func TestCharts(t *testing.T) {
	dir := t.TempDir()
	f := sampleFile()
	f.Results[1].Runs = []Sample{{Tool: "cdc", Measure: Measure{Wall: time.Second}}, {Tool: "s2", Measure: Measure{Wall: time.Second}}}
	files, err := WriteCharts(dir, "x", f)
	require.NoError(t, err)
	require.Equal(t, []string{
		filepath.Join(dir, "x-lan-wall.svg"), filepath.Join(dir, "x-lan-cpu.svg"), filepath.Join(dir, "x-lan-wire.svg"),
		filepath.Join(dir, "x-chunk-wall.svg"),
	}, files, "no CPU or wire chart when no run measured them")
	for _, p := range files {
		fh, err := os.Open(p)
		require.NoError(t, err)
		b, err := io.ReadAll(fh)
		fh.Close()
		require.NoError(t, err)
		require.Contains(t, string(b), "<svg")
	}
	lanWall, err := os.ReadFile(files[0])
	require.NoError(t, err)
	require.Contains(t, string(lanWall), "tar|zstd|nc")
	require.NoFileExists(t, filepath.Join(dir, "x-chunk-cpu.svg"))
	require.NoFileExists(t, filepath.Join(dir, "x-chunk-wire.svg"))
}

// TestWireChart: a scenario's wire-bytes chart has a bar for each tool that
// measured wire bytes and none for one that did not (pgporter export's
// figure is an Extra, not Measure.WireBytes); a scenario without any wire
// bytes gets no chart.
func TestWireChart(t *testing.T) {
	dir := t.TempDir()
	f := &File{Results: []Result{{
		Scenario: "wan", Bytes: 50e6, Reps: 2, Tools: []string{"pgporter", "rsync -z", "rsync", "in process"},
		Runs: []Sample{
			{Tool: "pgporter", Measure: Measure{Wall: 3 * time.Second, WireBytes: 12e6}},
			{Tool: "pgporter", Rep: 1, Measure: Measure{Wall: 3 * time.Second, WireBytes: 14e6}},
			{Tool: "rsync -z", Measure: Measure{Wall: 4 * time.Second, WireBytes: 9e6}},
			{Tool: "rsync -z", Rep: 1, Measure: Measure{Wall: 4 * time.Second, WireBytes: 9e6}},
			{Tool: "rsync", Measure: Measure{Wall: 9 * time.Second, WireBytes: 52e6}},
			{Tool: "rsync", Rep: 1, Measure: Measure{Wall: 9 * time.Second, WireBytes: 53e6}},
			{Tool: "in process", Measure: Measure{Wall: time.Second, Extra: map[string]float64{"wire_MB": 7}}},
		},
	}, {
		Scenario: "export", Bytes: 1e9, Reps: 1, Tools: []string{"pgporter export"},
		Runs: []Sample{{Tool: "pgporter export", Measure: Measure{Wall: time.Second, Extra: map[string]float64{"wire_MB": 35}}}},
	}}}
	files, err := WriteCharts(dir, "y", f)
	require.NoError(t, err)
	wire := filepath.Join(dir, "y-wan-wire.svg")
	require.Equal(t, []string{filepath.Join(dir, "y-wan-wall.svg"), wire, filepath.Join(dir, "y-export-wall.svg")}, files)
	require.FileExists(t, wire)
	require.NoFileExists(t, filepath.Join(dir, "y-export-wire.svg"))
	b, err := os.ReadFile(wire)
	require.NoError(t, err)
	svg := string(b)
	require.Contains(t, svg, "<svg")
	require.Contains(t, svg, "bytes on the wire")
	for _, tool := range []string{"pgporter", "rsync -z", "rsync"} {
		require.Contains(t, svg, ">"+tool+"<", "the chart names %s", tool)
	}
	require.NotContains(t, svg, "in process", "a tool without wire bytes has no bar")
}

// TestUpdateDocSection: only the text between the markers changes, a second
// update gives the same file, and a file without its markers, or with them
// twice or reversed, is refused and left as it was.
func TestUpdateDocSection(t *testing.T) {
	dir := t.TempDir()
	results := filepath.Join(dir, "results")
	require.NoError(t, os.Mkdir(results, 0o755))
	jsonPath := filepath.Join(results, "20261206-090000.json")
	f := sampleFile()
	require.NoError(t, WriteJSON(jsonPath, f))
	_, err := WriteCharts(results, "20261206-090000", f)
	require.NoError(t, err)

	docs := filepath.Join(dir, "docs")
	require.NoError(t, os.Mkdir(docs, 0o755))
	doc := filepath.Join(docs, "B.md")
	head, tail := "# B\n\nbefore\n<!-- pgporter-bench:full begin -->", "<!-- pgporter-bench:full end -->\nafter\n"
	require.NoError(t, os.WriteFile(doc, []byte(head+"\nstale\n"+tail), 0o600))
	require.NoError(t, UpdateDocSection(doc, "full", jsonPath, f))
	got, err := os.ReadFile(doc)
	require.NoError(t, err)
	s := string(got)
	require.True(t, strings.HasPrefix(s, head+"\n"), s)
	require.True(t, strings.HasSuffix(s, "\n"+tail), s)
	require.NotContains(t, s, "stale")
	require.Contains(t, s, "from [20261206-090000.json](../results/20261206-090000.json)")
	require.Contains(t, s, "commit abc123")
	require.Contains(t, s, "scenarios: lan, chunk.")
	require.Contains(t, s, "| pgporter |")
	require.Contains(t, s, "![lan-wall](../results/20261206-090000-lan-wall.svg)")
	require.Contains(t, s, "![lan-wire](../results/20261206-090000-lan-wire.svg)")
	st, err := os.Stat(doc)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the file keeps its mode")

	require.NoError(t, UpdateDocSection(doc, "full", jsonPath, f))
	again, err := os.ReadFile(doc)
	require.NoError(t, err)
	require.Equal(t, s, string(again), "regenerating is idempotent")

	for body, want := range map[string]string{
		"no markers\n": `has no section "full"`,
		"<!-- pgporter-bench:full end -->\n<!-- pgporter-bench:full begin -->\n":                                     "ends before it begins",
		"<!-- pgporter-bench:full begin -->\n<!-- pgporter-bench:full begin -->\n<!-- pgporter-bench:full end -->\n": "marked more than once",
	} {
		require.NoError(t, os.WriteFile(doc, []byte(body), 0o644))
		require.ErrorContains(t, UpdateDocSection(doc, "full", jsonPath, f), want)
		left, err := os.ReadFile(doc)
		require.NoError(t, err)
		require.Equal(t, body, string(left))
	}
	require.ErrorContains(t, UpdateDocSection(doc, "Full Run", jsonPath, f), "want lowercase letters")
	entries, err := os.ReadDir(docs)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file left")
}
