package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"github.com/pgporter/pgporter/internal/pgtool"
)

// Scale is scenario 9 at one size: the throughput and peak RSS of pgporter
// send (over the LAN scenario's 1 Gbit/s link, into a fresh mover serve)
// and pgporter backup (into an empty repository) of one stopped cluster's
// data directory, with pgbackrest backup --type=full of it beside them;
// and of pgporter export of its database bench out of a pgporter backup
// of it made before the runs (the export scenario's tool: one process,
// mount, orchestrator, sender and the in-process target mover).
// The harness runs it at 1x ("scale-1x") and 10x ("scale-10x") the data:
// memory that grows with the data shows as a peak RSS that grows from one
// to the other (issue 16's target for the export: ScaleRSSRatio).
type Scale struct {
	// Factor multiplies Base; it names the scenario (scale-10x).
	Factor int
	// Base is the pgbench scale at 1x, with Base×30,000 rows of the docs
	// table (the LAN dump's shape); 0 means 10, or 1 with Env.Smoke.
	Base      int
	Pgporter  string
	SendFlags []string
	Link      LinkOptions // Rate defaults to 1gbit
	// Jobs is pgporter export's --jobs; 0 means 2.
	Jobs int
	// MemoryProfile, when not empty, is where every run of pgporter export
	// leaves the retired scripts/bench-memory's diagnostics (memSampler), under
	// NAME/runN (scale-1x/run1).
	MemoryProfile string
}

var _ Scenario = (*Scale)(nil)

func (s *Scale) Name() string { return fmt.Sprintf("scale-%dx", s.Factor) }

func (s *Scale) Describe() string {
	return fmt.Sprintf("throughput and peak RSS of pgporter send (1 Gbit/s link) and backup of a data directory at %dx the data, with pgbackrest full beside, and of pgporter export of its database", s.Factor)
}

func (s *Scale) Prepare(ctx context.Context, env Env) (_ *Setup, err error) {
	if s.Pgporter == "" {
		return nil, fmt.Errorf("%s: no pgporter binary", s.Name())
	}
	if err := errors.Join(RequireLinkTools(), RequirePgBackRest(), RequireExportTools()); err != nil {
		return nil, err
	}
	base := s.Base
	if base <= 0 {
		base = 10
		if env.Smoke {
			base = 1
		}
	}
	scale := base * s.Factor
	docs := scale * 30_000
	if err := os.Chmod(env.Dir, 0o755); err != nil {
		return nil, err
	}
	env.Logf("%s: filling bench (pgbench -s %d, %d rows of docs)", s.Name(), scale, docs)
	c, err := newBenchCluster(ctx, scale, docs)
	if err != nil {
		return nil, err
	}
	var held closers
	held.add(c.remove)
	defer func() {
		if err != nil {
			err = errors.Join(err, held.Close())
		}
	}()
	size, files, err := readTree(c.DataDir)
	if err != nil {
		return nil, err
	}
	wal, _, err := treeSize(filepath.Join(c.DataDir, "pg_wal"))
	if err != nil {
		return nil, err
	}
	env.Logf("%s: the data directory is %d bytes in %d files (%d of them in pg_wal)", s.Name(), size, files, wal)

	lo := s.Link
	if lo.Rate == "" {
		lo.Rate = "1gbit"
	}
	link, err := NewLink(ctx, lo)
	if err != nil {
		return nil, err
	}
	held.add(link.Close)
	cred, err := pgtool.ServerCredential("")
	if err != nil {
		return nil, err
	}
	env.Logf("%s: backing the data directory up for pgporter export", s.Name())
	repo := filepath.Join(env.Dir, "repo")
	if err := backupInto(ctx, s.Pgporter, c.DataDir, repo, filepath.Join(env.Dir, "home-backup")); err != nil {
		return nil, err
	}
	pgBin, err := pgtool.NewestServerBinDir()
	if err != nil {
		return nil, err
	}
	jobs := s.Jobs
	if jobs <= 0 {
		jobs = 2
	}
	var memProfile string
	if s.MemoryProfile != "" {
		memProfile = filepath.Join(s.MemoryProfile, s.Name())
	}
	// The cluster trusts local logins and its role has no password: the
	// export logs in as the backup's pg_hba.conf allows.
	export := &exportJob{bin: s.Pgporter, pgBin: pgBin, cred: cred, repo: repo, dir: env.Dir, db: "bench", auth: "backup-hba",
		tables: benchTables, logf: env.Logf, name: s.Name()}
	send := &lanJob{link: link, data: c.DataDir, size: size, dir: env.Dir, logf: env.Logf, name: s.Name()}
	backup := &backupJob{pgdata: c.DataDir, dir: env.Dir, cred: cred, logf: env.Logf, name: s.Name()}
	return &Setup{
		Bytes: size,
		Sides: []string{"sender", "receiver"},
		Notes: map[string]string{
			"data":          fmt.Sprintf("%dx: pgbench -i -s %d plus %d rows of md5 text, jsonb and words, the stopped cluster's data directory (%.0f MB of it the WAL segments in pg_wal)", s.Factor, scale, docs, float64(wal)/1e6),
			"files":         strconv.Itoa(files),
			"link":          lo.Rate + " (tc tbf) each way, for pgporter send; the backups are local",
			"sender CPUs":   link.SenderCPUs + " (pgporter send; the backups are not pinned)",
			"receiver CPUs": link.ReceiverCPUs,
			"pgbackrest":    fmt.Sprintf("%s --no-online, compress-type=zst compress-level=1, process-max=%d", pgBackRestVersion(ctx), runtime.NumCPU()),
			"cache":         "the data directory is read once before the runs and fits in memory: every run reads it warm; sync before every run",
			"export":        fmt.Sprintf("pgporter export --db bench --auth backup-hba --jobs %d to a local directory, of a pgporter backup of the data directory made before the runs; its rate and CPU per GB are against the data directory's size", jobs),
		},
		Tools: []Tool{
			&pgporterTool{job: send, name: "pgporter send", bin: s.Pgporter, flags: s.SendFlags},
			&backupTool{job: backup, kind: "pgporter", bin: s.Pgporter},
			&backupTool{job: backup, kind: "pgbackrest"},
			&exportTool{job: export, name: "pgporter export", dir: "e", bin: s.Pgporter, jobs: jobs, memProfile: memProfile},
		},
		Settle:  settle,
		SpeedUp: &SpeedUp{Of: "pgporter backup", Over: "pgbackrest full"},
		Close:   held.Close,
	}, nil
}
