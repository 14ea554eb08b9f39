package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/pgporter/pgporter/internal/pgtool"
)

// Backup is scenario 8: back up a stopped cluster, then back it up again
// after 1% of its rows were appended and 100 scattered rows updated, with
// pgporter backup against pgBackRest's full and incremental backups. Each
// run starts from an empty repository; the time, CPU and peak RSS of the
// timed backup and the repository's growth are measured. The second backup
// of each tool is a row of its own, after an untimed first backup into the
// same repository.
//
// Both tools read the same stopped data directory: pgporter backup
// --pgdata, and pgbackrest backup --no-online, pgBackRest's documented
// backup of an offline cluster, which needs no WAL archive (the cluster
// was shut down cleanly, so the data directory is consistent by itself)
// and so no archive_command or archive-check. The online flow, with
// archive-push, is scenario 6's.
type Backup struct {
	// Pgporter is the pgporter binary to run; required.
	Pgporter string
	// Scale is the data's pgbench scale, with Scale×30,000 rows of the docs
	// table (the LAN dump's shape); 0 means 20, or 1 with Env.Smoke.
	Scale int
}

var _ Scenario = (*Backup)(nil)

func (*Backup) Name() string { return "backup" }

func (*Backup) Describe() string {
	return "back up a stopped cluster, then again after 1% of rows appended and 100 updated: pgporter backup against pgbackrest --type=full and --type=incr"
}

// appendSQL (a format: %[1]d is the pgbench scale, %[2]d the docs rows)
// appends 1% of the rows of pgbench_accounts and of docs, after their
// last, as an application's inserts would.
const appendSQL = `INSERT INTO pgbench_accounts (aid, bid, abalance, filler)
	SELECT g, 1 + (g - 1) / 100000, 0, '' FROM generate_series(%[1]d * 100000 + 1, %[1]d * 101000) g;
INSERT INTO docs SELECT g AS id, md5(g::text) AS h,
	jsonb_build_object('k', g %% 1000, 'w', (ARRAY['alpha','beta','gamma','delta','epsilon'])[g %% 5 + 1]) AS j,
	repeat((ARRAY['lorem ','ipsum ','dolor ','sit '])[g %% 4 + 1], 8) AS words
	FROM generate_series(%[2]d + 1, %[2]d + %[2]d / 100) g`

func (s *Backup) Prepare(ctx context.Context, env Env) (_ *Setup, err error) {
	if s.Pgporter == "" {
		return nil, errors.New("backup: no pgporter binary")
	}
	if err := RequirePgBackRest(); err != nil {
		return nil, err
	}
	scale := s.Scale
	if scale <= 0 {
		scale = 20
		if env.Smoke {
			scale = 1
		}
	}
	docs := scale * 30_000
	if err := os.Chmod(env.Dir, 0o755); err != nil {
		return nil, err
	}
	env.Logf("backup: filling bench (pgbench -s %d, %d rows of docs), then appending 1%% and updating %d rows", scale, docs, UpdatedRows)
	c, err := newBenchCluster(ctx, scale, docs)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.remove())
		}
	}()
	// The two states of the data directory: a (as filled) and b (after the
	// changes). cp -a keeps the mtimes of the files the changes did not
	// touch, which pgBackRest's incremental backup compares.
	a, b := filepath.Join(c.Base, "a"), filepath.Join(c.Base, "b")
	if out, err := exec.CommandContext(ctx, "cp", "-a", c.DataDir, a).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("cp -a: %w: %s", err, tail(string(out)))
	}
	err = func() (err error) {
		if err := c.start(ctx); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, c.stop()) }()
		if _, err := c.client(ctx, "bench", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", fmt.Sprintf(appendSQL, scale, docs)); err != nil {
			return err
		}
		return updateRows(ctx, c, scale)
	}()
	if err != nil {
		return nil, err
	}
	if err := os.Rename(c.DataDir, b); err != nil {
		return nil, err
	}
	sizeA, files, err := treeSize(a)
	if err != nil {
		return nil, err
	}
	sizeB, _, err := treeSize(b)
	if err != nil {
		return nil, err
	}
	wal, _, err := treeSize(filepath.Join(a, "pg_wal"))
	if err != nil {
		return nil, err
	}
	env.Logf("backup: the data directory is %d bytes in %d files (%d of them in pg_wal), %d after the changes", sizeA, files, wal, sizeB)
	cred, err := pgtool.ServerCredential("")
	if err != nil {
		return nil, err
	}
	j := &backupJob{pgdata: c.DataDir, first: a, second: b, dir: env.Dir, cred: cred, logf: env.Logf, name: "backup"}
	return &Setup{
		Bytes: sizeA,
		Sides: []string{"backup"},
		Notes: map[string]string{
			"data":        fmt.Sprintf("pgbench -i -s %d plus %d rows of md5 text, jsonb and words; then 1%% of the rows of both tables appended and %d rows updated (%d bytes after)", scale, docs, UpdatedRows, sizeB),
			"input":       fmt.Sprintf("the data directory of the stopped cluster, before the changes, %.0f MB of it the WAL segments in pg_wal", float64(wal)/1e6),
			"pgbackrest":  fmt.Sprintf("%s --no-online (an offline cluster: no WAL archive), compress-type=zst compress-level=1 (pgporter's codec and level), process-max=%d", pgBackRestVersion(ctx), runtime.NumCPU()),
			"repository":  "each run starts empty; repo_MB is its size after the timed backup, growth_MB what the timed backup added",
			"after first": "the rows '(after changes)' and 'incr' time the second backup, after an untimed first one into the same repository",
			"settle":      "sync and drop_caches before every run: each reads the data directory cold",
		},
		Tools: []Tool{
			&backupTool{job: j, kind: "pgporter", bin: s.Pgporter},
			&backupTool{job: j, kind: "pgporter", bin: s.Pgporter, second: true},
			&backupTool{job: j, kind: "pgbackrest"},
			&backupTool{job: j, kind: "pgbackrest", second: true},
		},
		Settle:  func(ctx context.Context) error { return exportSettle(ctx, 0) },
		SpeedUp: &SpeedUp{Of: "pgporter backup", Over: "pgbackrest full"},
		Close:   c.remove,
	}, nil
}

// backupJob is what the backup tools share: the data directory path that
// each backup reads (pgdata), and where its states wait meanwhile.
type backupJob struct {
	pgdata string
	// first and second are the data directory's states before and after
	// the changes, renamed to pgdata while a backup reads them (so that
	// every backup of a stanza reads the same path). first "" means pgdata
	// holds the only state, and no tool takes a second backup.
	first, second string
	dir           string
	cred          *syscall.Credential // the postgres OS user, or nil
	logf          func(string, ...any)
	name          string // the scenario's, for log lines
}

// with renames state to pgdata for f, and back.
func (j *backupJob) with(state string, f func() error) error {
	if state == "" {
		return f()
	}
	if err := os.Rename(state, j.pgdata); err != nil {
		return err
	}
	return errors.Join(f(), os.Rename(j.pgdata, state))
}

// backupTool runs one tool's backup: its first into an empty repository,
// or (second) its second after an untimed first.
type backupTool struct {
	job    *backupJob
	kind   string // "pgporter" or "pgbackrest"
	bin    string // pgporter's
	second bool
}

func (t *backupTool) Name() string {
	switch {
	case t.kind == "pgporter" && t.second:
		return "pgporter backup (after changes)"
	case t.kind == "pgporter":
		return "pgporter backup"
	case t.second:
		return "pgbackrest incr"
	}
	return "pgbackrest full"
}

func (t *backupTool) Run(ctx context.Context, rep int) (_ Measure, err error) {
	j := t.job
	step := "first"
	if t.second {
		step = "second"
	}
	d := filepath.Join(j.dir, fmt.Sprintf("%s-%s-%d", t.kind, step, rep))
	if err := os.Mkdir(d, 0o755); err != nil {
		return Measure{}, err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(d)) }()
	var backup func(ctx context.Context, peak string, first bool) (*exec.Cmd, error)
	var repo string
	switch t.kind {
	case "pgporter":
		repo = filepath.Join(d, "repo")
		backup = func(ctx context.Context, peak string, _ bool) (*exec.Cmd, error) {
			args := []string{t.bin, "--home", filepath.Join(d, "home"), "backup", "--repo", repo, "--pgdata", j.pgdata, "--json"}
			if peak != "" {
				args = append([]string{"/usr/bin/time", "-f", "%M", "-o", peak}, args...)
			}
			cmd := exec.CommandContext(ctx, args[0], args[1:]...)
			var out, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &stderr
			if err := cmd.Run(); err != nil {
				return cmd, fmt.Errorf("pgporter backup: %w: %s", err, tail(stderr.String()))
			}
			var r struct {
				RestorePoint string `json:"restore_point"`
			}
			if err := json.Unmarshal(out.Bytes(), &r); err != nil || r.RestorePoint == "" {
				return cmd, fmt.Errorf("pgporter backup --json printed %q: %v", tail(out.String()), err)
			}
			return cmd, nil
		}
	case "pgbackrest":
		p, err := newPgBackRest(d, pgBackRestServer{PGData: j.pgdata}, j.cred)
		if err != nil {
			return Measure{}, err
		}
		repo = p.repo
		if err := j.with(j.first, func() error { return p.run(ctx, "--no-online", "stanza-create") }); err != nil {
			return Measure{}, err
		}
		backup = func(ctx context.Context, peak string, first bool) (*exec.Cmd, error) {
			typ := "--type=incr"
			if first {
				typ = "--type=full"
			}
			cmd := p.cmd(ctx, peak, "--no-online", "backup", typ)
			if out, err := cmd.CombinedOutput(); err != nil {
				return cmd, fmt.Errorf("pgbackrest backup %s: %w: %s", typ, err, tail(string(out)))
			}
			return cmd, nil
		}
	default:
		return Measure{}, fmt.Errorf("backup: unknown tool %q", t.kind)
	}

	state := j.first
	if t.second {
		if err := j.with(j.first, func() error { _, err := backup(ctx, "", true); return err }); err != nil {
			return Measure{}, err
		}
		state = j.second
	}
	before, _, err := treeSize(repo)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return Measure{}, err
	}
	peak := filepath.Join(d, "backup.rss")
	if j.cred != nil {
		// GNU time writes it as pgbackrest's user.
		if err := os.WriteFile(peak, nil, 0o644); err != nil {
			return Measure{}, err
		}
		if err := os.Chown(peak, int(j.cred.Uid), int(j.cred.Gid)); err != nil {
			return Measure{}, err
		}
	}
	var cmd *exec.Cmd
	var wall time.Duration
	err = j.with(state, func() error {
		t0 := time.Now()
		var err error
		cmd, err = backup(ctx, peak, !t.second)
		wall = time.Since(t0)
		return err
	})
	if err != nil {
		return Measure{}, err
	}
	// Untimed from here.
	after, _, err := treeSize(repo)
	if err != nil {
		return Measure{}, err
	}
	rss, err := readPeakRSS(peak)
	if err != nil {
		return Measure{}, err
	}
	extra := map[string]float64{"repo_MB": float64(after) / 1e6, "growth_MB": float64(after-before) / 1e6}
	j.logf("%s: %s: %.1f s, the repository grew by %.1f MB to %.1f MB", j.name, t.Name(), wall.Seconds(), extra["growth_MB"], extra["repo_MB"])
	return Measure{Wall: wall, CPUSender: usage(cmd), RSSSender: rss, Extra: extra}, nil
}
