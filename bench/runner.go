package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// RunOptions says how to run a scenario.
type RunOptions struct {
	Reps int // repetitions of every tool; 0 means 5
	Env  Env
	// Perf, when not empty, is the file into which the setup's Profile
	// records pgporter before the timed runs.
	Perf string
	// Tools, when not empty, names the only tools to run (as Tool.Name
	// says), to time one of them against itself without the slow peers;
	// a scenario with none of them fails.
	Tools []string
}

// Run prepares sc, runs each of its tools opts.Reps times, interleaved (in
// repetition r the tool order is rotated by r, so that no tool always runs
// first, after the page cache warms or while another job's load fades), and
// tears the setup down. With opts.Perf, the setup's Profile runs first, in
// a run of its own that the result does not count. A failing run stops the
// scenario: the result so far is returned with the error.
func Run(ctx context.Context, sc Scenario, opts RunOptions) (*Result, error) {
	if opts.Reps <= 0 {
		opts.Reps = 5
	}
	env := opts.Env.withDefaults()
	setup, err := sc.Prepare(ctx, env)
	if err != nil {
		return nil, fmt.Errorf("preparing scenario %s: %w", sc.Name(), err)
	}
	var res *Result
	if len(opts.Tools) > 0 {
		err = keepTools(sc, setup, opts.Tools)
	}
	if err == nil && opts.Perf != "" {
		err = profile(ctx, sc, setup, opts.Perf, env)
	}
	if err == nil {
		res, err = runSetup(ctx, sc, setup, opts.Reps, env)
	}
	if setup.Close != nil {
		if cerr := setup.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing scenario %s: %w", sc.Name(), cerr))
		}
	}
	return res, err
}

func runSetup(ctx context.Context, sc Scenario, setup *Setup, reps int, env Env) (*Result, error) {
	res := &Result{
		Scenario:    sc.Name(),
		Description: sc.Describe(),
		Bytes:       setup.Bytes,
		Sides:       setup.Sides,
		Notes:       setup.Notes,
		Reps:        reps,
		SpeedUp:     setup.SpeedUp,
		Ratio:       setup.Ratio,
		LoadBefore:  LoadAvg(),
	}
	for _, t := range setup.Tools {
		res.Tools = append(res.Tools, t.Name())
	}
	defer func() { res.LoadAfter = LoadAvg() }()
	for rep, order := range RunOrder(len(setup.Tools), reps) {
		for _, i := range order {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			t := setup.Tools[i]
			if setup.Settle != nil {
				if err := setup.Settle(ctx); err != nil {
					return res, fmt.Errorf("%s: settling before %s, run %d: %w", sc.Name(), t.Name(), rep+1, err)
				}
			}
			env.Logf("%s: %s, run %d of %d", sc.Name(), t.Name(), rep+1, reps)
			m, err := t.Run(ctx, rep)
			if err != nil {
				return res, fmt.Errorf("%s: %s, run %d: %w", sc.Name(), t.Name(), rep+1, err)
			}
			res.Runs = append(res.Runs, Sample{Tool: t.Name(), Rep: rep, Measure: m})
		}
	}
	return res, nil
}

// keepTools leaves in setup only the tools named in names.
func keepTools(sc Scenario, setup *Setup, names []string) error {
	var kept []Tool
	var all []string
	for _, t := range setup.Tools {
		all = append(all, strconv.Quote(t.Name()))
		if slices.Contains(names, t.Name()) {
			kept = append(kept, t)
		}
	}
	if len(kept) == 0 {
		return fmt.Errorf("scenario %s has none of the tools %q; its tools: %s", sc.Name(), names, strings.Join(all, ", "))
	}
	setup.Tools = kept
	return nil
}

// RunOrder returns the order in which Run runs n tools over reps
// repetitions, as tool indexes: repetition r starts with tool r mod n.
func RunOrder(n, reps int) [][]int {
	order := make([][]int, reps)
	for rep := range reps {
		for i := range n {
			order[rep] = append(order[rep], (i+rep)%n)
		}
	}
	return order
}

// LoadAvg returns the 1, 5 and 15 minute load averages, zeros if unreadable.
func LoadAvg() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	for i, f := range strings.Fields(string(b)) {
		if i == 3 {
			break
		}
		l[i], _ = strconv.ParseFloat(f, 64)
	}
	return l
}
