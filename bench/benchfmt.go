package bench

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// WriteBenchfmt writes f in the Go benchmark text format, one line per run,
// so that benchstat compares two results files as it compares 'go test
// -bench' outputs. Each scenario is a benchmark, each tool a sub-benchmark
// ("BenchmarkLan/tool=rsync_-z"); the iteration count is 1.
func WriteBenchfmt(w io.Writer, f *File) error {
	var b strings.Builder
	fmt.Fprintf(&b, "goos: %s\ngoarch: %s\n", runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&b, "cores: %d\n", f.Cores)
	if f.Commit != "" {
		fmt.Fprintf(&b, "commit: %s\n", f.Commit)
	}
	for _, r := range f.Results {
		fmt.Fprintf(&b, "scenario-bytes: %d\n", r.Bytes)
		sides := append(slices.Clone(r.Sides), "sender", "receiver")
		if len(r.Sides) == 1 {
			sides[1] = "receiver"
		}
		for _, run := range r.Runs {
			fmt.Fprintf(&b, "%s/tool=%s 1", benchName(r.Scenario), benchLabel(run.Tool))
			m := run.Measure
			unit := func(v float64, u string) { fmt.Fprintf(&b, " %s %s", strconv.FormatFloat(v, 'g', 6, 64), u) }
			unit(float64(m.Wall.Nanoseconds()), "ns/op")
			if m.Wall > 0 && r.Bytes > 0 {
				unit(float64(r.Bytes)/1e6/m.Wall.Seconds(), "MB/s")
			}
			if m.CPUSender > 0 {
				unit(m.CPUSender, sides[0]+"-cpu-sec/op")
			}
			if m.CPUReceiver > 0 {
				unit(m.CPUReceiver, sides[1]+"-cpu-sec/op")
			}
			if m.WireBytes > 0 {
				unit(float64(m.WireBytes), "wire-B/op")
			}
			if m.RSSSender > 0 {
				unit(float64(m.RSSSender), sides[0]+"-peak-RSS-B")
			}
			if m.RSSReceiver > 0 {
				unit(float64(m.RSSReceiver), sides[1]+"-peak-RSS-B")
			}
			for _, k := range sortedKeys(m.Extra) {
				unit(m.Extra[k], benchLabel(k))
			}
			b.WriteByte('\n')
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// benchName turns a scenario name ("lan") into a benchmark name ("BenchmarkLan").
func benchName(scenario string) string {
	r := []rune(benchLabel(scenario))
	if len(r) > 0 {
		r[0] = unicode.ToUpper(r[0])
	}
	return "Benchmark" + string(r)
}

// benchLabel makes s one field of a benchmark line: no spaces, and no '/'
// or '=', which separate the parts of a benchmark name.
func benchLabel(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) || r == '/' || r == '=' {
			return '_'
		}
		return r
	}, s)
}
