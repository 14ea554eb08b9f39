package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/orchestrator"
	"github.com/pgporter/pgporter/staging"
	"github.com/stretchr/testify/require"
)

// These tests run 'pgporter export' across four test hosts (network
// namespaces behind a router, see testsupport.NewNetwork): the repository,
// staging and target movers are separate 'pgporter mover serve' processes,
// each on a host of its own, and the orchestrator runs the export on the
// fourth. The hosts share this machine's filesystem, so the test reads the
// target's directory and the staging mover's journal directly.

// netnsExportTables are the tables whose rows a restored dump must hold as
// the source does.
var netnsExportTables = map[string][]string{
	"shop": {"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"},
	"crm":  {`"Clients"`},
}

// netnsExport is the four hosts with their movers running.
type netnsExport struct {
	c                                 *testsupport.Cluster
	net                               *testsupport.Network
	repoH, stagingH, targetH, orchH   *testsupport.Host
	orchHome, stagingHome             string
	repoSpec, stagingSpec, targetSpec string
	repoArgs, stagingArgs, targetArgs []string // the movers' command lines, to restart them
	repo, staging, target             *proc
	root                              string // the target mover's --root
	to, stagingDir                    string // to is in root
}

// newNetnsExport sets up the hosts and movers. extraSQL, if not empty,
// runs in shop before the restore point the export reads is taken;
// targetFlags go to the target mover's command line.
func newNetnsExport(t *testing.T, extraSQL string, targetFlags ...string) *netnsExport {
	t.Helper()
	start := time.Now()
	c, repo := exportFixture(t)
	if extraSQL != "" {
		c.Exec(t, "shop", extraSQL)
		c.Stop(t)
		code, _, errs := runCLI(t, "backup", "--repo", repo, "--pgdata", c.DataDir)
		require.Equal(t, 0, code, errs)
		c.Start(t)
	}
	n := testsupport.NewNetwork(t)
	e := &netnsExport{c: c, net: n,
		repoH: n.AddHost(t, "repo"), stagingH: n.AddHost(t, "staging"), targetH: n.AddHost(t, "target"), orchH: n.AddHost(t, "orch"),
		orchHome: filepath.Join(t.TempDir(), "orch"), stagingHome: filepath.Join(t.TempDir(), "staging"),
		stagingDir: cliStagingDir(t),
	}
	root := t.TempDir()
	e.root, e.to = root, filepath.Join(root, "out")
	repoHome, targetHome := filepath.Join(t.TempDir(), "repo"), filepath.Join(t.TempDir(), "target")
	ids := map[string]mover.PeerID{}
	for _, home := range []string{repoHome, targetHome, e.stagingHome, e.orchHome} {
		id, _, err := mover.InitIdentity(home)
		require.NoError(t, err)
		ids[home] = id.ID
	}
	// The trust the export's help asks for, set up as a user would.
	for _, tr := range []struct{ home, peer, allow string }{
		{e.stagingHome, ids[e.orchHome].String(), "orchestrate"},
		{repoHome, ids[e.stagingHome].String(), "read"},
		{targetHome, ids[e.stagingHome].String(), "send"},
	} {
		code, _, errs := runCLI(t, "--home", tr.home, "mover", "trust", tr.peer, "--allow", tr.allow)
		require.Equal(t, 0, code, errs)
	}

	listen := func(h *testsupport.Host) string { return h.AddrPort(netnsMoverPort).String() }
	spec := func(h *testsupport.Host, home string) string { return listen(h) + "#" + ids[home].String() }
	e.repoSpec, e.stagingSpec, e.targetSpec = spec(e.repoH, repoHome), spec(e.stagingH, e.stagingHome), spec(e.targetH, targetHome)
	e.repoArgs = []string{"--home", repoHome, "mover", "serve", "--listen", listen(e.repoH), "--repo", repo}
	// The staging host decides where it stages dumps, not the orchestrator.
	e.stagingArgs = []string{"--home", e.stagingHome, "mover", "serve", "--listen", listen(e.stagingH), "--staging-dir", e.stagingDir}
	e.targetArgs = []string{"--home", targetHome, "mover", "serve", "--listen", listen(e.targetH), "--root", root, "--metrics", netnsMetricsAddr}
	e.targetArgs = append(e.targetArgs, targetFlags...)
	e.repo = startMover(t, e.repoH, e.repoArgs...)
	e.target = startMover(t, e.targetH, e.targetArgs...)
	e.staging = startMover(t, e.stagingH, e.stagingArgs...)
	require.Equal(t, listen(e.repoH), e.repo.waitListening(t))
	require.Equal(t, listen(e.targetH), e.target.waitListening(t))
	require.Equal(t, listen(e.stagingH), e.staging.waitListening(t))
	t.Logf("setup (cluster, backup, four hosts, three movers): %.1fs", time.Since(start).Seconds())
	return e
}

// startMover starts 'pgporter args...' inside h as startInHost does, but
// without PGPASSWORD: only the orchestrator has the password, and the
// staging mover must get it from the job.
func startMover(t *testing.T, h *testsupport.Host, args ...string) *proc {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := h.Command(context.Background(), exe, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PGPASSWORD=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, testMainEnv+"=1")
	return startCmd(t, cmd)
}

// export starts 'pgporter export' of shop and crm on the orchestrator's
// host, with extra flags. It inherits PGPASSWORD from the test.
func (e *netnsExport) export(t *testing.T, flags ...string) *proc {
	t.Helper()
	return e.exportTo(t, e.to, flags...)
}

// exportTo is export into another directory of the target's root.
func (e *netnsExport) exportTo(t *testing.T, to string, flags ...string) *proc {
	t.Helper()
	args := []string{"--home", e.orchHome, "export", "--repo-peer", e.repoSpec, "--staging", e.stagingSpec, "--target", e.targetSpec,
		"--db", "shop", "--db", "crm", "--to", to, "--json"}
	return startInHost(t, e.orchH, append(args, flags...)...)
}

// restartMover starts the mover of role ("repository", "staging" or
// "target") again, with the same home and address, once it has exited.
func (e *netnsExport) restartMover(t *testing.T, role string) *proc {
	t.Helper()
	var h *testsupport.Host
	var args []string
	var p **proc
	switch role {
	case "repository":
		h, args, p = e.repoH, e.repoArgs, &e.repo
	case "staging":
		h, args, p = e.stagingH, e.stagingArgs, &e.staging
	case "target":
		h, args, p = e.targetH, e.targetArgs, &e.target
	default:
		t.Fatalf("no mover %q", role)
	}
	select {
	case <-(*p).done:
	default:
		// Killed while reading its own FUSE mount, it may be stuck exiting
		// (see proc.kill): the new mover's reclaim must free it.
		if !staging.Dying((*p).cmd.Process.Pid) {
			t.Fatalf("the %s mover still runs", role)
		}
	}
	*p = startMover(t, h, args...)
	require.Equal(t, h.AddrPort(netnsMoverPort).String(), (*p).waitListening(t), "the restarted %s mover listens elsewhere", role)
	return *p
}

// logs returns the output of the export and of the movers, for failures.
func (e *netnsExport) logs(p *proc) string {
	return "export:\n" + p.stderr.String() + "\nrepository mover:\n" + e.repo.stderr.String() +
		"\nstaging mover:\n" + e.staging.stderr.String() + "\ntarget mover:\n" + e.target.stderr.String()
}

// waitStderr waits until p's stderr contains s, failing if p exits first.
func (e *netnsExport) waitStderr(t *testing.T, p *proc, s string) {
	t.Helper()
	deadline := time.After(waitTimeout)
	for !strings.Contains(p.stderr.String(), s) {
		select {
		case <-p.done:
			t.Fatalf("%v exited (%v) before printing %q\n%s", p.cmd.Args[5:], p.err, s, e.logs(p))
		case <-deadline:
			t.Fatalf("%q not printed within %v\n%s", s, waitTimeout, e.logs(p))
		case <-time.After(5 * time.Millisecond): // polling another process's output
		}
	}
}

// finish waits for p (an export or a retry) to succeed and checks that
// both dumps are at the target, verified.
func (e *netnsExport) finish(t *testing.T, p *proc) exportJSON {
	t.Helper()
	return e.finishTo(t, p, e.to)
}

// finishTo is finish for an export into to.
func (e *netnsExport) finishTo(t *testing.T, p *proc, to string) exportJSON {
	t.Helper()
	return e.finishRun(t, p, to, false)
}

// finishRun is finishTo; after a crash (retried), a database's transfer
// may have sent nothing: the killed run had committed it already.
func (e *netnsExport) finishRun(t *testing.T, p *proc, to string, retried bool) exportJSON {
	t.Helper()
	require.Equal(t, 0, p.wait(t), e.logs(p))
	var res exportJSON
	require.NoError(t, json.Unmarshal([]byte(p.lastLine()), &res), "stdout's last line: %q\n%s", p.lastLine(), e.logs(p))
	require.Equal(t, "done", res.State)
	require.Len(t, res.Databases, 2)
	for _, db := range res.Databases {
		require.Equal(t, filepath.Join(to, db.Name), db.Path)
		require.Positive(t, db.Bytes)
		if !retried {
			require.Positive(t, db.WireBytes)
		}
		rep, err := mover.Verify(context.Background(), db.Path)
		require.NoError(t, err)
		require.Empty(t, rep.Problems)
		t.Logf("%s: %d bytes, %d on the wire, %.1fs", db.Name, db.Bytes, db.WireBytes, db.Seconds)
	}
	entries, err := os.ReadDir(to)
	require.NoError(t, err)
	require.Len(t, entries, 2, "only the two dumps; no partial directories")
	return res
}

// restoreAndCompare restores each dump into a new database of the source
// cluster and compares the tables' rows with the source's.
func (e *netnsExport) restoreAndCompare(t *testing.T, suffix string) {
	t.Helper()
	e.restoreAndCompareFrom(t, e.to, suffix)
}

// restoreAndCompareFrom is restoreAndCompare for the dumps in to.
func (e *netnsExport) restoreAndCompareFrom(t *testing.T, to, suffix string) {
	t.Helper()
	for db, tables := range netnsExportTables {
		name := db + "_restored_" + suffix
		e.c.CreateDB(t, name)
		out, err := e.c.ClientCmd(context.Background(), name, "pg_restore", "--no-owner", "-d", name, filepath.Join(to, db)).CombinedOutput()
		require.NoError(t, err, "pg_restore of %s: %s", db, out)
		for _, tbl := range tables {
			q := "SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM " + tbl + " t"
			want := e.c.Query(t, db, q)
			if tbl != "pgbench_history" { // pgbench -i leaves it empty
				require.NotEqual(t, "0", strings.Fields(want)[0], "%s.%s is empty in the source", db, tbl)
			}
			require.Equal(t, want, e.c.Query(t, name, q), "%s.%s restored differs from the source", db, tbl)
		}
	}
}

func TestNetnsExport(t *testing.T) {
	e := newNetnsExport(t, "")
	start := time.Now()
	res := e.finish(t, e.export(t))
	t.Logf("export %s: %.1fs", res.Session, time.Since(start).Seconds())
	e.restoreAndCompare(t, "netns")

	// The staging mover ran the session under the same ID and cleaned up.
	sj, err := orchestrator.OpenJournal(e.stagingHome)
	require.NoError(t, err)
	ss, err := sj.Get(res.Session)
	require.NoError(t, err)
	require.Equal(t, orchestrator.StateDone, ss.State)
	require.Zero(t, ss.Resources.InstancePID)
	require.NoDirExists(t, ss.SessionDir())
	requireNoMount(t, e.staging, res.Session)
}

// TestNetnsExportStagingKilled kills the staging mover with SIGKILL while it
// dumps: the export fails; once the mover is back (same home, same
// address), 'pgporter retry' on the orchestrator completes the session, and
// nothing of the killed run is left: its instance is stopped and its mount
// is gone with every process of its mount namespace.
//
// Known: the export notices the death only when its job connection's QUIC
// idle timeout (30 s) expires, which is most of this test's time.
func TestNetnsExportStagingKilled(t *testing.T) {
	e := newNetnsExport(t, "")
	p := e.export(t)
	e.waitStderr(t, p, "• dump:")
	m := sessionLineRE.FindStringSubmatch(p.stderr.String())
	require.NotNil(t, m, p.stderr.String())
	id := m[1]

	// 'ip netns exec' gives the mover a mount namespace of its own: its FUSE
	// mount, and the instance reading it, live there.
	oldPID := e.staging.cmd.Process.Pid
	mnt, err := os.Stat("/proc/" + strconv.Itoa(oldPID) + "/ns/mnt")
	require.NoError(t, err)
	oldNS := mnt.Sys().(*syscall.Stat_t)
	info, err := os.ReadFile("/proc/" + strconv.Itoa(oldPID) + "/mountinfo")
	require.NoError(t, err)
	require.Contains(t, string(info), "pgporter-"+id, "the staging mover has no mount for the session while it dumps")

	killed := time.Now()
	e.staging.kill(t)
	// What still runs there (the instance, pg_dump) keeps the namespace, and
	// so its inode number, alive: the listing is exact.
	var orphans []procRef
	for _, pid := range pidsInMountNS(oldNS.Dev, oldNS.Ino) {
		if r, ok := newProcRef(pid); ok {
			orphans = append(orphans, r)
		}
	}
	sj, err := orchestrator.OpenJournal(e.stagingHome)
	require.NoError(t, err)
	before, err := sj.Get(id)
	require.NoError(t, err)
	pid := before.Resources.InstancePID
	require.Positive(t, pid, "the staging journal has no instance for a session that was dumping")
	t.Logf("staging mover killed at %q; its instance (pid %d) running: %v; %d processes left in its mount namespace", lastStderrLine(p), pid, running(pid), len(orphans))

	require.NotEqual(t, 0, p.wait(t), "the export succeeded although its staging mover was killed\n%s", e.logs(p))
	t.Logf("the export failed %.1fs after the kill: %s", time.Since(killed).Seconds(), lastStderrLine(p))
	var failed exportJSON
	require.NoError(t, json.Unmarshal([]byte(p.lastLine()), &failed), "stdout's last line: %q", p.lastLine())
	require.Equal(t, id, failed.Session)
	require.Equal(t, "failed", failed.State)

	e.restartMover(t, "staging")
	start := time.Now()
	r := startInHost(t, e.orchH, "--home", e.orchHome, "retry", id, "--json")
	res := e.finish(t, r)
	require.Equal(t, id, res.Session)
	t.Logf("retry: %.1fs", time.Since(start).Seconds())
	e.restoreAndCompare(t, "retried")

	require.False(t, running(pid), "the killed run's instance (pid %d) must be stopped", pid)
	requireNoMount(t, e.staging, id)
	// Nothing of the killed mover's mount namespace runs any more, so the
	// namespace and the FUSE mount in it are gone.
	deadline := time.Now().Add(waitTimeout)
	for {
		var still []procRef
		for _, r := range orphans {
			if r.alive() {
				still = append(still, r)
			}
		}
		if len(still) == 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "processes %v of the killed staging mover's mount namespace still run", still)
		time.Sleep(10 * time.Millisecond) // poll interval while the kernel reaps them
	}
	after, err := sj.Get(id)
	require.NoError(t, err)
	require.Equal(t, orchestrator.StateDone, after.State)
	require.Zero(t, after.Resources.InstancePID)
	require.Empty(t, after.Resources.Mountpoint)
}

// requireNoMount checks that neither this process nor the staging mover p
// sees a mount of session id.
func requireNoMount(t *testing.T, p *proc, id string) {
	t.Helper()
	for _, f := range []string{"/proc/self/mountinfo", "/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/mountinfo"} {
		info, err := os.ReadFile(f)
		require.NoError(t, err)
		require.NotContains(t, string(info), "pgporter-"+id, f)
	}
}

// procRef names a process by PID and start time, so that a PID reused
// later is not taken for it.
type procRef struct {
	pid   int
	start string // field 22 of /proc/PID/stat, in clock ticks since boot
}

func newProcRef(pid int) (procRef, bool) {
	start, ok := procStartTime(pid)
	return procRef{pid, start}, ok
}

// alive reports whether the process still runs (a zombie does not).
func (r procRef) alive() bool {
	start, ok := procStartTime(r.pid)
	return ok && start == r.start
}

// procStartTime returns pid's start time, or false if it is not a live
// process.
func procStartTime(pid int) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", false
	}
	f := strings.Fields(s[i+1:]) // from field 3, the state
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return "", false
	}
	return f[19], true
}

// pidsInMountNS lists the live processes whose mount namespace is the nsfs
// inode (dev, ino); a zombie has none.
func pidsInMountNS(dev, ino uint64) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name()+"/ns/mnt", &st) == nil && st.Dev == dev && st.Ino == ino {
			pids = append(pids, pid)
		}
	}
	return pids
}

func lastStderrLine(p *proc) string {
	return lastLine(strings.TrimRight(p.stderr.String(), "\n"))
}

// netnsOutageSQL adds to shop a table of random hex, which zstd shrinks
// only about twice: at 5 MiB/s the transfer then lasts several seconds.
const netnsOutageSQL = `CREATE TABLE noise (id int, h text);
INSERT INTO noise SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text)
  FROM generate_series(1, 300000) g;`

// TestNetnsExportTargetOutage takes the target's link down for a few
// seconds in the middle of a transfer: the export rides it out and
// completes without a retry.
func TestNetnsExportTargetOutage(t *testing.T) {
	const (
		outage  = 3 * time.Second
		trigger = 8 << 20 // durable bytes at the target: past the small tables, far from the ~60 MB of shop
	)
	e := newNetnsExport(t, netnsOutageSQL)
	tr := &http.Transport{DialContext: e.targetH.DialContext, DisableKeepAlives: true}
	metrics := &netnsSetup{metricsClient: &http.Client{Transport: tr, Timeout: 5 * time.Second}, metricsRequest: "http://" + netnsMetricsAddr + "/metrics"}
	start := time.Now()
	p := e.export(t, "--bwlimit", "5M")

	deadline := time.After(waitTimeout)
	for {
		d, err := metrics.durable()
		require.NoError(t, err)
		if d >= trigger {
			t.Logf("link down with %d bytes durable at the target, %.1fs into the export", d, time.Since(start).Seconds())
			break
		}
		select {
		case <-p.done:
			t.Fatalf("the export exited (%v) before %d bytes were durable\n%s", p.err, trigger, e.logs(p))
		case <-deadline:
			t.Fatalf("%d bytes were not durable within %v\n%s", trigger, waitTimeout, e.logs(p))
		case <-time.After(20 * time.Millisecond): // poll interval
		}
	}
	require.NoError(t, e.net.SetLinkDown(e.targetH))
	select {
	case <-p.done:
		e.net.SetLinkUp(e.targetH)
		t.Fatalf("the export exited (%v) during the outage\n%s", p.err, e.logs(p))
	case <-time.After(outage): // the outage's length, not a wait for an event
	}
	require.NoDirExists(t, filepath.Join(e.to, "shop"), "shop was delivered before the link went down")
	require.NoError(t, e.net.SetLinkUp(e.targetH))
	d, err := metrics.durable()
	require.NoError(t, err)
	t.Logf("link up with %d bytes durable", d)

	res := e.finish(t, p)
	t.Logf("export %s: %.1fs", res.Session, time.Since(start).Seconds())
	j, err := orchestrator.OpenJournal(e.orchHome)
	require.NoError(t, err)
	s, err := j.Get(res.Session)
	require.NoError(t, err)
	st := s.Step("transfer:shop")
	require.Equal(t, 1, st.Attempts, "the transfer step ran more than once")
	require.GreaterOrEqual(t, st.Seconds(), outage.Seconds())
	e.restoreAndCompare(t, "outage")
}
