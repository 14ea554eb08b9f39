package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/pgporter/pgporter/orchestrator"
	"github.com/stretchr/testify/require"
)

// TestS3ExportsSelection guards the scenario's name: the prefix matching of
// --scenario must not pull it into export, multidb or s3-backup runs,
// which do not start the S3 server or expect its tools.
func TestS3ExportsSelection(t *testing.T) {
	all := scenarios(Options{}, &wanData{})
	for _, name := range []string{"export", "multidb", "s3-backup"} {
		got, err := selectScenarios(all, []string{name})
		require.NoError(t, err)
		require.Len(t, got, 1, name)
		require.Equal(t, name, got[0].Name())
	}
	got, err := selectScenarios(all, []string{"s3-exports"})
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.IsType(t, &S3Exports{}, got[0])
}

func TestS3ExportsDefaults(t *testing.T) {
	require.Equal(t, S3Exports{Databases: 4, Scale: 5, Jobs: 2}, (&S3Exports{}).withDefaults(false))
	require.Equal(t, S3Exports{Databases: 2, Scale: 1, Jobs: 2}, (&S3Exports{}).withDefaults(true))
	require.Equal(t, S3Exports{Databases: 3, Scale: 7, Jobs: 1}, (&S3Exports{Databases: 3, Scale: 7, Jobs: 1}).withDefaults(true), "explicit values are kept")
}

func TestParseSizes(t *testing.T) {
	db, cluster, err := parseSizes("80123456|330000000\n")
	require.NoError(t, err)
	require.Equal(t, int64(80123456), db)
	require.Equal(t, int64(330000000), cluster)
	for _, bad := range []string{"", "80123456", "x|1", "1|y", "1|2|3"} {
		_, _, err := parseSizes(bad)
		require.Error(t, err, "%q", bad)
	}
}

func TestS3ExportsFigures(t *testing.T) {
	x := s3ExportsFigures(4, 8*time.Second, 400e6, 20, 6)
	require.InDelta(t, 400.0, x["dump_MB"], 1e-9)
	require.InDelta(t, 50.0, x["throughput_MB_s"], 1e-9, "all the bytes over the time until the last export ended")
	require.InDelta(t, 5.0, x["CPU_s_per_export"], 1e-9)
	require.InDelta(t, 1.5, x["server_CPU_s_per_export"], 1e-9)
	require.InDelta(t, 26.0/8, x["cores_busy"], 1e-9, "the exports' and the server's CPU over the wall time")
	require.Len(t, x, 5)
}

// TestExportFiguresOf checks that the steps of another database than shop
// are found: the s3-exports databases are db1 to db4.
func TestExportFiguresOf(t *testing.T) {
	js := bytes.ReplaceAll(doneSession(t, orchestrator.StateDone, ""), []byte(":shop"), []byte(":db2"))
	x, err := exportFiguresOf(js, "db2")
	require.NoError(t, err)
	require.InDelta(t, 9.5, x["dump_MB"], 1e-9)
	require.InDelta(t, 0.12, x["wire_MB"], 1e-9)
	_, err = exportFiguresOf(js, "shop")
	require.ErrorContains(t, err, "has no step dump:shop")
}

func TestRatioLine(t *testing.T) {
	f := &File{Cores: 2, Results: []Result{{
		Scenario: "s3-exports", Bytes: 1e8, Reps: 3, Tools: []string{"1 export alone", "4 exports at once"},
		Ratio: &Ratio{Key: "throughput_MB_s", Of: "4 exports at once", Over: "1 export alone", Target: 0.9},
		Runs: []Sample{
			{Tool: "1 export alone", Measure: Measure{Wall: time.Second, Extra: map[string]float64{"throughput_MB_s": 100}}},
			{Tool: "1 export alone", Measure: Measure{Wall: time.Second, Extra: map[string]float64{"throughput_MB_s": 120}}},
			{Tool: "1 export alone", Measure: Measure{Wall: time.Second, Extra: map[string]float64{"throughput_MB_s": 30}}},
			{Tool: "4 exports at once", Measure: Measure{Wall: time.Second, Extra: map[string]float64{"throughput_MB_s": 95}}},
			{Tool: "4 exports at once", Measure: Measure{Wall: time.Second, Extra: map[string]float64{"throughput_MB_s": 80}}},
			{Tool: "4 exports at once", Measure: Measure{Wall: time.Second, Extra: map[string]float64{"throughput_MB_s": 99}}},
		},
	}}}
	r := &f.Results[0]
	x, ok := r.RatioValue()
	require.True(t, ok)
	require.InDelta(t, 95.0/100, x, 1e-9, "the ratio of the medians")
	var b strings.Builder
	require.NoError(t, WriteTables(&b, f))
	require.Contains(t, b.String(), "throughput_MB_s of 4 exports at once over 1 export alone: 0.95x (ratio of medians); target at least 0.90x: met\n")

	r.Ratio.Target = 1
	b.Reset()
	require.NoError(t, WriteTables(&b, f))
	require.Contains(t, b.String(), "0.95x (ratio of medians); target at least 1.00x: not met\n")

	r.Ratio.Target = 0
	b.Reset()
	require.NoError(t, WriteTables(&b, f))
	require.Contains(t, b.String(), "0.95x (ratio of medians)\n", "no target, no verdict")

	r.Ratio = nil
	b.Reset()
	require.NoError(t, WriteTables(&b, f))
	require.NotContains(t, b.String(), "ratio of medians")
	_, ok = (&Result{Ratio: &Ratio{Key: "k", Of: "a", Over: "b"}}).RatioValue()
	require.False(t, ok, "no runs, no ratio")
}
