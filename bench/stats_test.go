package bench

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []float64
		want Summary
	}{
		{"none", nil, Summary{}},
		{"one", []float64{3}, Summary{N: 1, Median: 3, Min: 3, Max: 3}},
		{"odd unsorted", []float64{5, 1, 3}, Summary{N: 3, Median: 3, Min: 1, Max: 5}},
		{"even: mean of the middle two", []float64{4, 1, 10, 2}, Summary{N: 4, Median: 3, Min: 1, Max: 10}},
		{"outlier does not move the median", []float64{1, 1, 1, 100, 1}, Summary{N: 5, Median: 1, Min: 1, Max: 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]float64(nil), tc.in...)
			require.Equal(t, tc.want, Summarize(in))
			require.Equal(t, tc.in, in, "Summarize must not reorder its input")
		})
	}
}

func TestToolSummary(t *testing.T) {
	r := &Result{Runs: []Sample{
		{Tool: "a", Measure: Measure{Wall: 2 * time.Second, CPUSender: 1}},
		{Tool: "b", Measure: Measure{Wall: 9 * time.Second}},
		{Tool: "a", Measure: Measure{Wall: 4 * time.Second, Extra: map[string]float64{"ratio": 3}}},
	}}
	s, ok := r.ToolSummary("a", WallSeconds)
	require.True(t, ok)
	require.Equal(t, Summary{N: 2, Median: 3, Min: 2, Max: 4}, s)
	s, ok = r.ToolSummary("a", SenderCPU)
	require.True(t, ok, "one run measured CPU")
	require.Equal(t, 1, s.N)
	_, ok = r.ToolSummary("b", ReceiverCPU)
	require.False(t, ok, "nothing measured the receiver")
	s, ok = r.ToolSummary("a", ExtraMetric("ratio"))
	require.True(t, ok)
	require.Equal(t, 3.0, s.Median)
}
