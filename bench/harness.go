package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Options is one invocation of the harness, as the command's flags set it.
type Options struct {
	Scenarios []string // names; empty means all
	Tools     []string // the only tools to run in each scenario, by name; empty means all
	Runs      int      // repetitions; 0 means 5, or 1 with Smoke
	Out       string   // results directory; "" means bench/results
	Smoke     bool
	Data      string // LAN, resume: directory to send; chunk-dump: to cut
	Pgporter  string // LAN: binary; "" builds ./cmd/pgporter into Out/.bin
	Base      string // LAN: an earlier pgporter binary to compare, or ""
	SendFlags []string
	// Perf, when not empty, is where the lan and export scenarios record
	// perf record -g of pgporter (the sender; the export) in an extra run
	// that is not counted: this file when one of them runs, Perf.lan and
	// Perf.export when both do.
	Perf   string
	Link   LinkOptions
	Export Export // export: data shape, jobs, settle; Pgporter comes from Pgporter
	// WANScale is the pgbench scale of the WAN scenarios' dump; 0 means 4.
	WANScale int
	// LossyBytes is the size of wan-lossy's tree; 0 means 2 MiB, or 64 KiB
	// with Smoke.
	LossyBytes int
	// OutageLength is how long the outage scenario's path is down; 0 means
	// 20 s, or 1 s with Smoke.
	OutageLength time.Duration
	// MultiDBs is the number of databases of the multidb scenario's
	// cluster, shop included; 0 means 4, or 2 with Smoke. Its data shape,
	// jobs and settle are Export's.
	MultiDBs int
	// MultiDBScale is the pgbench scale of each of multidb's databases; 0
	// means 20, or 1 with Smoke.
	MultiDBScale int
	// BackupScale is the pgbench scale of the backup and s3-backup
	// scenarios; 0 means 20, or 1 with Smoke.
	BackupScale int
	// S3ExportsDBs and S3ExportsScale are the s3-exports scenario's number
	// of databases (and of exports at once) and each one's pgbench scale;
	// 0 means 4 and 5, or 2 and 1 with Smoke. Its jobs and settle are
	// Export's.
	S3ExportsDBs, S3ExportsScale int
	// ScaleBase is the scale scenarios' pgbench scale at 1x; 0 means 10, or
	// 1 with Smoke.
	ScaleBase int
	// MemoryProfile, when not empty, is where the scale scenarios' pgporter
	// export runs leave their memory diagnostics (Scale.MemoryProfile).
	MemoryProfile string
	// MountScale is the pgbench scale of the mount and mount-dump
	// scenarios; 0 means 20, or 1 with Smoke.
	MountScale int
}

// ScenarioNames lists the scenarios in the order the harness runs them,
// with their descriptions.
func ScenarioNames() [][2]string {
	var out [][2]string
	for _, s := range scenarios(Options{}, &wanData{}) {
		out = append(out, [2]string{s.Name(), s.Describe()})
	}
	return out
}

// scenarios lists every scenario; the WAN ones share wd's dump.
func scenarios(o Options, wd *wanData) []Scenario {
	if wd.Scale <= 0 {
		wd.Scale = 4
		if o.WANScale > 0 {
			wd.Scale = o.WANScale
		}
	}
	lossy := o.LossyBytes
	if lossy <= 0 {
		lossy = 2 << 20
		if o.Smoke {
			lossy = 64 << 10
		}
	}
	outage := o.OutageLength
	if outage <= 0 && o.Smoke {
		outage = time.Second
	}
	// The WAN tools run one side on each CPU as the LAN's do; the rate is
	// the profile's.
	cpus := LinkOptions{SenderCPUs: o.Link.SenderCPUs, ReceiverCPUs: o.Link.ReceiverCPUs, TCPCongestion: o.Link.TCPCongestion}
	return []Scenario{
		&ChunkEngine{},
		&ChunkEngine{Dump: true, Data: o.Data},
		&LAN{Data: o.Data, Pgporter: o.Pgporter, Base: o.Base, SendFlags: o.SendFlags, Link: o.Link},
		&Resume{Data: o.Data, Pgporter: o.Pgporter, SendFlags: o.SendFlags, Link: o.Link},
		&WAN{name: "wan", Profile: ProfileWAN, Pgporter: o.Pgporter, SendFlags: o.SendFlags, Link: cpus, data: wd},
		&WAN{name: "wan-lossy", Profile: ProfileLossy, Pgporter: o.Pgporter, SendFlags: o.SendFlags, Link: cpus, SynthBytes: lossy, data: wd},
		&Outage{Profile: ProfileWAN, Length: outage, Pgporter: o.Pgporter, SendFlags: o.SendFlags, Link: cpus, data: wd},
		&Delta{Profile: ProfileWAN, Pgporter: o.Pgporter, SendFlags: o.SendFlags, Link: cpus, data: wd},
		exportScenario(o),
		exportMixedScenario(o),
		exportLANScenario(o),
		multiDBScenario(o),
		&Backup{Pgporter: o.Pgporter, Scale: o.BackupScale},
		&S3Backup{Pgporter: o.Pgporter, Scale: o.BackupScale},
		&S3Exports{Pgporter: o.Pgporter, Databases: o.S3ExportsDBs, Scale: o.S3ExportsScale, Jobs: o.Export.Jobs, Settle: o.Export.Settle},
		&Scale{Factor: 1, Base: o.ScaleBase, Pgporter: o.Pgporter, SendFlags: o.SendFlags, Link: o.Link, Jobs: o.Export.Jobs, MemoryProfile: o.MemoryProfile},
		&Scale{Factor: 10, Base: o.ScaleBase, Pgporter: o.Pgporter, SendFlags: o.SendFlags, Link: o.Link, Jobs: o.Export.Jobs, MemoryProfile: o.MemoryProfile},
		&WALPush{Pgporter: o.Pgporter},
		&Mount{Pgporter: o.Pgporter, Scale: o.MountScale},
		&Mount{Pgporter: o.Pgporter, Scale: o.MountScale, Dump: true},
		&Mount{Pgporter: o.Pgporter, Scale: o.MountScale, Remote: true, RepoCPUs: o.Link.SenderCPUs, ReaderCPUs: o.Link.ReceiverCPUs},
	}
}

// standalone is a scenario that only its own name chooses, though its name
// extends another's: export-lan is no variant of export to run beside it,
// but the same comparison over another link, which needs more (netns).
type standalone interface{ standalone() bool }

// selectScenarios returns the scenarios names choose, in the order of all:
// a name chooses the scenario of that name and its variants, those named
// name-SUFFIX ("wan" chooses wan and wan-lossy) unless standalone. No names
// choose all.
func selectScenarios(all []Scenario, names []string) ([]Scenario, error) {
	if len(names) == 0 {
		return all, nil
	}
	chosen := make([]bool, len(all))
	for _, name := range names {
		found := false
		for i, s := range all {
			alone, _ := s.(standalone)
			if s.Name() == name || strings.HasPrefix(s.Name(), name+"-") && (alone == nil || !alone.standalone()) {
				chosen[i], found = true, true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown scenario %q (see --list)", name)
		}
	}
	var out []Scenario
	for i, s := range all {
		if chosen[i] {
			out = append(out, s)
		}
	}
	return out, nil
}

func exportScenario(o Options) *Export {
	e := o.Export
	e.Pgporter, e.Base = o.Pgporter, o.Base
	return &e
}

// exportMixedScenario is scenario 7 on one machine on data shaped like an
// application's, at its own scale (--export-scale is the pgbench export's:
// 70 by default).
func exportMixedScenario(o Options) *Export {
	e := exportScenario(o)
	e.Mixed, e.Scale = true, 0
	return e
}

// exportLANScenario is scenario 7 over the LAN scenario's link: the
// export scenario's options, its rate and CPUs.
func exportLANScenario(o Options) *Export {
	e := exportScenario(o)
	e.BWLimit = ""
	e.Link = &LinkOptions{Rate: o.Link.Rate, SenderCPUs: o.Link.SenderCPUs, ReceiverCPUs: o.Link.ReceiverCPUs}
	return e
}

// multiDBScenario is scenario 6: the export scenario's options on a
// cluster of several databases, against pgBackRest.
func multiDBScenario(o Options) *Export {
	e := exportScenario(o)
	e.Base = ""
	e.Databases = o.MultiDBs
	if e.Databases <= 0 {
		e.Databases = 4
		if o.Smoke {
			e.Databases = 2
		}
	}
	e.Scale = clusterScale(o.MultiDBScale, o.Smoke)
	if o.Smoke {
		e.Tables = 0
	}
	return e
}

// Written is what RunAll wrote.
type Written struct {
	JSON, Benchfmt, Markdown string
	Charts                   []string
}

// RunAll runs the chosen scenarios and writes, under o.Out, STAMP.json,
// STAMP.txt (benchstat's format), STAMP.md (the tables) and the charts,
// STAMP being the start time, YYYYMMDD-HHMMSS. The tables also go to stdout,
// progress to stderr, with the top lines of each profile that o.Perf asks
// for. When a scenario fails, what ran so far is still written.
func RunAll(ctx context.Context, o Options, stdout, stderr io.Writer) (*Written, error) {
	if o.Out == "" {
		o.Out = filepath.Join("bench", "results")
	}
	if o.Runs <= 0 {
		o.Runs = 5
		if o.Smoke {
			o.Runs = 1
		}
	}
	wd := &wanData{}
	chosen, err := selectScenarios(scenarios(o, wd), o.Scenarios)
	if err != nil {
		return nil, err
	}
	defer wd.remove()
	var perf map[string]string
	if o.Perf != "" {
		if perf, err = perfFiles(o.Perf, chosen); err != nil {
			return nil, err
		}
		if err := RequirePerf(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, fmt.Errorf("making the results directory: %w", err)
	}
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, "pgporter-bench: "+format+"\n", args...) }

	// The scenarios that run pgporter share one build.
	var built string
	for _, s := range chosen {
		var bin *string
		switch s := s.(type) {
		case *LAN:
			bin = &s.Pgporter
		case *Resume:
			bin = &s.Pgporter
		case *Export:
			bin = &s.Pgporter
		case *WAN:
			bin = &s.Pgporter
		case *Outage:
			bin = &s.Pgporter
		case *Delta:
			bin = &s.Pgporter
		case *Backup:
			bin = &s.Pgporter
		case *S3Backup:
			bin = &s.Pgporter
		case *S3Exports:
			bin = &s.Pgporter
		case *Scale:
			bin = &s.Pgporter
		case *WALPush:
			bin = &s.Pgporter
		case *Mount:
			bin = &s.Pgporter
		default:
			continue
		}
		if *bin != "" {
			continue
		}
		if built == "" {
			built = filepath.Join(o.Out, ".bin", "pgporter")
			logf("building ./cmd/pgporter into %s", built)
			if err := buildPgporter(ctx, built); err != nil {
				return nil, err
			}
		}
		*bin = built
	}

	start := time.Now()
	f := &File{
		Started: start.UTC(), Commit: gitCommit(ctx), Cores: runtime.NumCPU(), GoVersion: runtime.Version(),
		Smoke: o.Smoke, LoadBefore: LoadAvg(),
	}
	var runErr error
	for _, s := range chosen {
		dir, err := os.MkdirTemp("", "pgporter-bench-"+s.Name()+"-")
		if err != nil {
			return nil, fmt.Errorf("making scratch directory: %w", err)
		}
		res, err := Run(ctx, s, RunOptions{Reps: o.Runs, Env: Env{Dir: dir, Smoke: o.Smoke, Logf: logf}, Perf: perf[s.Name()], Tools: o.Tools})
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, rerr)
		}
		if res != nil && len(res.Runs) > 0 {
			f.Results = append(f.Results, *res)
		}
		if err != nil {
			runErr = err
			break
		}
	}
	f.LoadAfter = LoadAvg()
	for _, s := range chosen {
		if file, ok := perf[s.Name()]; ok && fileExists(file) {
			logf("%s: the profile of pgporter is in %s: %s", s.Name(), file, strings.Join(perfReportArgs(file), " "))
		}
	}
	if len(f.Results) == 0 {
		return nil, runErr
	}
	w, err := writeAll(o.Out, start.UTC().Format("20060102-150405"), f)
	if err == nil {
		err = WriteTables(stdout, f)
	}
	return w, errors.Join(runErr, err)
}

func writeAll(dir, stamp string, f *File) (*Written, error) {
	w := &Written{
		JSON:     filepath.Join(dir, stamp+".json"),
		Benchfmt: filepath.Join(dir, stamp+".txt"),
		Markdown: filepath.Join(dir, stamp+".md"),
	}
	if err := WriteJSON(w.JSON, f); err != nil {
		return nil, err
	}
	for _, out := range []struct {
		path  string
		write func(io.Writer, *File) error
	}{{w.Benchfmt, WriteBenchfmt}, {w.Markdown, WriteTables}} {
		if err := writeFile(out.path, func(wr io.Writer) error { return out.write(wr, f) }); err != nil {
			return nil, err
		}
	}
	charts, err := WriteCharts(dir, stamp, f)
	w.Charts = charts
	return w, err
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func writeFile(path string, write func(io.Writer) error) error {
	fh, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	err = write(fh)
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func buildPgporter(ctx context.Context, bin string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/pgporter/pgporter/cmd/pgporter")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building pgporter: %w: %s", err, tail(string(out)))
	}
	return nil
}

// gitCommit returns the checkout's commit, with "-dirty" when it has
// changes, or "" outside a git checkout.
func gitCommit(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty", "--abbrev=12").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
