package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
)

// profiler is a scenario that can record a profile of pgporter with
// perf record -g in an extra run, not counted (--perf): its Setup has a
// Profile.
type profiler interface {
	Scenario
	profiles() bool
}

func (*LAN) profiles() bool { return true }

// profiles is true for scenario 7 only (export, export-lan): multidb
// shares the type, and its pgporter export is the same process on more
// data.
func (s *Export) profiles() bool { return s.Databases <= 1 }

// perfReportLines is how many lines of perf report's output the log
// shows: the header and the top functions, as docs/BENCHMARKS.md quotes
// them beside the figures.
const perfReportLines = 40

// perfRecord returns the command line that runs a program under
// 'perf record -g' at freq samples a second into file: the program and its
// arguments follow it.
func perfRecord(file string, freq int, quiet bool) []string {
	argv := []string{"perf", "record"}
	if quiet {
		argv = append(argv, "-q")
	}
	return append(argv, "-F", strconv.Itoa(freq), "-g", "-o", file, "--")
}

// perfReportArgs is the report whose top lines the log shows.
func perfReportArgs(file string) []string {
	return []string{"perf", "report", "--stdio", "--no-children", "--percent-limit", "2", "-i", file}
}

// wrapCmd returns the program and arguments that run name with args under
// prefix (a command line such as perfRecord's), or name itself when prefix
// is empty.
func wrapCmd(prefix []string, name string, args ...string) (string, []string) {
	if len(prefix) == 0 {
		return name, args
	}
	return prefix[0], slices.Concat(prefix[1:], []string{name}, args)
}

// perfFiles returns the profile file of each chosen scenario that
// profiles, by name: file itself when one does, file.NAME (file.lan,
// file.export) when several do.
func perfFiles(file string, chosen []Scenario) (map[string]string, error) {
	var names []string
	for _, s := range chosen {
		if p, ok := s.(profiler); ok && p.profiles() {
			names = append(names, s.Name())
		}
	}
	if len(names) == 0 {
		return nil, errors.New("--perf profiles pgporter in the lan, export, export-mixed and export-lan scenarios; none of them is chosen")
	}
	files := make(map[string]string, len(names))
	for _, n := range names {
		files[n] = file
		if len(names) > 1 {
			files[n] = file + "." + n
		}
	}
	return files, nil
}

// RequirePerf returns an error unless perf (Debian's linux-perf) is
// installed.
func RequirePerf() error {
	if _, err := exec.LookPath("perf"); err != nil {
		return errors.New("--perf needs perf, from the package linux-perf (scripts/setup installs it)")
	}
	return nil
}

// perfReport returns the first perfReportLines lines of perf report of
// file.
func perfReport(ctx context.Context, file string) (string, error) {
	argv := perfReportArgs(file)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("perf report -i %s: %w: %s", file, err, tail(stderr.String()))
	}
	// The header's dotted rule and the symbol column are padded to the
	// longest symbol: hundreds of trailing blanks a line.
	var b strings.Builder
	for i, line := range strings.Split(string(out), "\n") {
		if i == perfReportLines {
			break
		}
		b.WriteString(strings.TrimRight(line, " "))
		b.WriteByte('\n')
	}
	return b.String(), nil
}

// profile runs setup's Profile into file, after its Settle, and logs the
// top lines of its report, or the command that prints them.
func profile(ctx context.Context, sc Scenario, setup *Setup, file string, env Env) error {
	if setup.Profile == nil {
		return fmt.Errorf("%s: --perf: the scenario does not profile pgporter", sc.Name())
	}
	if setup.Settle != nil {
		if err := setup.Settle(ctx); err != nil {
			return fmt.Errorf("%s: settling before the profile: %w", sc.Name(), err)
		}
	}
	env.Logf("%s: recording perf record -g of pgporter into %s, in an extra run that is not counted", sc.Name(), file)
	if err := setup.Profile(ctx, file); err != nil {
		return fmt.Errorf("%s: profiling pgporter into %s: %w", sc.Name(), file, err)
	}
	cmd := strings.Join(perfReportArgs(file), " ")
	top, err := perfReport(ctx, file)
	if err != nil {
		env.Logf("%s: %v; see %s", sc.Name(), err, cmd)
		return nil
	}
	env.Logf("%s: %s | head -%d:\n%s", sc.Name(), cmd, perfReportLines, strings.TrimRight(top, "\n"))
	return nil
}
