package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
)

type backupOpts struct {
	repo, pgdata, fromServer string
	json                     bool
}

func newBackupCmd(g *globals) *cobra.Command {
	var o backupOpts
	c := &cobra.Command{
		Use:   "backup --repo DIR (--pgdata DIR | --from-server CONNSTRING)",
		Short: "Back up a PostgreSQL data directory into a repository",
		Long: `Back up the data directory of a stopped PostgreSQL cluster (or a
crash-consistent copy of one, such as a filesystem snapshot) into the
repository DIR, creating it on first use, as a new restore point.

Files are cut into content-defined chunks and stored once: a later backup
of the same cluster stores only what changed. Symlinks (pg_tblspc) are
recorded, not followed. An interrupted backup leaves no restore point; rerun
it and it reuses the chunks already stored.

Prints the restore point ID as the last line (with --json, a JSON object
with "restore_point").

Example:
  pgporter backup --repo /srv/pgporter/repo --pgdata /var/lib/postgresql/15/main`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBackup(cmd, g, o) },
	}
	f := c.Flags()
	f.StringVar(&o.repo, "repo", "", "repository directory (created on first use)")
	f.StringVar(&o.pgdata, "pgdata", "", "data directory of a stopped cluster, or a crash-consistent copy")
	f.StringVar(&o.fromServer, "from-server", "", "stream a pg_basebackup of a running server (not built yet)")
	f.BoolVar(&o.json, "json", false, "print a JSON summary as the last line")
	return c
}

func runBackup(cmd *cobra.Command, g *globals, o backupOpts) error {
	switch {
	case o.repo == "":
		return usagef("backup needs --repo DIR")
	case o.pgdata != "" && o.fromServer != "":
		return usagef("backup takes --pgdata or --from-server, not both")
	case o.fromServer != "":
		return notBuilt("backup --from-server")
	case o.pgdata == "":
		return usagef("backup needs --pgdata DIR (or --from-server CONNSTRING)")
	}
	r, err := chunkstore.OpenRepo(o.repo, g.log)
	if err != nil {
		return err
	}
	defer r.Close()
	ctx := cmd.Context()
	var bar *byteBar
	start := time.Now()
	rp, err := r.Backup(ctx, o.pgdata, chunkstore.BackupOptions{Progress: func(done, total int64) {
		if bar == nil {
			bar = newByteBar(ctx, g.stderr, "backup", total)
		}
		bar.set(done)
	}})
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
	fmt.Fprintf(g.stdout, "backed up %s: %d files, %s in %.1fs (%.0f MB/s); stored %s new\n",
		o.pgdata, rp.Files, humanSize(rp.Size), secs, float64(rp.Size)/1e6/max(secs, 1e-9), humanSize(rp.StoredSize))
	if o.json {
		return writeJSONLine(g.stdout, map[string]any{
			"restore_point": rp.ID, "time": rp.Time, "pg_version": rp.PGVersion, "system_id": rp.SystemID,
			"files": rp.Files, "bytes": rp.Size, "stored_bytes": rp.StoredSize, "seconds": secs,
		})
	}
	fmt.Fprintln(g.stdout, rp.ID)
	return nil
}
