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

	"github.com/pgporter/pgporter/chunkstore/crypt"
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
	d, err := prepareBackupData(ctx, env, s.Name(), s.Scale)
	if err != nil {
		return nil, err
	}
	j := d.job
	return &Setup{
		Bytes: d.sizeA,
		Sides: []string{"backup"},
		Notes: map[string]string{
			"data":        d.describe(),
			"input":       fmt.Sprintf("the data directory of the stopped cluster, before the changes, %.0f MB of it the WAL segments in pg_wal", float64(d.wal)/1e6),
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
		Close:   d.cluster.remove,
	}, nil
}

// backupData is the backup scenarios' data: a stopped cluster's data
// directory before and after the changes, and the job that backs it up.
type backupData struct {
	cluster           *pgCluster
	job               *backupJob
	scale, docs       int
	sizeA, sizeB, wal int64 // the states' sizes, and pg_wal's in the first
	files             int
}

// describe is the results' note on the data.
func (d *backupData) describe() string {
	return fmt.Sprintf("pgbench -i -s %d plus %d rows of md5 text, jsonb and words; then 1%% of the rows of both tables appended and %d rows updated (%d bytes after)", d.scale, d.docs, UpdatedRows, d.sizeB)
}

// clusterScale is a scenario's pgbench scale: scale when it is set, else
// 20, or 1 with --smoke.
func clusterScale(scale int, smoke bool) int {
	switch {
	case scale > 0:
		return scale
	case smoke:
		return 1
	}
	return 20
}

// prepareBackupData fills a throwaway cluster (pgbench -s scale, 0 meaning
// 20 or 1 with env.Smoke, and scale×30,000 rows of docs), keeps a copy of
// its data directory, then appends 1% of the rows and updates UpdatedRows
// of them: the two states that the backup tools read in turn. The caller
// removes d.cluster.
func prepareBackupData(ctx context.Context, env Env, name string, scale int) (_ *backupData, err error) {
	scale = clusterScale(scale, env.Smoke)
	docs := scale * 30_000
	if err := os.Chmod(env.Dir, 0o755); err != nil {
		return nil, err
	}
	env.Logf("%s: filling bench (pgbench -s %d, %d rows of docs), then appending 1%% and updating %d rows", name, scale, docs, UpdatedRows)
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
	d := &backupData{cluster: c, scale: scale, docs: docs}
	if d.sizeA, d.files, err = treeSize(a); err != nil {
		return nil, err
	}
	if d.sizeB, _, err = treeSize(b); err != nil {
		return nil, err
	}
	if d.wal, _, err = treeSize(filepath.Join(a, "pg_wal")); err != nil {
		return nil, err
	}
	env.Logf("%s: the data directory is %d bytes in %d files (%d of them in pg_wal), %d after the changes", name, d.sizeA, d.files, d.wal, d.sizeB)
	cred, err := pgtool.ServerCredential("")
	if err != nil {
		return nil, err
	}
	d.job = &backupJob{pgdata: c.DataDir, first: a, second: b, dir: env.Dir, cred: cred, logf: env.Logf, name: name}
	return d, nil
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
// or (second) its second after an untimed first. The repository is a
// directory, or with s3 a bucket of its own on that server; with encrypt
// it is encrypted under benchRepoPassword, pgporter's created by an
// untimed 'repo init --encrypt', pgBackRest's with aes-256-cbc.
type backupTool struct {
	job     *backupJob
	kind    string // "pgporter" or "pgbackrest"
	bin     string // pgporter's
	second  bool
	s3      *s3Server
	encrypt bool
}

// benchRepoPassword is the passphrase of the encrypted repositories: in
// pgporter's environment ($PGPORTER_REPO_PASSWORD), in pgBackRest's
// configuration (repo1-cipher-pass).
const benchRepoPassword = "pgporter-bench-passphrase"

func (t *backupTool) Name() string {
	var name string
	switch {
	case t.kind == "pgporter":
		name = "pgporter backup"
	case t.second:
		name = "pgbackrest incr"
	default:
		name = "pgbackrest full"
	}
	if t.s3 != nil {
		name += " to S3"
	}
	if t.encrypt {
		name += ", encrypted"
	}
	if t.kind == "pgporter" && t.second {
		name += " (after changes)"
	}
	return name
}

// s3RepoPrefix is the key prefix of pgporter's repository in its bucket,
// s3://BUCKET/repo: pgBackRest's (pgBackRestS3Path) has the same.
const s3RepoPrefix = "repo"

func (t *backupTool) Run(ctx context.Context, rep int) (_ Measure, err error) {
	j := t.job
	step := "first"
	if t.second {
		step = "second"
	}
	where := "dir"
	if t.s3 != nil {
		where = "s3"
	}
	if t.encrypt {
		where += "-enc"
	}
	// Also the bucket's name: lower case, digits and dashes.
	name := fmt.Sprintf("%s-%s-%s-%d", t.kind, where, step, rep)
	d := filepath.Join(j.dir, name)
	if err := os.Mkdir(d, 0o755); err != nil {
		return Measure{}, err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(d)) }()
	// repoSize measures the repository: its files' apparent sizes, or the
	// sizes of the objects under its prefix.
	var repoSize func() (int64, error)
	var env []string // pgporter's, for an S3 repository
	cache := filepath.Join(d, "cache")
	var pbrS3 *pgBackRestS3
	var repo string // a directory, or pgporter's s3:// URL
	if t.s3 != nil {
		if err := t.s3.CreateBucket(ctx, name); err != nil {
			return Measure{}, err
		}
		defer func() {
			// Not the run's context, which may be cancelled: the bucket
			// would fill the server's disk.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if rerr := t.s3.RemoveBucket(rctx, name); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}()
		repoSize = func() (int64, error) {
			size, _, err := t.s3.Size(ctx, name, s3RepoPrefix+"/")
			return size, err
		}
		env = append(append(os.Environ(), t.s3.Env()...), "PGPORTER_CACHE_DIR="+cache)
		host, port, err := t.s3.TLSHostPort()
		if err != nil {
			return Measure{}, err
		}
		v := t.s3.vars
		pbrS3 = &pgBackRestS3{Host: host, Port: port, Bucket: name, Key: v["AWS_ACCESS_KEY_ID"], Secret: v["AWS_SECRET_ACCESS_KEY"], Region: v["AWS_REGION"]}
	}
	var backup func(ctx context.Context, peak string, first bool) (*exec.Cmd, error)
	switch t.kind {
	case "pgporter":
		repo = filepath.Join(d, "repo")
		if t.s3 != nil {
			repo = "s3://" + name + "/" + s3RepoPrefix
		}
		home := filepath.Join(d, "home")
		if t.encrypt {
			if env == nil {
				env = os.Environ()
			}
			env = append(env, crypt.PasswordEnv+"="+benchRepoPassword)
			cmd := exec.CommandContext(ctx, t.bin, "--home", home, "repo", "init", "--repo", repo, "--encrypt")
			cmd.Env = env
			if out, err := cmd.CombinedOutput(); err != nil {
				return Measure{}, fmt.Errorf("pgporter repo init --encrypt: %w: %s", err, tail(string(out)))
			}
		}
		backup = func(ctx context.Context, peak string, _ bool) (*exec.Cmd, error) {
			args := []string{t.bin, "--home", home, "backup", "--repo", repo, "--pgdata", j.pgdata, "--json"}
			if peak != "" {
				args = append([]string{"/usr/bin/time", "-f", "%M", "-o", peak}, args...)
			}
			cmd := exec.CommandContext(ctx, args[0], args[1:]...)
			cmd.Env = env
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
		var cipherPass string
		if t.encrypt {
			cipherPass = benchRepoPassword
		}
		p, err := newPgBackRestOn(d, pgBackRestServer{PGData: j.pgdata}, pbrS3, cipherPass, j.cred)
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
	if repoSize == nil {
		repoSize = func() (int64, error) {
			size, _, err := treeSize(repo)
			if errors.Is(err, os.ErrNotExist) {
				return 0, nil
			}
			return size, err
		}
	}

	state := j.first
	if t.second {
		if err := j.with(j.first, func() error { _, err := backup(ctx, "", true); return err }); err != nil {
			return Measure{}, err
		}
		state = j.second
	}
	before, err := repoSize()
	if err != nil {
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
	var server0, server1 float64
	var cmd *exec.Cmd
	var wall time.Duration
	err = j.with(state, func() (err error) {
		if t.s3 != nil {
			if server0, err = t.s3.CPU(); err != nil {
				return err
			}
		}
		t0 := time.Now()
		cmd, err = backup(ctx, peak, !t.second)
		wall = time.Since(t0)
		if err == nil && t.s3 != nil {
			server1, err = t.s3.CPU()
		}
		return err
	})
	if err != nil {
		return Measure{}, err
	}
	// Untimed from here.
	after, err := repoSize()
	if err != nil {
		return Measure{}, err
	}
	rss, err := readPeakRSS(peak)
	if err != nil {
		return Measure{}, err
	}
	extra := map[string]float64{"repo_MB": float64(after) / 1e6, "growth_MB": float64(after-before) / 1e6}
	if t.s3 != nil {
		extra["server_CPU_s"] = server1 - server0
		if t.kind == "pgporter" {
			size, _, err := treeSize(cache)
			if err != nil {
				return Measure{}, err
			}
			extra["cache_MB"] = float64(size) / 1e6
		}
	}
	if t.kind == "pgporter" && t.s3 != nil {
		// What every command pays to open the repository, apart from the
		// backup: with encryption the key file's argon2id unlock.
		cmd := exec.CommandContext(ctx, t.bin, "--home", filepath.Join(d, "home"), "restore-points", "--repo", repo)
		cmd.Env = env
		t0 := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			return Measure{}, fmt.Errorf("pgporter restore-points: %w: %s", err, tail(string(out)))
		}
		extra["open_s"] = time.Since(t0).Seconds()
	}
	j.logf("%s: %s: %.1f s, the repository grew by %.1f MB to %.1f MB", j.name, t.Name(), wall.Seconds(), extra["growth_MB"], extra["repo_MB"])
	return Measure{Wall: wall, CPUSender: usage(cmd), RSSSender: rss, Extra: extra}, nil
}
