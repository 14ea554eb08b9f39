package main

import (
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/config"
)

func TestMemoryLimitFlag(t *testing.T) {
	g := &globals{}
	require.Equal(t, "128M", newExportCmd(g).Flags().Lookup("memory-limit").DefValue)
	require.Equal(t, "256M", newMoverServeCmd(g).Flags().Lookup("memory-limit").DefValue)
	for _, def := range []string{exportMemoryLimit, serveMemoryLimit} {
		_, err := parseMemoryLimit(def)
		require.NoError(t, err, "default %s", def)
	}
	for _, tc := range []struct {
		in    string
		want  int64
		usage bool
	}{
		{in: "256M", want: 256 << 20},
		{in: "1G", want: 1 << 30},
		{in: "64M", want: 64 << 20},
		{in: "off", want: math.MaxInt64},
		{in: "0", want: math.MaxInt64},
		{in: "63M", usage: true},
		{in: "lots", usage: true},
		{in: "-1", usage: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			n, err := parseMemoryLimit(tc.in)
			if tc.usage {
				require.Error(t, err)
				require.Equal(t, exitUsage, exitCode(err, io.Discard, slog.New(slog.DiscardHandler)), "a usage error: %v", err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, n)
		})
	}
}

// restoreMemoryLimit puts the test process's memory limit back after a
// test that sets it.
func restoreMemoryLimit(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
}

// TestApplyMemoryLimitFlag: the flag sets the runtime's limit; GOMEMLIMIT in the
// environment (which the runtime has applied already) wins over the
// flag's default, not over the flag given.
func TestApplyMemoryLimitFlag(t *testing.T) {
	restoreMemoryLimit(t)
	newCmd := func(args ...string) (*cobra.Command, string) {
		var v string
		c := &cobra.Command{Use: "x"}
		addMemoryLimitFlag(c.Flags(), &v, "256M")
		require.NoError(t, c.Flags().Parse(args))
		return c, v
	}

	c, v := newCmd()
	require.NoError(t, applyMemoryLimit(c, v))
	require.Equal(t, int64(256<<20), debug.SetMemoryLimit(-1), "the default")
	c, v = newCmd("--memory-limit", "100M")
	require.NoError(t, applyMemoryLimit(c, v))
	require.Equal(t, int64(100<<20), debug.SetMemoryLimit(-1))

	t.Setenv("GOMEMLIMIT", "300MiB")
	debug.SetMemoryLimit(300 << 20) // what the runtime did at start
	c, v = newCmd()
	require.NoError(t, applyMemoryLimit(c, v))
	require.Equal(t, int64(300<<20), debug.SetMemoryLimit(-1), "GOMEMLIMIT wins over the default")
	c, v = newCmd("--memory-limit", "off")
	require.NoError(t, applyMemoryLimit(c, v))
	require.Equal(t, int64(math.MaxInt64), debug.SetMemoryLimit(-1), "the flag given wins over GOMEMLIMIT")
}

var memLimitMetricRE = regexp.MustCompile(`(?m)^go_gc_gomemlimit_bytes (\S+)$`)

// TestServeMemoryLimit: 'mover serve' runs with the runtime's memory limit
// its --memory-limit says, 256 MiB by default (issue 16, step 6.4), as its
// metrics report.
func TestServeMemoryLimit(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "") // the children's default is the flag's
	home := t.TempDir()
	code, _, errs := runCLI(t, "mover", "init", "--home", home)
	require.Equal(t, 0, code, errs)
	for _, tc := range []struct {
		args []string
		want float64
	}{
		{nil, 256 << 20},
		{[]string{"--memory-limit", "96M"}, 96 << 20},
	} {
		sock := filepath.Join(t.TempDir(), "metrics.sock")
		args := append([]string{"--home", home, "mover", "serve", "--listen", "127.0.0.1:0", "--metrics", "unix:" + sock}, tc.args...)
		srv := startProc(t, args...)
		srv.waitListening(t)
		body := unixMetrics(t, sock)
		m := memLimitMetricRE.FindSubmatch(body)
		require.NotNil(t, m, "go_gc_gomemlimit_bytes in:\n%s", body)
		got, err := strconv.ParseFloat(string(m[1]), 64)
		require.NoError(t, err)
		require.Equal(t, tc.want, got, "serve %v", tc.args)
		require.NoError(t, srv.cmd.Process.Signal(os.Interrupt))
		require.Equal(t, 0, srv.wait(t), srv.stderr.String())
	}
}

// TestMemoryLimitFromConfig: GOMEMLIMIT is an environment variable, so it
// wins over --memory-limit from the configuration file, and loses to the
// flag's own variable (flags, then environment, then the file).
func TestMemoryLimitFromConfig(t *testing.T) {
	restoreMemoryLimit(t)
	path := filepath.Join(t.TempDir(), "pgporter.toml")
	require.NoError(t, os.WriteFile(path, []byte("memory-limit = \"100M\"\n"), 0o600))
	t.Setenv("GOMEMLIMIT", "300MiB")
	for _, tc := range []struct {
		env  string
		want int64
	}{
		{"", 300 << 20},
		{"200M", 200 << 20},
	} {
		debug.SetMemoryLimit(300 << 20) // what the runtime did at start
		var v string
		c := &cobra.Command{Use: "x"}
		addMemoryLimitFlag(c.Flags(), &v, "256M")
		require.NoError(t, c.Flags().Parse(nil))
		f, err := config.Load(path, true, c)
		require.NoError(t, err)
		r := &config.Resolver{File: f, Getenv: func(k string) string {
			if k == "PGPORTER_MEMORY_LIMIT" {
				return tc.env
			}
			return ""
		}}
		_, err = r.Apply(c)
		require.NoError(t, err)
		require.NoError(t, applyMemoryLimit(c, v))
		require.Equal(t, tc.want, debug.SetMemoryLimit(-1), "PGPORTER_MEMORY_LIMIT=%q", tc.env)
	}
}
