package bench

import "slices"

// Summary is a sample's median and spread.
type Summary struct {
	N      int
	Median float64
	Min    float64
	Max    float64
}

// Summarize returns the median (the mean of the middle two for an even
// count), minimum and maximum of xs; the zero Summary for none.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return Summary{N: n, Median: med, Min: s[0], Max: s[n-1]}
}

// Metric picks one figure out of a Measure; ok is false when it was not measured.
type Metric func(Measure) (v float64, ok bool)

// The metrics that tables and charts show.
var (
	WallSeconds Metric = func(m Measure) (float64, bool) { return m.Wall.Seconds(), m.Wall > 0 }
	SenderCPU   Metric = func(m Measure) (float64, bool) { return m.CPUSender, m.CPUSender > 0 }
	ReceiverCPU Metric = func(m Measure) (float64, bool) { return m.CPUReceiver, m.CPUReceiver > 0 }
	WireBytes   Metric = func(m Measure) (float64, bool) { return float64(m.WireBytes), m.WireBytes > 0 }
	SenderRSS   Metric = func(m Measure) (float64, bool) { return float64(m.RSSSender), m.RSSSender > 0 }
	ReceiverRSS Metric = func(m Measure) (float64, bool) { return float64(m.RSSReceiver), m.RSSReceiver > 0 }
	ExtraMetric        = func(key string) Metric {
		return func(m Measure) (float64, bool) { v, ok := m.Extra[key]; return v, ok }
	}
)

// ToolSummary summarizes metric over the runs of tool in r; ok is false when
// no run measured it.
func (r *Result) ToolSummary(tool string, metric Metric) (Summary, bool) {
	var xs []float64
	for _, run := range r.Runs {
		if run.Tool != tool {
			continue
		}
		if v, ok := metric(run.Measure); ok {
			xs = append(xs, v)
		}
	}
	return Summarize(xs), len(xs) > 0
}
