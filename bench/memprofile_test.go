package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseStatusKB(t *testing.T) {
	status := []byte("Name:\tpgporter\nVmPeak:\t 2000 kB\nVmHWM:\t  153600 kB\nVmRSS:\t  120000 kB\n")
	for key, want := range map[string]int64{"VmHWM": 153600, "VmRSS": 120000} {
		got, err := parseStatusKB(status, key)
		require.NoError(t, err, key)
		require.Equal(t, want, got, key)
	}
	_, err := parseStatusKB([]byte("Name:\tzombie\nState:\tZ (zombie)\n"), "VmRSS")
	require.ErrorContains(t, err, "no VmRSS")
	_, err = parseStatusKB([]byte("VmRSS:\tmany kB\n"), "VmRSS")
	require.ErrorContains(t, err, "parsing VmRSS")
}

// TestMemSampler samples a child of a shell, as it samples GNU time's
// pgporter: the samples and the smaps at the peak, and no heap profile,
// since nothing serves one.
func TestMemSampler(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run1")
	m, err := newMemSampler(dir)
	require.NoError(t, err)
	require.Contains(t, m.env(), "GODEBUG=gctrace=1")
	cmd := exec.Command("sh", "-c", "sleep 1; true")
	require.NoError(t, cmd.Start())
	m.start(cmd.Process.Pid)
	require.NoError(t, cmd.Wait())
	require.NoError(t, m.close())
	require.NoError(t, m.close(), "a second close does nothing")

	tsv, err := os.ReadFile(filepath.Join(dir, "rss.tsv"))
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(tsv)), "\n")
	require.Equal(t, "seconds\tVmRSS_KiB\tVmHWM_KiB", lines[0])
	require.GreaterOrEqual(t, len(lines), 3, "samples every %s of a 1 s sleep: %q", memSampleEvery, tsv)
	require.Len(t, strings.Split(lines[1], "\t"), 3)
	smaps, err := os.ReadFile(filepath.Join(dir, "peak.smaps"))
	require.NoError(t, err)
	require.Contains(t, string(smaps), "Rss:")
	require.NoFileExists(t, filepath.Join(dir, "peak.heap"))
	require.FileExists(t, filepath.Join(dir, "gctrace.txt"))
}

func TestScaleRSSRatio(t *testing.T) {
	scale := func(name string, rss ...int64) Result {
		r := Result{Scenario: name, Bytes: 1e9, Reps: len(rss), Tools: []string{"pgporter send", "pgporter export"}}
		for i, v := range rss {
			r.Runs = append(r.Runs,
				Sample{Tool: "pgporter send", Rep: i, Measure: Measure{Wall: time.Second, RSSSender: 999e6}},
				Sample{Tool: "pgporter export", Rep: i, Measure: Measure{Wall: time.Second, RSSSender: v}})
		}
		return r
	}
	for _, tc := range []struct {
		name    string
		results []Result
		ratio   float64
		verdict string // "" when the line is absent
	}{
		{"met", []Result{scale("scale-1x", 100e6, 150e6, 110e6), scale("scale-10x", 120e6, 130e6, 125e6)}, 125.0 / 110, "met"},
		{"not met", []Result{scale("scale-10x", 130e6), scale("scale-1x", 100e6)}, 1.3, "not met"},
		{"only 1x", []Result{scale("scale-1x", 100e6)}, 0, ""},
		{"no export runs", []Result{scale("scale-1x"), scale("scale-10x")}, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &File{Cores: 2, Results: tc.results}
			x, ok := ScaleRSSRatio(f)
			var b strings.Builder
			require.NoError(t, WriteTables(&b, f))
			if tc.verdict == "" {
				require.False(t, ok)
				require.NotContains(t, b.String(), "export peak RSS 10x / 1x")
				return
			}
			require.True(t, ok)
			require.InDelta(t, tc.ratio, x, 1e-9)
			require.Contains(t, b.String(), "export peak RSS 10x / 1x = ")
			require.True(t, strings.HasSuffix(b.String(), "(target at most 1.2): "+tc.verdict+"\n"), b.String())
		})
	}
}
