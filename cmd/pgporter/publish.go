package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/orchestrator"
)

type publishOpts struct {
	repo, restorePoint, listen, osUser string
	port                               int
	strictHBA, asJSON                  bool
	serve                              string // hidden: run as publication ID's background process
}

func newPublishCmd(g *globals) *cobra.Command {
	var o publishOpts
	c := &cobra.Command{
		Use:   "publish --repo DIR --restore-point ID|latest --port PORT",
		Short: "Publish a restore point as a live PostgreSQL instance",
		Long: `Mount a restore point and start PostgreSQL on it, listening on --listen
(default 127.0.0.1) and --port, then return: a background process (its log
in HOME/publications/ID/serve.log) holds the mount and the instance until
'pgporter unpublish ID'.

Users connect with the roles and passwords of the backup, and the backup's
own pg_hba.conf decides who may; --strict-hba replaces it by one that allows
only password logins from the listen address's network. Writes go to a
copy-on-write layer under HOME/publications/ID/cow, dropped by unpublish:
the repository never changes. While published, the repository is held
open by the publication.

A port already in use is refused (exit code 2).

Example:
  pgporter publish --repo /srv/pgporter/repo --restore-point latest --port 5433`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.serve != "" {
				return runPublishServe(cmd.Context(), g, o.serve)
			}
			return runPublish(cmd.Context(), g, o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.serve, "serve", "", "serve publication ID in the foreground (started by publish itself)")
	_ = f.MarkHidden("serve")
	f.StringVar(&o.repo, "repo", "", "repository directory")
	f.StringVar(&o.restorePoint, "restore-point", "", "restore point ID, or latest")
	f.IntVar(&o.port, "port", 0, "TCP port the instance listens on")
	f.StringVar(&o.listen, "listen", "127.0.0.1", "IP address the instance listens on, or * for all")
	f.BoolVar(&o.strictHBA, "strict-hba", false, "allow only password logins from the listen address's network instead of the backup's pg_hba.conf")
	f.StringVar(&o.osUser, "os-user", "postgres", "OS user that runs PostgreSQL")
	f.BoolVar(&o.asJSON, "json", false, "print one JSON object")
	return c
}

func runPublish(ctx context.Context, g *globals, o publishOpts) error {
	switch {
	case o.repo == "":
		return usagef("publish needs --repo DIR")
	case o.restorePoint == "":
		return usagef("publish needs --restore-point ID or --restore-point latest")
	case o.port == 0:
		return usagef("publish needs --port PORT")
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the pgporter executable: %w", err)
	}
	po := orchestrator.PublishOptions{
		Repo: o.repo, RestorePoint: o.restorePoint, Listen: o.listen, Port: o.port,
		StrictHBA: o.strictHBA, OSUser: o.osUser,
		Serve: []string{exe, "--home", g.home, "--log-level", g.logLevel, "publish", "--serve"},
	}
	if err := po.Validate(); err != nil {
		return usageError{err}
	}
	pb, err := orchestrator.NewPublisher(g.home, g.log)
	if err != nil {
		return err
	}
	p, err := pb.Publish(ctx, po)
	switch {
	case errors.Is(err, orchestrator.ErrPortInUse):
		return usageError{err}
	case errors.Is(err, chunkstore.ErrNoRestorePoint):
		return usageError{fmt.Errorf("%w (see 'pgporter restore-points --repo %s')", err, o.repo)}
	case errors.Is(err, chunkstore.ErrNotRepo):
		return usageError{err}
	case err != nil:
		return err
	}
	fmt.Fprintf(g.stdout, "published restore point %s as %s: PostgreSQL %s on %s port %d\n", p.RestorePoint, p.ID, p.Version, p.Listen, p.Port)
	fmt.Fprintf(g.stdout, "connect with a role of the backup and its password:\n  psql -h %s -p %d -U postgres postgres\n", p.Host(), p.Port)
	fmt.Fprintf(g.stdout, "writes are discarded by: pgporter unpublish %s\n", p.ID)
	if o.asJSON {
		return writeJSONLine(g.stdout, map[string]any{"id": p.ID, "host": p.Host(), "port": p.Port, "restore_point": p.RestorePoint, "state": p.State})
	}
	return nil
}
