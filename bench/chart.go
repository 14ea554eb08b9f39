package bench

import (
	"fmt"
	"image/color"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// WriteCharts draws up to three SVG charts per scenario of f into dir:
// prefix-SCENARIO-wall.svg (median wall seconds per tool, whiskers from the
// fastest to the slowest run), prefix-SCENARIO-cpu.svg (median CPU-seconds
// per GB of input, one bar per side) and prefix-SCENARIO-wire.svg (median
// MB on the wire from sender to receiver, whiskers from the least to the
// most). A chart of a figure no run of the scenario measured is not drawn.
// It returns the files written.
func WriteCharts(dir, prefix string, f *File) ([]string, error) {
	var files []string
	for i := range f.Results {
		r := &f.Results[i]
		charts := []struct {
			name string
			draw func(*Result, string) (bool, error)
		}{{"wall", wallChart}, {"cpu", cpuChart}, {"wire", wireChart}}
		for _, c := range charts {
			path := filepath.Join(dir, fmt.Sprintf("%s-%s-%s.svg", prefix, r.Scenario, c.name))
			ok, err := c.draw(r, path)
			if err != nil {
				return files, fmt.Errorf("charting %s: %w", r.Scenario, err)
			}
			if ok {
				files = append(files, path)
			}
		}
	}
	return files, nil
}

// errorPoints are bar tops with their whiskers, for plotter.NewYErrorBars.
type errorPoints struct {
	plotter.XYs
	plotter.YErrors
}

func wallChart(r *Result, path string) (bool, error) {
	title := fmt.Sprintf("%s: wall time, %.0f MB (median, min–max of %d)", r.Scenario, float64(r.Bytes)/1e6, r.Reps)
	return spreadChart(r, WallSeconds, 1, title, "seconds", path)
}

// wireChart draws the bytes each tool put on the link towards the receiver,
// headers and retransmissions included (Measure.WireBytes); tools that did
// not measure them (in-process scenarios, the export on loopback) are left
// out.
func wireChart(r *Result, path string) (bool, error) {
	title := fmt.Sprintf("%s: bytes on the wire, %.0f MB of input (median, min–max of %d)", r.Scenario, float64(r.Bytes)/1e6, r.Reps)
	return spreadChart(r, WireBytes, 1e-6, title, "MB", path)
}

// spreadChart draws one bar per tool, the median of metric times scale,
// with whiskers from the least to the most of its runs. Tools that did not
// measure metric get no bar; ok is false (and nothing is written) when none
// did.
func spreadChart(r *Result, metric Metric, scale float64, title, unit, path string) (ok bool, err error) {
	var tools []string
	var vals plotter.Values
	var pts errorPoints
	for _, t := range r.Tools {
		s, got := r.ToolSummary(t, metric)
		if !got {
			continue
		}
		med := s.Median * scale
		pts.XYs = append(pts.XYs, plotter.XY{X: float64(len(tools)), Y: med})
		pts.YErrors = append(pts.YErrors, struct{ Low, High float64 }{med - s.Min*scale, s.Max*scale - med})
		vals = append(vals, med)
		tools = append(tools, t)
	}
	if len(tools) == 0 {
		return false, nil
	}
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = unit
	bars, err := plotter.NewBarChart(vals, vg.Points(24))
	if err != nil {
		return false, err
	}
	bars.Color = color.RGBA{R: 70, G: 110, B: 170, A: 255}
	whiskers, err := plotter.NewYErrorBars(pts)
	if err != nil {
		return false, err
	}
	p.Add(bars, whiskers)
	p.NominalX(tools...)
	p.Y.Min = 0
	return true, p.Save(chartWidth(len(tools)), 4*vg.Inch, path)
}

// cpuChart draws CPU-seconds per GB per side; ok is false (and nothing is
// written) when no run measured CPU.
func cpuChart(r *Result, path string) (ok bool, err error) {
	sides := r.Sides
	if len(sides) == 0 {
		sides = []string{"sender", "receiver"}
	}
	metrics := []Metric{SenderCPU, ReceiverCPU}
	colors := []color.Color{color.RGBA{R: 70, G: 110, B: 170, A: 255}, color.RGBA{R: 220, G: 130, B: 50, A: 255}}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: CPU-seconds per GB of input (median of %d)", r.Scenario, r.Reps)
	p.Y.Label.Text = "CPU-s / GB"
	gb := float64(r.Bytes) / 1e9
	n := min(len(sides), 2)
	w := vg.Points(18)
	for i := range n {
		var vals plotter.Values
		measured := false
		for _, t := range r.Tools {
			s, got := r.ToolSummary(t, metrics[i])
			measured = measured || got
			vals = append(vals, s.Median/gb)
		}
		if !measured {
			continue
		}
		ok = true
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return false, err
		}
		bars.Color = colors[i]
		bars.Offset = w * vg.Length(2*i-(n-1)) / 2
		p.Add(bars)
		p.Legend.Add(sides[i], bars)
	}
	if !ok {
		return false, nil
	}
	p.Legend.Top = true
	p.NominalX(r.Tools...)
	p.Y.Min = 0
	return true, p.Save(chartWidth(len(r.Tools)), 4*vg.Inch, path)
}

func chartWidth(tools int) vg.Length {
	return max(6*vg.Inch, vg.Length(tools)*1.3*vg.Inch)
}
