package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/pgporter/pgporter/internal/config"
	"github.com/pgporter/pgporter/internal/pgtool"
	"github.com/pgporter/pgporter/mover"
)

// TestScript runs the CLI end to end from testdata/script/*.txtar, each
// pgporter a real process (testscript re-executes the test binary).
func TestScript(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 filepath.Join("testdata", "script"),
		RequireExplicitExec: true,
		Condition:           scriptCondition,
		Cmds: map[string]func(*testscript.TestScript, bool, []string){
			"setfromstdout": cmdSetFromStdout,
			"exitcode":      cmdExitCode,
			"freeport":      cmdFreePort,
			"startserve":    cmdStartServe,
			"stopserve":     cmdStopServe,
			"mksession":     cmdMkSession,
			"mkpublication": cmdMkPublication,
			"stdoutjson":    cmdStdoutJSON,
			"httpget":       cmdHTTPGet,
			"holdsender":    cmdHoldSender,
			"releasesender": cmdReleaseSender,
			"pgmajor":       cmdPGMajor,
			"pointdb":       cmdPointDB,
		},
	})
}

// scriptCondition answers the scripts' own conditions: [pgserver], this
// host has the server binaries of a PostgreSQL version (none is started).
func scriptCondition(cond string) (bool, error) {
	switch cond {
	case "pgserver":
		_, err := pgtool.NewestServerBinDir()
		return err == nil, nil
	}
	return false, fmt.Errorf("unknown condition %q", cond)
}

// scriptEnv is the environment a custom command gives the processes it
// starts: the script's, as far as pgporter cares.
func scriptEnv(ts *testscript.TestScript) []string {
	var env []string
	for _, k := range append([]string{"PATH", "HOME", "WORK", "TMPDIR", "GOCOVERDIR", "GORACE", "PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGSYSCONFDIR"}, settingEnvNames()...) {
		if v := ts.Getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// settingEnvNames are the environment variables of every flag (as
// PGPORTER_HOME for --home) and PGPORTER_CONFIG.
var settingEnvNames = sync.OnceValue(func() []string {
	names := []string{"PGPORTER_CONFIG"}
	for _, n := range config.Names(newRootCmd(&globals{})) {
		names = append(names, n.Env)
	}
	return names
})

// setfromstdout VAR [REGEXP] sets VAR to the last line of the previous
// command's stdout, or to the first group of REGEXP's first match in it.
func cmdSetFromStdout(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: setfromstdout VAR [REGEXP]")
	}
	out := strings.TrimRight(ts.ReadFile("stdout"), "\n")
	if out == "" {
		ts.Fatalf("setfromstdout: the previous command printed nothing")
	}
	if len(args) == 2 {
		m := regexp.MustCompile(args[1]).FindStringSubmatch(out)
		if len(m) < 2 {
			ts.Fatalf("setfromstdout: no group of %q in stdout", args[1])
		}
		ts.Setenv(args[0], m[1])
		return
	}
	ts.Setenv(args[0], out[strings.LastIndexByte(out, '\n')+1:])
}

// exitcode [-within DURATION] N PROG ARGS... runs PROG and fails unless it
// exits with N (within DURATION, if given: then it is killed after it); its
// stdout and stderr become the script's, for 'stdout' and 'stderr' checks.
func cmdExitCode(ts *testscript.TestScript, neg bool, args []string) {
	var within time.Duration
	if len(args) >= 2 && args[0] == "-within" {
		d, err := time.ParseDuration(args[1])
		ts.Check(err)
		within, args = d, args[2:]
	}
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exitcode [-within DURATION] N PROG [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	path, err := exec.LookPath(args[1])
	ts.Check(err)
	ctx := context.Background()
	if within > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, within)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, path, args[2:]...)
	cmd.Dir = ts.MkAbs(".")
	cmd.Env = scriptEnv(ts)
	cmd.Stdout, cmd.Stderr = ts.Stdout(), ts.Stderr()
	start := time.Now()
	err = cmd.Run()
	if ctx.Err() != nil {
		ts.Fatalf("%s did not exit within %v", strings.Join(args[1:], " "), within)
	}
	var ee *exec.ExitError
	got := 0
	switch {
	case errors.As(err, &ee):
		got = ee.ExitCode()
	case err != nil:
		ts.Fatalf("running %s: %v", args[1], err)
	}
	if got != want {
		ts.Fatalf("%s exited with %d, want %d", strings.Join(args[1:], " "), got, want)
	}
	if within > 0 {
		ts.Logf("exited with %d in %v", got, time.Since(start).Round(time.Millisecond))
	}
}

// stdoutjson [KEY[=VALUE]]... fails unless the previous command's stdout
// is one JSON object and nothing else (the --json contract), holding each
// KEY, with VALUE if given (compared as fmt prints the decoded value).
func cmdStdoutJSON(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("usage: stdoutjson [KEY[=VALUE]]...")
	}
	out := ts.ReadFile("stdout")
	dec := json.NewDecoder(strings.NewReader(out))
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		ts.Fatalf("stdout is not a JSON object: %v\n%s", err, out)
	}
	if rest := strings.TrimSpace(out[dec.InputOffset():]); rest != "" {
		ts.Fatalf("stdout holds more than one JSON object; after it: %q", rest)
	}
	for _, a := range args {
		k, want, hasWant := strings.Cut(a, "=")
		v, ok := obj[k]
		switch {
		case !ok:
			ts.Fatalf("stdout's object has no %q: %s", k, out)
		case hasWant && fmt.Sprint(v) != want:
			ts.Fatalf("stdout's %q is %v, want %s", k, v, want)
		}
	}
}

// freeport VAR sets VAR to a UDP port on 127.0.0.1 that was free just now.
func cmdFreePort(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: freeport VAR")
	}
	ts.Setenv(args[0], strconv.Itoa(freeUDPPort(ts)))
}

type fataler interface{ Fatalf(string, ...any) }

func freeUDPPort(t fataler) int {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// daemon is a pgporter started in the background by startserve.
type daemon struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when stdout is drained and the process waited for
	err  error         // of cmd.Wait, set before done is closed
}

var (
	daemonsMu sync.Mutex // guards daemons
	daemons   = map[*testscript.TestScript]map[string]*daemon{}
)

var listeningRE = regexp.MustCompile(`^listening on (\S+) as (\S+)$`)

// startserve NAME ARGS... starts 'pgporter ARGS...' (a mover serve) in the
// background, waits until it prints "listening on ADDR as ID" and sets the
// env vars ADDR and ID from that line. Its stderr goes to $WORK/NAME.stderr.
// The process is killed by PID at the end of the script if still running.
func cmdStartServe(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: startserve NAME ARGS...")
	}
	name := args[0]
	path, err := exec.LookPath("pgporter")
	ts.Check(err)
	errf, err := os.Create(ts.MkAbs(name + ".stderr"))
	ts.Check(err)
	cmd := exec.Command(path, args[1:]...)
	cmd.Dir = ts.MkAbs(".")
	cmd.Env = scriptEnv(ts)
	cmd.Stderr = errf
	stdout, err := cmd.StdoutPipe()
	ts.Check(err)
	ts.Check(cmd.Start())
	errf.Close() // the child holds its own descriptor
	d := &daemon{cmd: cmd, done: make(chan struct{})}
	daemonsMu.Lock()
	if daemons[ts] == nil {
		daemons[ts] = map[string]*daemon{}
		ts.Defer(func() {
			daemonsMu.Lock()
			ds := daemons[ts]
			delete(daemons, ts)
			daemonsMu.Unlock()
			for _, d := range ds {
				d.cmd.Process.Kill()
				<-d.done
			}
		})
	}
	if daemons[ts][name] != nil {
		daemonsMu.Unlock()
		cmd.Process.Kill()
		cmd.Wait()
		ts.Fatalf("startserve: %s is running already", name)
	}
	daemons[ts][name] = d
	daemonsMu.Unlock()

	listening := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case listening <- m:
				default:
				}
			}
		}
		d.err = cmd.Wait()
		close(d.done)
	}()
	select {
	case m := <-listening:
		ts.Setenv("ADDR", m[1])
		ts.Setenv("ID", m[2])
		ts.Logf("%s: listening on %s as %s (pid %d)", name, m[1], m[2], cmd.Process.Pid)
	case <-d.done:
		ts.Fatalf("%s exited before listening (%v):\n%s", name, d.err, ts.ReadFile(name+".stderr"))
	}
}

// stopserve NAME sends SIGTERM to the daemon NAME and fails unless it exits
// 0 (a graceful stop) within 30 seconds.
func cmdStopServe(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: stopserve NAME")
	}
	daemonsMu.Lock()
	d := daemons[ts][args[0]]
	delete(daemons[ts], args[0])
	daemonsMu.Unlock()
	if d == nil {
		ts.Fatalf("stopserve: no daemon %s", args[0])
	}
	ts.Check(d.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		ts.Fatalf("%s did not stop within 30s of SIGTERM", args[0])
	}
	if d.err != nil {
		ts.Fatalf("%s: %v\n%s", args[0], d.err, ts.ReadFile(args[0]+".stderr"))
	}
	fmt.Fprintf(ts.Stdout(), "%s stopped\n", args[0])
}

// httpget [-status N] ADDR PATH gets PATH from the HTTP server at ADDR
// (HOST:PORT, or unix:SOCKET as mover serve --metrics takes it) and fails
// unless it answers with status N (200 if not given); the body becomes the
// script's stdout.
func cmdHTTPGet(ts *testscript.TestScript, neg bool, args []string) {
	want := http.StatusOK
	if len(args) >= 2 && args[0] == "-status" {
		n, err := strconv.Atoi(args[1])
		ts.Check(err)
		want, args = n, args[2:]
	}
	if neg || len(args) != 2 {
		ts.Fatalf("usage: httpget [-status N] ADDR PATH")
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	base := "http://" + args[0]
	if sock, ok := strings.CutPrefix(args[0], "unix:"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
		base = "http://unix"
	}
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	resp, err := c.Get(base + args[1])
	ts.Check(err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	ts.Check(err)
	_, _ = ts.Stdout().Write(body)
	if resp.StatusCode != want {
		ts.Fatalf("GET %s: status %d, want %d", args[1], resp.StatusCode, want)
	}
}

var (
	heldMu sync.Mutex // guards held
	held   = map[*testscript.TestScript]map[string]*mover.Sender{}
)

// holdsender HOME opens the sender state under HOME in the test process and
// keeps it open, as a send in progress from that home does, until
// releasesender HOME or the end of the script; it sets HOLDER_PID to the
// process that holds it.
func cmdHoldSender(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: holdsender HOME")
	}
	home := ts.MkAbs(args[0])
	s, err := mover.NewSender(home, nil)
	ts.Check(err)
	heldMu.Lock()
	defer heldMu.Unlock()
	if held[ts] == nil {
		held[ts] = map[string]*mover.Sender{}
		ts.Defer(func() {
			heldMu.Lock()
			defer heldMu.Unlock()
			for _, s := range held[ts] {
				s.Close()
			}
			delete(held, ts)
		})
	}
	held[ts][home] = s
	ts.Setenv("HOLDER_PID", strconv.Itoa(os.Getpid()))
}

// releasesender HOME closes the sender state holdsender HOME opened.
func cmdReleaseSender(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: releasesender HOME")
	}
	home := ts.MkAbs(args[0])
	heldMu.Lock()
	defer heldMu.Unlock()
	s := held[ts][home]
	if s == nil {
		ts.Fatalf("releasesender: %s is not held", args[0])
	}
	delete(held[ts], home)
	ts.Check(s.Close())
}

// pgmajor VAR sets VAR to the newest major version of PostgreSQL whose
// server binaries this host has (a script guards it with [pgserver]).
func cmdPGMajor(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: pgmajor VAR")
	}
	bin, err := pgtool.NewestServerBinDir()
	ts.Check(err)
	ts.Setenv(args[0], filepath.Base(filepath.Dir(bin)))
}

// pointdb REPO NAME [KEY=VALUE]... rewrites the first database of the
// repository's one restore point as a backup from a server records it:
// named NAME, with the given fields of its JSON (collate, ctype,
// locale_provider, icu_locale), and library=PROBIN:EXTENSION adding a C
// library its columns' types need. It stands for a backup of another
// host's server.
func cmdPointDB(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: pointdb REPO NAME [KEY=VALUE]...")
	}
	files, err := filepath.Glob(filepath.Join(ts.MkAbs(args[0]), "points", "rp-*.json"))
	ts.Check(err)
	if len(files) != 1 {
		ts.Fatalf("pointdb: want one restore point in %s, found %d", args[0], len(files))
	}
	var rp map[string]any
	ts.Check(json.Unmarshal([]byte(ts.ReadFile(files[0])), &rp))
	dbs, _ := rp["databases"].([]any)
	if len(dbs) == 0 {
		ts.Fatalf("pointdb: the restore point has no databases")
	}
	db := dbs[0].(map[string]any)
	db["name"] = args[1]
	for _, a := range args[2:] {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			ts.Fatalf("pointdb: %q is not KEY=VALUE", a)
		}
		if k != "library" {
			db[k] = v
			continue
		}
		probin, ext, _ := strings.Cut(v, ":")
		libs, _ := db["c_libraries"].([]any)
		db["c_libraries"] = append(libs, map[string]any{"probin": probin, "extensions": ext, "in_data": true})
	}
	b, err := json.MarshalIndent(rp, "", "  ")
	ts.Check(err)
	ts.Check(os.WriteFile(files[0], b, 0o644))
}
