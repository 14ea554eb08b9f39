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
// data directory, with pgbackrest backup --type=full of it beside them.
// The harness runs it at 1x ("scale-1x") and 10x ("scale-10x") the data:
// memory that grows with the data shows as a peak RSS that grows from one
// to the other.
type Scale struct {
	// Factor multiplies Base; it names the scenario (scale-10x).
	Factor int
	// Base is the pgbench scale at 1x, with Base×30,000 rows of the docs
	// table (the LAN dump's shape); 0 means 10, or 1 with Env.Smoke.
	Base      int
	Pgporter  string
	SendFlags []string
	Link      LinkOptions // Rate defaults to 1gbit
}

var _ Scenario = (*Scale)(nil)

func (s *Scale) Name() string { return fmt.Sprintf("scale-%dx", s.Factor) }

func (s *Scale) Describe() string {
	return fmt.Sprintf("throughput and peak RSS of pgporter send (1 Gbit/s link) and backup of a data directory at %dx the data, with pgbackrest full beside", s.Factor)
}

func (s *Scale) Prepare(ctx context.Context, env Env) (_ *Setup, err error) {
	if s.Pgporter == "" {
		return nil, fmt.Errorf("%s: no pgporter binary", s.Name())
	}
	if err := errors.Join(RequireLinkTools(), RequirePgBackRest()); err != nil {
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
		},
		Tools: []Tool{
			&pgporterTool{job: send, name: "pgporter send", bin: s.Pgporter, flags: s.SendFlags},
			&backupTool{job: backup, kind: "pgporter", bin: s.Pgporter},
			&backupTool{job: backup, kind: "pgbackrest"},
		},
		Settle:  settle,
		SpeedUp: &SpeedUp{Of: "pgporter backup", Over: "pgbackrest full"},
		Close:   held.Close,
	}, nil
}
