package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// WriteTables writes a Markdown table per scenario of f: for each tool the
// median wall time with its range, the rate, CPU-seconds per GB of input on
// each side, wire and memory figures where measured, the tools' own extra
// figures, and the wall time relative to the scenario's first tool.
func WriteTables(w io.Writer, f *File) error {
	var b strings.Builder
	for i, r := range f.Results {
		if i > 0 {
			b.WriteByte('\n')
		}
		writeTable(&b, f, &r)
	}
	if x, ok := ScaleRSSRatio(f); ok {
		verdict := "met"
		if x > ScaleRSSTarget {
			verdict = "not met"
		}
		fmt.Fprintf(&b, "\nexport peak RSS 10x / 1x = %.2f (target at most %.1f): %s\n", x, ScaleRSSTarget, verdict)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

type column struct {
	head   string
	metric Metric
	format func(Summary) string
}

func writeTable(b *strings.Builder, f *File, r *Result) {
	fmt.Fprintf(b, "**%s**: %s\n\n", r.Scenario, r.Description)
	fmt.Fprintf(b, "%.1f MB of input, %d runs of each tool interleaved, medians", float64(r.Bytes)/1e6, r.Reps)
	for _, k := range sortedKeys(r.Notes) {
		fmt.Fprintf(b, "; %s: %s", k, r.Notes[k])
	}
	fmt.Fprintf(b, "; %d cores, load %.2f before, %.2f after", f.Cores, r.LoadBefore[0], r.LoadAfter[0])
	if f.Commit != "" {
		fmt.Fprintf(b, "; commit %s", f.Commit)
	}
	b.WriteString("\n\n")

	gb := float64(r.Bytes) / 1e9
	perGB := func(s Summary) string { return fmt.Sprintf("%.2f", s.Median/gb) }
	mb := func(s Summary) string { return fmt.Sprintf("%.1f", s.Median/1e6) }
	cols := []column{{"wall s", WallSeconds, func(s Summary) string {
		return fmt.Sprintf("%.3f (%.3f–%.3f)", s.Median, s.Min, s.Max)
	}}, {"MB/s", WallSeconds, func(s Summary) string {
		return fmt.Sprintf("%.0f", float64(r.Bytes)/1e6/s.Median)
	}}}
	sides := r.Sides
	if len(sides) == 0 {
		sides = []string{"sender", "receiver"}
	}
	cpu := []Metric{SenderCPU, ReceiverCPU}
	rss := []Metric{SenderRSS, ReceiverRSS}
	for i, side := range sides[:min(len(sides), 2)] {
		cols = append(cols, column{side + " CPU-s/GB", cpu[i], perGB})
	}
	cols = append(cols, column{"wire MB", WireBytes, mb})
	for i, side := range sides[:min(len(sides), 2)] {
		cols = append(cols, column{side + " peak RSS MB", rss[i], mb})
	}
	for _, k := range extraKeys(r) {
		cols = append(cols, column{k, ExtraMetric(k), func(s Summary) string { return fmt.Sprintf("%.4g", s.Median) }})
	}
	// Only the columns some tool measured.
	cols = slices.DeleteFunc(cols, func(c column) bool {
		for _, t := range r.Tools {
			if _, ok := r.ToolSummary(t, c.metric); ok {
				return false
			}
		}
		return true
	})

	var first Summary
	if len(r.Tools) > 0 {
		first, _ = r.ToolSummary(r.Tools[0], WallSeconds)
	}
	b.WriteString("| tool |")
	for _, c := range cols {
		fmt.Fprintf(b, " %s |", c.head)
	}
	if len(r.Tools) > 0 {
		fmt.Fprintf(b, " time / %s's |", mdCell(r.Tools[0]))
	}
	b.WriteString("\n|---|")
	for range cols {
		b.WriteString("---:|")
	}
	if len(r.Tools) > 0 {
		b.WriteString("---:|")
	}
	b.WriteByte('\n')
	for _, t := range r.Tools {
		fmt.Fprintf(b, "| %s |", mdCell(t))
		for _, c := range cols {
			if s, ok := r.ToolSummary(t, c.metric); ok {
				fmt.Fprintf(b, " %s |", c.format(s))
			} else {
				b.WriteString(" – |")
			}
		}
		if s, ok := r.ToolSummary(t, WallSeconds); ok && first.Median > 0 {
			fmt.Fprintf(b, " %.2fx |", s.Median/first.Median)
		} else if len(r.Tools) > 0 {
			b.WriteString(" – |")
		}
		b.WriteByte('\n')
	}
	if x, ok := r.SpeedUpRatio(); ok {
		fmt.Fprintf(b, "\nspeed-up of %s over %s: %.2fx (ratio of median wall times)\n", r.SpeedUp.Of, r.SpeedUp.Over, x)
	}
	if x, ok := r.RatioValue(); ok {
		fmt.Fprintf(b, "\n%s of %s over %s: %.2fx (ratio of medians)", r.Ratio.Key, r.Ratio.Of, r.Ratio.Over, x)
		if r.Ratio.Target > 0 {
			verdict := "met"
			if x < r.Ratio.Target {
				verdict = "not met"
			}
			fmt.Fprintf(b, "; target at least %.2fx: %s", r.Ratio.Target, verdict)
		}
		b.WriteByte('\n')
	}
}

// RatioValue returns r.Ratio.Of's median of r.Ratio.Key divided by
// r.Ratio.Over's; ok is false without a ratio, without runs of both that
// measured it, or when Over's median is 0.
func (r *Result) RatioValue() (float64, bool) {
	if r.Ratio == nil {
		return 0, false
	}
	of, ok1 := r.ToolSummary(r.Ratio.Of, ExtraMetric(r.Ratio.Key))
	over, ok2 := r.ToolSummary(r.Ratio.Over, ExtraMetric(r.Ratio.Key))
	if !ok1 || !ok2 || over.Median <= 0 {
		return 0, false
	}
	return of.Median / over.Median, true
}

// SpeedUpRatio returns the median wall time of r.SpeedUp.Over divided by
// that of r.SpeedUp.Of; ok is false without a pair or without runs of both.
func (r *Result) SpeedUpRatio() (float64, bool) {
	if r.SpeedUp == nil {
		return 0, false
	}
	of, ok1 := r.ToolSummary(r.SpeedUp.Of, WallSeconds)
	over, ok2 := r.ToolSummary(r.SpeedUp.Over, WallSeconds)
	if !ok1 || !ok2 || of.Median <= 0 {
		return 0, false
	}
	return over.Median / of.Median, true
}

// extraKeys returns the Extra keys any run of r has, sorted.
func extraKeys(r *Result) []string {
	set := map[string]bool{}
	for _, run := range r.Runs {
		for k := range run.Extra {
			set[k] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// mdCell escapes the pipes of a tool's name ("tar|zstd|nc") in a table cell.
func mdCell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// ScaleRSSTarget is issue 16's target for the export's memory: its peak RSS
// at 10x the data at most this many times its peak at 1x.
const ScaleRSSTarget = 1.2

// ScaleRSSRatio returns the median peak RSS of pgporter export in f's
// scale-10x divided by that in its scale-1x; ok is false unless both ran
// in f and measured it.
func ScaleRSSRatio(f *File) (float64, bool) {
	var at [2]float64
	for i, name := range []string{"scale-1x", "scale-10x"} {
		j := slices.IndexFunc(f.Results, func(r Result) bool { return r.Scenario == name })
		if j < 0 {
			return 0, false
		}
		s, ok := f.Results[j].ToolSummary("pgporter export", SenderRSS)
		if !ok {
			return 0, false
		}
		at[i] = s.Median
	}
	return at[1] / at[0], true
}
