package bench

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
)

// S3Backup is scenario 8 on object storage (issue 21): the backup
// scenario's data and tools, with each tool's repository a directory and a
// bucket of the project's S3 test server (SeaweedFS, scripts/s3-server),
// which the scenario starts in its scratch directory and stops at the end.
// pgporter reaches it over HTTP, pgBackRest over HTTPS (the only protocol
// it speaks to S3). Each S3 run also measures the server's CPU-seconds.
// On S3 each tool also backs up into an encrypted repository: what its
// encryption costs, against the other's.
//
// Its name is not "backup-s3": --scenario backup chooses backup-*
// variants, and this one needs the S3 server, which make bench's subset
// and the CI smoke of backup do not start.
type S3Backup struct {
	// Pgporter is the pgporter binary to run; required.
	Pgporter string
	// Scale is the data's pgbench scale, as Backup's.
	Scale int
}

var _ Scenario = (*S3Backup)(nil)

func (*S3Backup) Name() string { return "s3-backup" }

func (*S3Backup) Describe() string {
	return "the backup scenario with the repositories on a local S3 server (SeaweedFS): pgporter backup to a directory and to s3://, pgbackrest full and incr to a directory and to its S3 repository type; on S3 also each tool's repository encryption"
}

func (s *S3Backup) Prepare(ctx context.Context, env Env) (_ *Setup, err error) {
	if s.Pgporter == "" {
		return nil, errors.New("s3-backup: no pgporter binary")
	}
	if err := RequirePgBackRest(); err != nil {
		return nil, err
	}
	if err := RequireS3Server(); err != nil {
		return nil, err
	}
	d, err := prepareBackupData(ctx, env, s.Name(), s.Scale)
	if err != nil {
		return nil, err
	}
	var held closers
	held.add(d.cluster.remove)
	defer func() {
		if err != nil {
			err = errors.Join(err, held.Close())
		}
	}()
	env.Logf("%s: starting the S3 server (scripts/s3-server start)", s.Name())
	srv, err := startS3Server(ctx, filepath.Join(env.Dir, "s3"))
	if err != nil {
		return nil, err
	}
	held.add(srv.Close)
	j := d.job
	return &Setup{
		Bytes: d.sizeA,
		Sides: []string{"backup"},
		Notes: map[string]string{
			"data":        d.describe(),
			"input":       fmt.Sprintf("the data directory of the stopped cluster, before the changes, %.0f MB of it the WAL segments in pg_wal", float64(d.wal)/1e6),
			"pgbackrest":  fmt.Sprintf("%s --no-online (an offline cluster: no WAL archive), compress-type=zst compress-level=1 (pgporter's codec and level), process-max=%d; on S3: repo1-type=s3 over HTTPS, repo1-s3-uri-style=path, repo1-storage-verify-tls=n", pgBackRestVersion(ctx), runtime.NumCPU()),
			"s3":          fmt.Sprintf("SeaweedFS (weed server -filer -s3, scripts/s3-server) on loopback, a bucket per run; pgporter over HTTP (%s), pgBackRest over HTTPS (%s)", srv.vars["AWS_ENDPOINT_URL"], srv.vars["PGPORTER_S3_TLS_ENDPOINT"]),
			"repository":  "each run starts empty; repo_MB is its size after the timed backup (on S3: the objects under its prefix, listed), growth_MB what the timed backup added; cache_MB is pgporter's local cache of an S3 repository (PGPORTER_CACHE_DIR), not counted in repo_MB",
			"server CPU":  "server_CPU_s: the weed process's CPU-seconds (/proc/PID/stat) during the timed backup",
			"after first": "the rows '(after changes)' and 'incr' time the second backup, after an untimed first one into the same repository",
			"settle":      "sync and drop_caches before every run: each reads the data directory cold",
			"open_s":      "pgporter on S3: the wall time of 'pgporter restore-points' on the repository after the backup, untimed in wall: what opening it costs every command (encrypted, the argon2id unlock)",
			"encrypted":   "the rows ', encrypted': pgporter's repository made by an untimed 'repo init --encrypt' (XChaCha20-Poly1305; the timed backup includes its argon2id unlock of the key file), the passphrase in PGPORTER_REPO_PASSWORD; pgBackRest's with repo1-cipher-type=aes-256-cbc and repo1-cipher-pass",
		},
		Tools: []Tool{
			&backupTool{job: j, kind: "pgporter", bin: s.Pgporter},
			&backupTool{job: j, kind: "pgporter", bin: s.Pgporter, second: true},
			&backupTool{job: j, kind: "pgporter", bin: s.Pgporter, s3: srv},
			&backupTool{job: j, kind: "pgporter", bin: s.Pgporter, s3: srv, second: true},
			&backupTool{job: j, kind: "pgbackrest"},
			&backupTool{job: j, kind: "pgbackrest", second: true},
			&backupTool{job: j, kind: "pgbackrest", s3: srv},
			&backupTool{job: j, kind: "pgbackrest", s3: srv, second: true},
			&backupTool{job: j, kind: "pgporter", bin: s.Pgporter, s3: srv, encrypt: true},
			&backupTool{job: j, kind: "pgporter", bin: s.Pgporter, s3: srv, encrypt: true, second: true},
			&backupTool{job: j, kind: "pgbackrest", s3: srv, encrypt: true},
			&backupTool{job: j, kind: "pgbackrest", s3: srv, encrypt: true, second: true},
		},
		Settle:  func(ctx context.Context) error { return exportSettle(ctx, 0) },
		SpeedUp: &SpeedUp{Of: "pgporter backup to S3", Over: "pgbackrest full to S3"},
		Close:   held.Close,
	}, nil
}
