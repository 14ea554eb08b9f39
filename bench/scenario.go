package bench

import (
	"context"
	"errors"
)

// Scenario is one comparison: it prepares the data and the links once, and
// lists the tools that each do the same job on them.
type Scenario interface {
	// Name is short and stable: it names results, benchmark lines and charts.
	Name() string
	// Describe says in one line what the scenario measures.
	Describe() string
	// Prepare makes the data and links and returns the tools to run. The
	// caller calls the Setup's Close once, whether or not the runs succeed.
	Prepare(ctx context.Context, env Env) (*Setup, error)
}

// Env is what every scenario may use: where to put its files, how big to be,
// and where to log.
type Env struct {
	Dir   string               // scratch directory of this scenario; removed by the caller
	Smoke bool                 // a tiny version that finishes in seconds, for CI
	Logf  func(string, ...any) // progress lines; never nil after withDefaults
}

func (e Env) withDefaults() Env {
	if e.Logf == nil {
		e.Logf = func(string, ...any) {}
	}
	return e
}

// Setup is a prepared scenario.
type Setup struct {
	// Bytes is the size of the job's input: the data set each tool moves or
	// processes. Rates and CPU per GB are taken against it.
	Bytes int64
	// Sides names what CPUSender and CPUReceiver measure ("sender",
	// "receiver"); an in-process scenario has one side.
	Sides []string
	// Notes describe the conditions (link rate, CPUs, data), for the result.
	Notes map[string]string
	Tools []Tool
	// Settle, when not nil, runs before every run, untimed, so that no run
	// pays for what the previous one left: the LAN scenario syncs, so that
	// the writeback of the last tool's unsynced output (and the reclaim of
	// its dirty pages) does not land in the next tool's time and CPU.
	Settle func(context.Context) error
	// Profile, when not nil, runs pgporter once under perf record -g into
	// file (--perf): an extra run whose figures are not counted. The runner
	// calls it once, after Settle and before the timed runs.
	Profile func(ctx context.Context, file string) error
	// SpeedUp, when not nil, names the pair of tools whose ratio of median
	// wall times the table states.
	SpeedUp *SpeedUp
	// Ratio, when not nil, names a pair of tools and one of their Extra
	// figures whose ratio of medians the table states, with its target.
	Ratio *Ratio
	// Close stops what Prepare started and removes what it made. It may be nil.
	Close func() error
}

// Tool does a scenario's job once per call.
type Tool interface {
	// Name is the label in tables and charts, e.g. "rsync -z".
	Name() string
	// Run does the job once and measures it. rep counts from 0; a tool uses
	// it to keep the outputs of runs apart. It leaves nothing running when it
	// returns, even on error.
	Run(ctx context.Context, rep int) (Measure, error)
}

// SpeedUp is a pair of a scenario's tools: the table gives Over's median
// wall time divided by Of's, how many times faster Of is.
type SpeedUp struct {
	Of   string `json:"of"`
	Over string `json:"over"`
}

// Ratio is a pair of a scenario's tools and an Extra figure both measure:
// the table gives Of's median of Key divided by Over's, and whether it
// reaches Target (when not 0): at least Target, or with AtMost at most
// (a resumed run's bytes over a cold run's). Where a time ratio misleads
// (4 exports at once against one alone move 4 times the bytes), a ratio of
// throughputs says what a target means.
type Ratio struct {
	Key    string  `json:"key"`
	Of     string  `json:"of"`
	Over   string  `json:"over"`
	Target float64 `json:"target,omitempty"`
	AtMost bool    `json:"at_most,omitempty"`
}

// closers is what a scenario holds open (its link, daemons), closed in
// the reverse order of add.
type closers []func() error

func (c *closers) add(f func() error) { *c = append(*c, f) }

// Close closes everything added, last first, and joins their errors.
func (c *closers) Close() error {
	var errs []error
	for i := len(*c) - 1; i >= 0; i-- {
		errs = append(errs, (*c)[i]())
	}
	return errors.Join(errs...)
}
