package bench

import (
	"fmt"
	"image/color"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// WriteCharts draws two SVG charts per scenario of f into dir, named
// prefix-SCENARIO-wall.svg (median wall seconds per tool, whiskers from the
// fastest to the slowest run) and prefix-SCENARIO-cpu.svg (median CPU-seconds
// per GB of input, one bar per side). It returns the files written.
func WriteCharts(dir, prefix string, f *File) ([]string, error) {
	var files []string
	for i := range f.Results {
		r := &f.Results[i]
		wall := filepath.Join(dir, fmt.Sprintf("%s-%s-wall.svg", prefix, r.Scenario))
		if err := wallChart(r, wall); err != nil {
			return files, fmt.Errorf("charting %s: %w", r.Scenario, err)
		}
		files = append(files, wall)
		cpu := filepath.Join(dir, fmt.Sprintf("%s-%s-cpu.svg", prefix, r.Scenario))
		ok, err := cpuChart(r, cpu)
		if err != nil {
			return files, fmt.Errorf("charting %s: %w", r.Scenario, err)
		}
		if ok {
			files = append(files, cpu)
		}
	}
	return files, nil
}

// errorPoints are bar tops with their whiskers, for plotter.NewYErrorBars.
type errorPoints struct {
	plotter.XYs
	plotter.YErrors
}

func wallChart(r *Result, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: wall time, %.0f MB (median, min–max of %d)", r.Scenario, float64(r.Bytes)/1e6, r.Reps)
	p.Y.Label.Text = "seconds"
	var vals plotter.Values
	var pts errorPoints
	for i, t := range r.Tools {
		s, _ := r.ToolSummary(t, WallSeconds)
		vals = append(vals, s.Median)
		pts.XYs = append(pts.XYs, plotter.XY{X: float64(i), Y: s.Median})
		pts.YErrors = append(pts.YErrors, struct{ Low, High float64 }{s.Median - s.Min, s.Max - s.Median})
	}
	bars, err := plotter.NewBarChart(vals, vg.Points(24))
	if err != nil {
		return err
	}
	bars.Color = color.RGBA{R: 70, G: 110, B: 170, A: 255}
	whiskers, err := plotter.NewYErrorBars(pts)
	if err != nil {
		return err
	}
	p.Add(bars, whiskers)
	p.NominalX(r.Tools...)
	p.Y.Min = 0
	return p.Save(chartWidth(len(r.Tools)), 4*vg.Inch, path)
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
