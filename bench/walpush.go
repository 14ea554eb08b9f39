package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"syscall"
	"time"

	"github.com/pgporter/pgporter/internal/pgtool"
)

// WALPush is scenario 10: archive a server's WAL, segment by segment, as
// archive_command does: pgporter wal-push against pgbackrest archive-push
// (synchronous, as pgBackRest's user guide sets it up first), each into an
// empty repository, one process per segment. The segments are real: those
// a cluster archived while pgbench filled it and then ran transactions.
type WALPush struct {
	// Pgporter is the pgporter binary to run; required.
	Pgporter string
	// Segments is how many segments each run pushes; 0 means 32, or 4 with
	// Env.Smoke.
	Segments int
}

var _ Scenario = (*WALPush)(nil)

func (*WALPush) Name() string { return "walpush" }

func (*WALPush) Describe() string {
	return "archive a server's WAL segment by segment: pgporter wal-push against pgbackrest archive-push, one process per segment"
}

var walSegmentName = regexp.MustCompile(`^[0-9A-F]{24}$`)

func (s *WALPush) Prepare(ctx context.Context, env Env) (_ *Setup, err error) {
	if s.Pgporter == "" {
		return nil, errors.New("walpush: no pgporter binary")
	}
	if err := RequirePgBackRest(); err != nil {
		return nil, err
	}
	n := s.Segments
	if n <= 0 {
		n = 32
		if env.Smoke {
			n = 4
		}
	}
	if err := os.Chmod(env.Dir, 0o755); err != nil {
		return nil, err
	}
	cred, err := pgtool.ServerCredential("")
	if err != nil {
		return nil, err
	}
	// The server copies each segment it archives into walDir.
	walDir := filepath.Join(env.Dir, "wal")
	if err := os.Mkdir(walDir, 0o755); err != nil {
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(walDir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	c, err := newPGCluster(ctx, "", "", map[string]string{"archive_mode": "on", "archive_command": "cp %p " + walDir + "/%f"})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.remove())
		}
	}()
	env.Logf("walpush: filling a cluster (pgbench -s 10, then transactions) until it has archived %d segments", n)
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	segments, err := func() (segs []string, err error) {
		defer func() { err = errors.Join(err, c.stop()) }()
		if err := fillBench(ctx, c, 10, 30_000); err != nil {
			return nil, err
		}
		for range 100 {
			if segs, err = archivedSegments(walDir); err != nil || len(segs) >= n {
				return segs, err
			}
			if _, err := c.client(ctx, "bench", "pgbench", "-n", "-c", "2", "-t", "2000", "bench"); err != nil {
				return nil, err
			}
			if _, err := c.client(ctx, "bench", "psql", "-X", "-q", "-c", "SELECT pg_switch_wal()"); err != nil {
				return nil, err
			}
		}
		return nil, fmt.Errorf("walpush: the cluster archived %d segments, not %d", len(segs), n)
	}()
	if err != nil {
		return nil, err
	}
	segments = segments[:n]
	var bytes int64
	for _, p := range segments {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		bytes += fi.Size()
	}
	env.Logf("walpush: %d segments, %d bytes", len(segments), bytes)
	j := &walJob{segments: segments, pgdata: c.DataDir, dir: env.Dir, cred: cred, logf: env.Logf}
	return &Setup{
		Bytes: bytes,
		Sides: []string{"archiver"},
		Notes: map[string]string{
			"data":       fmt.Sprintf("%d WAL segments of 16 MiB that a cluster archived while pgbench -i -s 10 and 30,000 rows of docs filled it, then while pgbench -c 2 ran transactions", len(segments)),
			"pgbackrest": fmt.Sprintf("%s archive-push, synchronous (archive-async=n, the default), compress-type=zst compress-level=1 (pgporter's codec and level); its stanza made with stanza-create --no-online", pgBackRestVersion(ctx)),
			"runs":       "one process per segment, in order, as PostgreSQL's archiver runs archive_command; each run pushes every segment into an empty repository",
			"measures":   "wall and CPU are the sum over the segments' processes; ms_per_segment is wall / segments; repo_MB the repository's size after the run",
		},
		Tools: []Tool{
			&walTool{job: j, kind: "pgporter", bin: s.Pgporter},
			&walTool{job: j, kind: "pgbackrest"},
		},
		SpeedUp: &SpeedUp{Of: "pgporter wal-push", Over: "pgbackrest archive-push"},
		Close:   c.remove,
	}, nil
}

// archivedSegments lists the segments in dir, in order.
func archivedSegments(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if walSegmentName.MatchString(e.Name()) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	slices.Sort(out)
	return out, nil
}

type walJob struct {
	segments []string
	pgdata   string
	dir      string
	cred     *syscall.Credential
	logf     func(string, ...any)
}

type walTool struct {
	job  *walJob
	kind string // "pgporter" or "pgbackrest"
	bin  string
}

func (t *walTool) Name() string {
	if t.kind == "pgporter" {
		return "pgporter wal-push"
	}
	return "pgbackrest archive-push"
}

func (t *walTool) Run(ctx context.Context, rep int) (_ Measure, err error) {
	j := t.job
	d := filepath.Join(j.dir, fmt.Sprintf("%s-%d", t.kind, rep))
	if err := os.Mkdir(d, 0o755); err != nil {
		return Measure{}, err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(d)) }()
	var push func(seg string) *exec.Cmd
	var repo string
	switch t.kind {
	case "pgporter":
		repo = filepath.Join(d, "repo")
		push = func(seg string) *exec.Cmd {
			return exec.CommandContext(ctx, t.bin, "wal-push", "--repo", repo, seg)
		}
	case "pgbackrest":
		p, err := newPgBackRest(d, pgBackRestServer{PGData: j.pgdata}, j.cred)
		if err != nil {
			return Measure{}, err
		}
		repo = p.repo
		if err := p.run(ctx, "--no-online", "stanza-create"); err != nil {
			return Measure{}, err
		}
		push = func(seg string) *exec.Cmd { return p.cmd(ctx, "", "archive-push", seg) }
	default:
		return Measure{}, fmt.Errorf("walpush: unknown tool %q", t.kind)
	}
	var m Measure
	for _, seg := range j.segments {
		cmd := push(seg)
		t0 := time.Now()
		out, err := cmd.CombinedOutput()
		m.Wall += time.Since(t0)
		if err != nil {
			return Measure{}, fmt.Errorf("%s %s: %w: %s", t.Name(), filepath.Base(seg), err, tail(string(out)))
		}
		m.CPUSender += usage(cmd)
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			m.RSSSender = max(m.RSSSender, ru.Maxrss<<10)
		}
	}
	size, _, err := treeSize(repo)
	if err != nil {
		return Measure{}, err
	}
	m.Extra = map[string]float64{
		"repo_MB":        float64(size) / 1e6,
		"ms_per_segment": float64(m.Wall.Milliseconds()) / float64(len(j.segments)),
	}
	j.logf("walpush: %s: %d segments in %.1f s (%.0f ms each), repository %.1f MB", t.Name(), len(j.segments), m.Wall.Seconds(),
		m.Extra["ms_per_segment"], m.Extra["repo_MB"])
	return m, nil
}
