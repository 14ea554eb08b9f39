package mover

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgporter/pgporter/chunkstore"
)

// repoMetricsCacheFor is how long the mover's reading of its repository
// answers scrapes.
const repoMetricsCacheFor = 5 * time.Second

// RepoCollectorOptions configure NewRepoCollector. The zero value reads
// the repository at every collection and logs nothing.
type RepoCollectorOptions struct {
	// CacheFor is how long a reading of the repository answers further
	// collections: scrapes that come often (or from several Prometheus
	// servers) then cost one reading. 0: none is kept.
	CacheFor time.Duration
	Log      *slog.Logger
	Now      func() time.Time // the clock; default time.Now
	// PasswordFile holds the passphrase of an encrypted repository; "":
	// chunkstore's default ($PGPORTER_REPO_PASSWORD).
	PasswordFile string
}

// RepoCollector reports the health of a backup repository as Prometheus
// series, read from the repository's files when collected
// (chunkstore.ReadHealth): its restore points, its WAL archive, its size,
// and the recorded outcomes of backup, check, forget, prune and wal-push.
// Every series has the label repo, the repository's directory, so that
// several repositories' series can sit side by side (node_exporter's
// textfile collector merges the files of a directory). Times are Unix
// timestamps, never ages: an age written into a textfile would stop aging.
type RepoCollector struct {
	dir string
	o   RepoCollectorOptions

	up, points, lastBackup, size                    *prometheus.Desc
	walLast, walBehind, walUntil, walGap            *prometheus.Desc
	runTime, runOK, runSecs, okTime, failTime, fail *prometheus.Desc

	mu     sync.Mutex // guards h, err, at, logged; held while reading, so that concurrent collections share one reading
	h      *chunkstore.Health
	err    error
	at     time.Time // of the last reading; zero before the first
	logged string    // the error last logged, not logged again while it lasts
}

var _ prometheus.Collector = (*RepoCollector)(nil)

// NewRepoCollector returns a collector of the repository in dir. It reads
// nothing until it is collected.
func NewRepoCollector(dir string, o RepoCollectorOptions) *RepoCollector {
	if abs, err := chunkstore.AbsRepo(dir); err == nil {
		dir = abs
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c := &RepoCollector{dir: dir, o: o}
	labels := prometheus.Labels{"repo": dir}
	d := func(name, help string, vars ...string) *prometheus.Desc {
		return prometheus.NewDesc("pgporter_repo_"+name, help, vars, labels)
	}
	c.up = d("up", "1 if the repository's restore points, WAL archive and status files could be read; 0 if not (the other pgporter_repo_ series are then missing, and the error is logged).")
	c.points = d("restore_points", "Restore points in the repository.")
	c.lastBackup = d("last_backup_timestamp_seconds", "Time of the newest restore point (when its backup started; Unix time); 0 without restore points.")
	c.size = d("size_bytes", "Bytes of every file under the repository's directory, or of every object under its prefix in a bucket (listed whole at each reading).")
	c.walLast = d("wal_last_archived_timestamp_seconds", "When the newest WAL segment (the greatest name) was archived by wal-push (Unix time); 0 while the archive holds none.")
	c.walBehind = d("wal_archive_behind_backup_bytes", "Bytes of WAL from the end of the newest archived segment to the end of the newest online backup: WAL the archive has not received yet, which a point-in-time export from that backup needs; 0 once the archive has reached it. Missing without an online backup or with an empty archive.")
	c.walUntil = d("wal_recoverable_until_timestamp_seconds", "How far the archive takes the newest online backup, following the latest timeline as restore-points shows it: when the last segment of the unbroken run of archived segments from the backup's end was archived (Unix time); 0 while it cannot take the backup past its end (the segment the backup ends in is missing, or the latest timeline branched off before it). Missing without an online backup or with an empty archive.")
	c.walGap = d("wal_archive_gap", "1 if the archive holds segments of the newest online backup's timeline past a missing one (an export cannot replay past the gap), else 0. Missing without an online backup or with an empty archive.")
	c.runTime = d("last_run_timestamp_seconds", "When the last recorded run of the operation ended (Unix time). wal-push records its failures, and the first success after one, only. Missing until a run is recorded.", "op")
	c.runOK = d("last_run_success", "1 if the last recorded run of the operation succeeded, 0 if it failed (check: the repository has problems, or the check could not run). Missing until a run is recorded.", "op")
	c.runSecs = d("last_run_duration_seconds", "How long the last recorded run of the operation took. Missing until a run is recorded.", "op")
	c.okTime = d("last_success_timestamp_seconds", "When a run of the operation last succeeded (Unix time); 0 if none was recorded.", "op")
	c.failTime = d("last_failure_timestamp_seconds", "When a run of the operation last failed (Unix time); 0 if none was recorded.", "op")
	c.fail = d("failures_total", "Failed runs of the operation recorded in the repository.", "op")
	return c
}

// Describe sends every series' description.
func (c *RepoCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.points, c.lastBackup, c.size, c.walLast, c.walBehind, c.walUntil, c.walGap,
		c.runTime, c.runOK, c.runSecs, c.okTime, c.failTime, c.fail} {
		ch <- d
	}
}

// repoHealthTimeout bounds one reading of a repository's health.
const repoHealthTimeout = 20 * time.Second

// health returns the repository's health, read anew unless the last
// reading is younger than CacheFor.
func (c *RepoCollector) health() (*chunkstore.Health, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.o.Now()
	if c.at.IsZero() || now.Sub(c.at) >= c.o.CacheFor || now.Before(c.at) {
		// A scrape has no context; an object store that does not answer
		// must not hold it for the retries' two minutes.
		ctx := context.Background()
		if c.o.PasswordFile != "" {
			ctx = chunkstore.WithPasswordFile(ctx, c.o.PasswordFile)
		}
		ctx, cancel := context.WithTimeout(ctx, repoHealthTimeout)
		c.h, c.err = chunkstore.ReadHealth(ctx, c.dir)
		cancel()
		c.at = now
		if c.err != nil && c.err.Error() != c.logged {
			c.o.Log.Warn("reading the repository for metrics", "repo", c.dir, "err", c.err)
		}
		c.logged = ""
		if c.err != nil {
			c.logged = c.err.Error()
		}
	}
	return c.h, c.err
}

// Collect reads the repository (or takes the cached reading) and sends its
// series.
func (c *RepoCollector) Collect(ch chan<- prometheus.Metric) {
	h, err := c.health()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if err != nil {
		gauge(c.up, 0)
		return
	}
	gauge(c.up, 1)
	gauge(c.points, float64(h.RestorePoints))
	var last time.Time
	if h.Newest != nil {
		last = h.Newest.Time
	}
	gauge(c.lastBackup, unixSeconds(last))
	gauge(c.size, float64(h.Bytes))
	gauge(c.walLast, unixSeconds(h.WAL.Pushed))
	if h.WAL.Point != nil {
		gauge(c.walBehind, float64(h.WAL.Behind))
		var until time.Time
		gap := 0.0
		if cv := h.WAL.Coverage; cv != nil {
			until = cv.To
			if cv.GapAfter != "" {
				gap = 1
			}
		}
		gauge(c.walUntil, unixSeconds(until))
		gauge(c.walGap, gap)
	}
	for _, op := range chunkstore.Ops {
		st := h.Ops[op]
		if st == nil {
			// Never recorded: no failure yet, which alerts and increase()
			// can count on from the start.
			gauge(c.okTime, 0, string(op))
			gauge(c.failTime, 0, string(op))
			ch <- prometheus.MustNewConstMetric(c.fail, prometheus.CounterValue, 0, string(op))
			continue
		}
		ok := 0.0
		if st.Last.OK {
			ok = 1
		}
		gauge(c.runTime, unixSeconds(st.Last.Time), string(op))
		gauge(c.runOK, ok, string(op))
		gauge(c.runSecs, st.Last.Seconds, string(op))
		gauge(c.okTime, unixSeconds(st.LastSuccess), string(op))
		gauge(c.failTime, unixSeconds(st.LastFailure), string(op))
		ch <- prometheus.MustNewConstMetric(c.fail, prometheus.CounterValue, float64(st.Failures), string(op))
	}
}

// unixSeconds is t as Prometheus timestamps are: Unix seconds, fractions
// kept; 0 for the zero time.
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

// Err returns the error of the last reading of the repository, nil if it
// was read (or was not read yet).
func (c *RepoCollector) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
