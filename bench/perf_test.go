package bench

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPerfRecord(t *testing.T) {
	// The command lines of the retired scripts' PERF=FILE.
	require.Equal(t, []string{"perf", "record", "-q", "-F", "2000", "-g", "-o", "/tmp/x.data", "--"}, perfRecord("/tmp/x.data", 2000, true))
	require.Equal(t, []string{"perf", "record", "-F", "999", "-g", "-o", "/tmp/x.data", "--"}, perfRecord("/tmp/x.data", 999, false))
	require.Equal(t, []string{"perf", "report", "--stdio", "--no-children", "--percent-limit", "2", "-i", "/tmp/x.data"}, perfReportArgs("/tmp/x.data"))
}

func TestWrapCmd(t *testing.T) {
	name, args := wrapCmd(nil, "pgporter", "send", "a")
	require.Equal(t, "pgporter", name)
	require.Equal(t, []string{"send", "a"}, args)

	prefix := perfRecord("f", 2000, true)
	name, args = wrapCmd(prefix, "pgporter", "send", "a")
	require.Equal(t, "perf", name)
	require.Equal(t, []string{"record", "-q", "-F", "2000", "-g", "-o", "f", "--", "pgporter", "send", "a"}, args)
	require.Equal(t, perfRecord("f", 2000, true), prefix, "the prefix is not written to")
}

func TestPerfFiles(t *testing.T) {
	all := scenarios(Options{}, &wanData{})
	for _, tc := range []struct {
		names []string
		want  map[string]string
		err   string
	}{
		{names: []string{"lan"}, want: map[string]string{"lan": "/tmp/p"}},
		{names: []string{"chunk", "export"}, want: map[string]string{"export": "/tmp/p"}},
		{names: []string{"lan", "export", "wan"}, want: map[string]string{"lan": "/tmp/p.lan", "export": "/tmp/p.export"}},
		{names: nil, want: map[string]string{"lan": "/tmp/p.lan", "export": "/tmp/p.export", "export-mixed": "/tmp/p.export-mixed", "export-lan": "/tmp/p.export-lan"}},
		{names: []string{"export-lan"}, want: map[string]string{"export-lan": "/tmp/p"}},
		{names: []string{"multidb"}, err: "none of them is chosen"},
		{names: []string{"chunk", "wan"}, err: "none of them is chosen"},
	} {
		chosen, err := selectScenarios(all, tc.names)
		require.NoError(t, err)
		got, err := perfFiles("/tmp/p", chosen)
		if tc.err != "" {
			require.ErrorContains(t, err, tc.err, "%v", tc.names)
			continue
		}
		require.NoError(t, err, "%v", tc.names)
		require.Equal(t, tc.want, got, "%v", tc.names)
	}
}

func TestExportToolArgs(t *testing.T) {
	j := &exportJob{repo: "/r", bwlimit: "25M"}
	tool := &exportTool{job: j, bin: "/bin/pgporter", jobs: 2}
	plain := []string{"--home", "/h", "export", "--repo", "/r", "--db", "shop", "--to", "/t", "--staging-dir", "/s", "--jobs", "2", "--json", "--bwlimit", "25M"}
	require.Equal(t, append([]string{"-f", "%M", "-o", "/peak", "/bin/pgporter"}, plain...), tool.args("/peak", "/h", "/t", "/s"))

	tool.perf = perfRecord("/tmp/e.data", 999, false)
	want := append([]string{"-f", "%M", "-o", "/peak", "perf", "record", "-F", "999", "-g", "-o", "/tmp/e.data", "--", "/bin/pgporter"}, plain...)
	require.Equal(t, want, tool.args("/peak", "/h", "/t", "/s"), "GNU time runs perf, which runs pgporter")
}

func TestRunProfilesFirstUncounted(t *testing.T) {
	s := &fakeScenario{tools: []string{"a", "b"}, profile: true}
	file := filepath.Join(t.TempDir(), "p.data")
	res, err := Run(context.Background(), s, RunOptions{Reps: 1, Perf: file})
	require.NoError(t, err)
	require.Equal(t, []string{"settle", "profile " + file, "settle", "a", "settle", "b"}, s.ran)
	require.Len(t, res.Runs, 2, "the profile's run is not counted")
	require.Equal(t, 1, s.closed)
}

func TestRunPerfUnsupported(t *testing.T) {
	s := &fakeScenario{tools: []string{"a"}}
	_, err := Run(context.Background(), s, RunOptions{Reps: 1, Perf: "/tmp/p"})
	require.ErrorContains(t, err, "fake: --perf: the scenario does not profile pgporter")
	require.Empty(t, s.ran, "no timed run after the failure")
	require.Equal(t, 1, s.closed)
}
