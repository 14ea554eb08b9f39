package main

import (
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/orchestrator"
	"github.com/stretchr/testify/require"
)

// Link faults on the four-host export of netns_export_test.go: the target's
// link is cut or degraded while the staging mover sends it the dumps, and
// the export must complete by itself. The emulated profiles come from
// testsupport's link emulator (Network.SetLinkProfile, Network.Outage).
//
// PGPORTER_SOAK=1 adds outage windows of 1 s to 60 s (TestNetnsLinkSoak).

// linkWaitTimeout bounds an export that crosses a degraded link, which
// lasts longer than waitTimeout allows.
const linkWaitTimeout = 5 * time.Minute

// targetMetrics reads the target mover's metrics from inside its host.
func (e *netnsExport) targetMetrics() *netnsSetup {
	tr := &http.Transport{DialContext: e.targetH.DialContext, DisableKeepAlives: true}
	return &netnsSetup{metricsClient: &http.Client{Transport: tr, Timeout: 5 * time.Second}, metricsRequest: "http://" + netnsMetricsAddr + "/metrics"}
}

// waitDurable waits until the target holds at least n durable bytes,
// failing if the export p exits first.
func (e *netnsExport) waitDurable(t *testing.T, p *proc, m *netnsSetup, n int64) int64 {
	t.Helper()
	deadline := time.After(linkWaitTimeout)
	for {
		d, err := m.durable()
		require.NoError(t, err)
		if d >= n {
			return d
		}
		select {
		case <-p.done:
			t.Fatalf("the export exited (%v) before %d bytes were durable\n%s", p.err, n, e.logs(p))
		case <-deadline:
			t.Fatalf("%d bytes were not durable within %v\n%s", n, linkWaitTimeout, e.logs(p))
		case <-time.After(20 * time.Millisecond): // poll interval
		}
	}
}

// waitExit waits up to d for p to exit, so that finish (whose wait is
// shorter) sees it done.
func (e *netnsExport) waitExit(t *testing.T, p *proc, d time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("the export did not finish within %v\n%s", d, e.logs(p))
	}
}

// ridesOut checks that the export ran its transfer of shop once: no
// session-level retry, let alone a manual one.
func (e *netnsExport) ridesOut(t *testing.T, session string) *orchestrator.Step {
	t.Helper()
	j, err := orchestrator.OpenJournal(e.orchHome)
	require.NoError(t, err)
	s, err := j.Get(session)
	require.NoError(t, err)
	st := s.Step("transfer:shop")
	require.Equal(t, 1, st.Attempts, "the transfer step ran more than once")
	return st
}

// TestNetnsLinkCut30s is issue 6's network cut: the target's link (its
// veth, at the router) goes down for 30 seconds in the middle of the
// transfer of shop; the export rides it out without any retry by hand and
// the dumps verify and restore.
func TestNetnsLinkCut30s(t *testing.T) {
	const (
		cut     = 30 * time.Second
		trigger = 8 << 20 // durable bytes at the target: past the small tables, far from the end of shop
	)
	e := newNetnsExport(t, netnsOutageSQL)
	m := e.targetMetrics()
	start := time.Now()
	p := e.export(t, "--bwlimit", "5M")
	d := e.waitDurable(t, p, m, trigger)
	t.Logf("link down with %d bytes durable at the target, %.1fs into the export", d, time.Since(start).Seconds())
	require.NoError(t, e.net.SetLinkDown(e.targetH))
	// What the target received before the cut becomes durable at its next
	// sync (every second): the durable figure is taken once that has passed.
	const settle = 3 * time.Second
	during := func(d time.Duration) {
		select {
		case <-p.done:
			e.net.SetLinkUp(e.targetH)
			t.Fatalf("the export exited (%v) during the cut\n%s", p.err, e.logs(p))
		case <-time.After(d): // the cut's length, not a wait for an event
		}
	}
	during(settle)
	d1, err := m.durable()
	require.NoError(t, err)
	during(cut - settle)
	require.NoDirExists(t, filepath.Join(e.to, "shop"), "shop was delivered before the link went down")
	d2, err := m.durable()
	require.NoError(t, err)
	require.Equal(t, d1, d2, "bytes became durable at the target while its link was down")
	require.NoError(t, e.net.SetLinkUp(e.targetH))
	up := time.Now()

	e.waitExit(t, p, linkWaitTimeout)
	res := e.finish(t, p)
	st := e.ridesOut(t, res.Session)
	t.Logf("export %s: %.1fs in all, %.1fs after the link came back; transfer of shop %.1fs", res.Session, time.Since(start).Seconds(), time.Since(up).Seconds(), st.Seconds())
	require.GreaterOrEqual(t, st.Seconds(), cut.Seconds())
	e.restoreAndCompare(t, "cut")
}

// netnsNoiseSQL adds to shop a table of rows random hex rows, 128 bytes
// each, which zstd halves (pgbench's tables shrink to almost nothing):
// about 66 bytes on the wire per row.
func netnsNoiseSQL(rows int) string {
	return `CREATE TABLE noise (id int, h text);
INSERT INTO noise SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text)
  FROM generate_series(1, ` + strconv.Itoa(rows) + `) g;`
}

// TestNetnsLinkLossy sends the dumps over a poor link: 5% loss, 100 ms of
// delay each way (a 200 ms round trip) with 20 ms of jitter, and 1% of the
// packets reordered, in both directions of the target's link; about 0.6 MB
// go on the wire. The soak profile does it with 200 ms each way and 2 MB.
//
// Known: at 5% loss QUIC's congestion control (as TCP's) keeps the rate at
// a few tens of KB/s; the figures are in the log.
func TestNetnsLinkLossy(t *testing.T) {
	t.Run("short", func(t *testing.T) { lossyExport(t, 8000, 100*time.Millisecond, 20*time.Millisecond) })
	t.Run("soak", func(t *testing.T) {
		if os.Getenv("PGPORTER_SOAK") != "1" {
			t.Skip("soak profile: set PGPORTER_SOAK=1")
		}
		lossyExport(t, 30000, 200*time.Millisecond, 50*time.Millisecond)
	})
}

func lossyExport(t *testing.T, rows int, delay, jitter time.Duration) {
	e := newNetnsExport(t, netnsNoiseSQL(rows))
	prof := testsupport.LinkProfile{Delay: delay, Jitter: jitter, Loss: 0.05, Reorder: 0.01, Seed: 6}
	require.NoError(t, e.net.SetLinkProfile(e.targetH, prof))
	start := time.Now()
	p := e.export(t)
	e.waitExit(t, p, linkWaitTimeout)
	res := e.finish(t, p)
	st := e.ridesOut(t, res.Session)
	ls := e.net.LinkStats(e.targetH)
	t.Logf("export %s over %+v: %.1fs; transfer of shop %.1fs", res.Session, prof, time.Since(start).Seconds(), st.Seconds())
	t.Logf("to the target: %+v", ls.ToHost)
	t.Logf("from the target: %+v", ls.FromHost)
	// The profile was in the path: packets were lost and reordered.
	require.Positive(t, ls.ToHost.Lost)
	require.Positive(t, ls.FromHost.Lost)
	require.Positive(t, ls.ToHost.Reordered)
	require.InDelta(t, 0.05, float64(ls.ToHost.Lost)/float64(ls.ToHost.Packets), 0.025)
	e.restoreAndCompare(t, "lossy")
}

// TestNetnsLinkSoak (PGPORTER_SOAK=1 only) runs one export per outage
// window, each on hosts of its own (a second export to the same target
// would send almost nothing: the target has the chunks), each cut by a
// silent outage of the target's link (Network.Outage: packets dropped,
// nobody told) of 1 s to 60 s, started once a point of the transfer chosen
// by a seeded generator (PGPORTER_SOAK_SEED, default 1) is durable. Each
// export must complete by itself and its dumps verify and restore.
func TestNetnsLinkSoak(t *testing.T) {
	if os.Getenv("PGPORTER_SOAK") != "1" {
		t.Skip("soak profile: set PGPORTER_SOAK=1")
	}
	seed := uint64(1)
	if s := os.Getenv("PGPORTER_SOAK_SEED"); s != "" {
		var err error
		seed, err = strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "PGPORTER_SOAK_SEED")
	}
	rng := rand.New(rand.NewPCG(seed, 0))
	for _, w := range []time.Duration{1 * time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second, 45 * time.Second, 60 * time.Second} {
		// Past the small tables, before the end of shop's ~60 MB.
		trigger := int64(1<<20 + rng.IntN(40<<20))
		t.Run(w.String(), func(t *testing.T) {
			e := newNetnsExport(t, netnsOutageSQL)
			m := e.targetMetrics()
			start := time.Now()
			p := e.export(t, "--bwlimit", "5M")
			d := e.waitDurable(t, p, m, trigger)
			require.NoError(t, e.net.Outage(e.targetH, w))
			select {
			case <-p.done:
				t.Fatalf("the export exited (%v) during a %v outage\n%s", p.err, w, e.logs(p))
			case <-time.After(w): // the window's length, not a wait for an event
			}
			e.waitExit(t, p, linkWaitTimeout)
			res := e.finish(t, p)
			st := e.ridesOut(t, res.Session)
			ls := e.net.LinkStats(e.targetH)
			t.Logf("outage %v with %d bytes durable (trigger %d): export %.1fs in all, transfer of shop %.1fs; %d packets dropped to the target, %d from it",
				w, d, trigger, time.Since(start).Seconds(), st.Seconds(), ls.ToHost.Outage, ls.FromHost.Outage)
			require.Positive(t, ls.ToHost.Outage+ls.FromHost.Outage, "the outage dropped nothing")
			e.restoreAndCompare(t, "soak")
		})
	}
}
