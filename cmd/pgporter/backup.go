package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/internal/pgtool"
)

type backupOpts struct {
	repo, pgdata, fromServer string
	spreadCheckpoint         bool
	json                     bool
}

func newBackupCmd(g *globals) *cobra.Command {
	var o backupOpts
	c := &cobra.Command{
		Use:   "backup --repo DIR (--pgdata DIR | --from-server CONNSTRING)",
		Short: "Back up a PostgreSQL data directory into a repository, or a running server online",
		Long: `Back up a PostgreSQL cluster into the repository DIR, creating it on
first use, as a new restore point:

  --pgdata DIR               the data directory of a stopped cluster (or a
                             crash-consistent copy of one, such as a
                             filesystem snapshot);
  --from-server CONNSTRING   an online, consistent backup of a running server,
                             streamed with pg_basebackup (of the server's
                             major version) with the WAL it needs. The user
                             needs the REPLICATION attribute and a
                             "replication" line in pg_hba.conf.

Files are cut into content-defined chunks and stored once: a later backup
of the same cluster stores only what changed. With --from-server,
tablespaces outside the data directory are backed up too (this needs FUSE,
as mount does), each as the directory pg_tblspc/<OID> in place of the link;
with --pgdata, symlinks (pg_tblspc) are recorded, not followed. An
interrupted backup leaves no restore point; rerun it and it reuses the
chunks already stored.

Prints the restore point ID as the last line (with --json, stdout is only a
JSON object with "restore_point").

Examples:
  pgporter backup --repo /srv/pgporter/repo --pgdata /var/lib/postgresql/15/main
  pgporter backup --repo /srv/pgporter/repo --from-server "host=db1 user=backup"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBackup(cmd, g, o) },
	}
	f := c.Flags()
	f.StringVar(&o.repo, "repo", "", "repository: a directory (created on first use) or s3://BUCKET/PREFIX (see docs/OBJECT-STORAGE.md)")
	f.StringVar(&o.pgdata, "pgdata", "", "data directory of a stopped cluster, or a crash-consistent copy")
	f.StringVar(&o.fromServer, "from-server", "", "libpq connection string of a running server to back up online")
	f.BoolVar(&o.spreadCheckpoint, "spread-checkpoint", false, "with --from-server: let the server spread its starting checkpoint (gentler, slower to start)")
	f.BoolVar(&o.json, "json", false, "print a JSON summary, and nothing else, on stdout")
	c.MarkFlagsMutuallyExclusive("pgdata", "from-server")
	recordRuns(g, c, &o.repo, always(chunkstore.OpBackup), chunkstore.RecordRun)
	return c
}

func runBackup(cmd *cobra.Command, g *globals, o backupOpts) error {
	switch {
	case o.repo == "":
		return usagef("backup needs --repo DIR")
	case o.pgdata == "" && o.fromServer == "":
		return usagef("backup needs --pgdata DIR (or --from-server CONNSTRING)")
	}
	if o.pgdata != "" {
		// Before the repository is opened, which creates it.
		if _, err := chunkstore.DataDirVersion(o.pgdata); err != nil {
			return err
		}
	}
	r, err := chunkstore.OpenRepo(cmd.Context(), o.repo, g.log)
	if err != nil {
		return err
	}
	defer r.Close()
	ctx := cmd.Context()
	var (
		bar       *byteBar
		lastTotal int64
	)
	start := time.Now()
	bo := chunkstore.BackupOptions{Progress: func(done, total int64) {
		if bar == nil {
			bar, lastTotal = newByteBar(ctx, g.stderr, "backup", total), total
		}
		if total != lastTotal { // a server backup's estimate comes late
			bar.setTotal(total)
			lastTotal = total
		}
		bar.set(done)
	}}
	var (
		rp     *chunkstore.RestorePoint
		source = o.pgdata
	)
	if o.fromServer != "" {
		source = "the server"
		rp, err = r.BackupFromServer(ctx, o.fromServer, chunkstore.ServerBackupOptions{
			BackupOptions:    bo,
			PGBaseBackup:     findBaseBackup,
			SpreadCheckpoint: o.spreadCheckpoint,
		})
	} else {
		rp, err = r.Backup(ctx, o.pgdata, bo)
	}
	if bar != nil {
		bar.done(err == nil)
	}
	if err != nil {
		return err
	}
	if err := r.Close(); err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	fmt.Fprintf(g.stdout, "backed up %s: %d files, %s in %.1fs (%s); stored %s new\n",
		source, rp.Files, bytesize.Format(rp.Size), secs, bytesize.Rate(rp.Size, secs), bytesize.Format(rp.StoredSize))
	if o.json {
		return g.writeJSON(map[string]any{
			"restore_point": rp.ID, "time": rp.Time, "pg_version": rp.PGVersion, "system_id": rp.SystemID,
			"databases": rp.Databases, "source_host": rp.SourceHost,
			"files": rp.Files, "bytes": rp.Size, "stored_bytes": rp.StoredSize, "seconds": secs,
		})
	}
	fmt.Fprintln(g.stdout, rp.ID)
	return nil
}

// findBaseBackup returns the pg_basebackup of a major version: the one
// beside that version's server binaries, which staging also runs.
func findBaseBackup(major string) (string, error) {
	dir, err := pgtool.ServerBinDir(major, "")
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "pg_basebackup")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no pg_basebackup beside the PostgreSQL %s server: %w", major, err)
	}
	return p, nil
}

// setTotal changes the bar's total, which a backup from a server learns
// only once pg_basebackup has estimated it. (Here rather than in
// progress.go, which other work owns at the moment.)
func (b *byteBar) setTotal(total int64) {
	if b.bar != nil {
		b.bar.SetTotal(total, false)
	}
}
