package bench

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseCounter(t *testing.T) {
	const text = `# HELP pgporter_mover_durable_bytes_total Plain bytes made durable (fsynced and recorded).
# TYPE pgporter_mover_durable_bytes_total counter
pgporter_mover_durable_bytes_total 1.34217728e+08
pgporter_mover_durable_bytes_total_extra 7
pgporter_mover_transfer_durable_bytes{transfer="t1"} 5
`
	for _, tc := range []struct {
		name, text string
		want       float64
		err        string
	}{
		{"the unlabelled sample, in exponent form", text, 134217728, ""},
		// Before the first transfer a registry may not list the counter yet.
		{"absent", "# HELP x y\nx 1\n", 0, ""},
		{"malformed", "pgporter_mover_durable_bytes_total many\n", 0, "parsing pgporter_mover_durable_bytes_total"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := parseCounter(strings.NewReader(tc.text), "pgporter_mover_durable_bytes_total")
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, v)
		})
	}
}

func TestBWLimit(t *testing.T) {
	require.Equal(t, int64(1e6), bwlimit(resumeSpan*1e6), "the whole transfer in about resumeSpan seconds")
	require.Equal(t, int64(64<<10), bwlimit(1000), "a floor for tiny transfers")
}

// TestInterrupt kills a process by its PID once the progress it reports
// reaches half, and fails when the process ends first: a resume measured
// after a first run that was never interrupted would be a second cold run.
func TestInterrupt(t *testing.T) {
	ctx := context.Background()
	n := int64(0)
	at, err := interrupt(ctx, "sleep", exec.Command("sleep", "60"), 3, func(context.Context) (int64, error) { n++; return n, nil })
	require.NoError(t, err)
	require.Equal(t, int64(3), at)

	_, err = interrupt(ctx, "true", exec.Command("true"), 3, func(context.Context) (int64, error) { return 0, nil })
	require.ErrorContains(t, err, "true ended (<nil>) before the kill, at 0 of 3 bytes")

	cmd := exec.Command("sleep", "60")
	_, err = interrupt(ctx, "sleep", cmd, 3, func(context.Context) (int64, error) { return 0, errors.New("no metrics") })
	require.ErrorContains(t, err, "no metrics")
	require.NotNil(t, cmd.ProcessState, "the process is reaped on error too")
}

func TestRatioAtMost(t *testing.T) {
	f := &File{Cores: 2, Results: []Result{{
		Scenario: "resume", Bytes: 1e8, Reps: 1, Tools: []string{"cold", "resumed"},
		Ratio: &Ratio{Key: "wire_MB", Of: "resumed", Over: "cold", Target: ResumeTarget, AtMost: true},
		Runs: []Sample{
			{Tool: "cold", Measure: Measure{Wall: time.Second, Extra: map[string]float64{"wire_MB": 10}}},
			{Tool: "resumed", Measure: Measure{Wall: time.Second, Extra: map[string]float64{"wire_MB": 5}}},
		},
	}}}
	var b strings.Builder
	require.NoError(t, WriteTables(&b, f))
	require.Contains(t, b.String(), "wire_MB of resumed over cold: 0.50x (ratio of medians); target at most 0.55x: met\n")
	f.Results[0].Runs[1].Extra["wire_MB"] = 6
	b.Reset()
	require.NoError(t, WriteTables(&b, f))
	require.Contains(t, b.String(), "0.60x (ratio of medians); target at most 0.55x: not met\n")
}

func TestSyncStep(t *testing.T) {
	require.Equal(t, int64(1<<20), syncStep(8<<20), "at least 1 MiB")
	require.Equal(t, int64(16<<20), syncStep(256<<20))
	require.Equal(t, int64(64<<20), syncStep(10<<30), "at most mover serve's default")
}
