package main

import (
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime/debug"
	"time"

	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/internal/config"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The Go runtime's soft memory limits of the commands that move data.
// Without a limit the garbage collector lets the heap grow to twice what is
// live before it collects, and a transfer's peak memory followed how long
// it ran rather than what it holds (docs/BENCHMARKS.md, "Issue 16: memory
// at 10x the data"). With one it collects harder near the limit. It is
// soft: a process that needs more gets it, the collector then using up to
// half the CPU.
const (
	// exportMemoryLimit: a local export holds about 110 MB live at most
	// (the mount's chunk cache, the sender's read-ahead, FUSE and stream
	// buffers); 128M kept its peak RSS within 1.2x from a 0.3 to a 3 GB
	// dump.
	exportMemoryLimit = "128M"
	// serveMemoryLimit: a mover serves several peers, each within its
	// --peer-memory budget.
	serveMemoryLimit = "256M"
)

// minMemoryLimit: below it the collector would run nearly all the time
// (a transfer's buffers alone are tens of MiB).
const minMemoryLimit = 64 << 20

// addMemoryLimitFlag registers --memory-limit on f, with default def.
func addMemoryLimitFlag(f *pflag.FlagSet, p *string, def string) {
	f.StringVar(p, "memory-limit", def, "soft limit on this process's Go memory (as GOMEMLIMIT): the garbage collector works harder near it, it never fails an allocation; off for none. Memory of the C zstd library and pebble's caches is outside it. GOMEMLIMIT in the environment replaces the default")
}

// parseMemoryLimit reads --memory-limit: a size of at least 64M, or off
// (no limit: math.MaxInt64, the runtime's own default).
func parseMemoryLimit(v string) (int64, error) {
	switch v {
	case "off", "none", "0":
		return math.MaxInt64, nil
	}
	n, err := bytesize.Parse(v)
	if err != nil {
		return 0, usageError{fmt.Errorf("--memory-limit: %w", err)}
	}
	if n < minMemoryLimit {
		return 0, usagef("--memory-limit %s is below the 64M a transfer needs; use off for no limit", v)
	}
	return n, nil
}

// applyMemoryLimit sets the runtime's soft memory limit from --memory-limit
// of cmd. GOMEMLIMIT in the environment, already applied by the runtime,
// wins over the flag's default and the configuration file, not over the
// flag given or its own variable.
func applyMemoryLimit(cmd *cobra.Command, v string) error {
	n, err := parseMemoryLimit(v)
	if err != nil {
		return err
	}
	if src := config.SourceOf(cmd.Flags().Lookup("memory-limit")); os.Getenv("GOMEMLIMIT") != "" && (src == config.FromDefault || src == config.FromFile) {
		return nil
	}
	debug.SetMemoryLimit(n)
	return nil
}

// pprofEnv names a hidden setting for profiling the memory and CPU of a
// running process: PGPORTER_PPROF=127.0.0.1:6060 serves net/http/pprof
// there (pgporter-bench --memory-profile takes heap profiles at the peak with it).
// Debugging only: it has no authentication.
const pprofEnv = "PGPORTER_PPROF"

// startPprof serves the profiling endpoints on the address in $PGPORTER_PPROF,
// if set, until the process exits, and prints the address on stderr.
func startPprof(stderr io.Writer) error {
	addr := os.Getenv(pprofEnv)
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: %w", pprofEnv, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln) // lives as long as the process: a debugging aid
	fmt.Fprintf(stderr, "pprof on http://%s/debug/pprof/\n", ln.Addr())
	return nil
}
