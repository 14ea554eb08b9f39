package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/config"
	"github.com/pgporter/pgporter/orchestrator"
)

type publishOpts struct {
	repo, repoPeer, restorePoint, listen, osUser string
	retryFor                                     time.Duration
	port                                         int
	strictHBA, asJSON                            bool
	onRestart                                    string
	auth                                         string
	on                                           string // a remote mover, ADDR#PEER_ID
	resume                                       string // serve a dead publication again
	serve                                        string // hidden: run as publication ID's background process
	passwordFile                                 string // of an encrypted --repo
	at, atLSN, atName, atTimeline                string
}

func newPublishCmd(g *globals) *cobra.Command {
	var o publishOpts
	c := &cobra.Command{
		Use:   "publish (--repo DIR | --repo-peer ADDR#PEER_ID) --restore-point ID|latest --port PORT [--on ADDR#PEER_ID]",
		Short: "Publish a restore point as a live PostgreSQL instance",
		Long: `Mount a restore point and start PostgreSQL on it, listening on --listen
(default 127.0.0.1) and --port, then return: a background process (its log
in HOME/publications/ID/serve.log) holds the mount and the instance until
'pgporter unpublish ID'.

Users connect with the roles and passwords of the backup: by default
(--auth password) only password logins, over the listen address's network
and the instance's private socket. --auth backup-hba uses the backup's own
pg_hba.conf and pg_ident.conf instead: a "trust" line there (the official
Docker image ships "host all all all trust") lets anyone who reaches the
port in as any role, superuser included. --strict-hba, the old spelling of
the default, is accepted and deprecated. Writes go to a
copy-on-write layer under HOME/publications/ID/cow, dropped by unpublish:
the repository never changes. Backups, exports and other publications of
the same repository run alongside.

A port already in use is refused (exit code 2).

With --at TIME (or --at-lsn, --at-name, --at end) the publication is as of a
point in time, as with export --at: the newest restore point taken before
TIME, whose instance replays the repository's WAL archive to the target and
is promoted before it opens; a resumed publication does not replay again.

That layer is on disk (the upper layer of an overlay over the mount), so a
publication outlives its background process: if that process dies (SIGKILL,
a crash) or is stopped by anything but unpublish (a shutdown), 'pgporter
published' reports the publication dead, and
'pgporter publish --resume ID' serves it again on the same layer, address and
port (the instance does crash recovery, as after a power loss: committed
writes are there), while 'pgporter unpublish ID' drops it. 'pgporter mover
serve' does one or the other when it starts, for every dead publication of
its home, as --on-restart says: restart (the default) or cleanup.

With --repo-peer the repository is another host's, served by 'pgporter mover
serve --repo' there, which must trust this home's mover ID ('pgporter mover
id') with read: the restore point's chunks are fetched over the mover
protocol as the instance reads them, nothing is copied ahead. If that host
becomes unreachable the publication stays up: a read waits and reconnects
for up to --retry-for (then that read fails with an I/O error, which fails
the query, not the publication), and 'publish --resume' or a restarting
'mover serve' connect to the same repository mover again.

With --on ADDR#PEER_ID the publication runs on that mover's host, under the
mover's home: --repo is a path there (or --repo-peer names a repository
mover as that host reaches it, which must then trust that mover's ID with
read), the mover must trust this home's ID with orchestrate, and
'published', 'unpublish', 'publish --resume' and 'export --published' here
reach it through the mover.

Examples:
  pgporter publish --repo /srv/pgporter/repo --restore-point latest --port 5433
  pgporter publish --repo-peer 10.0.0.5:7448#REPO-ID --restore-point latest --port 5433
  pgporter publish --on 10.0.0.6:7448#MOVER-ID --repo /srv/pgporter/repo \
      --restore-point latest --listen 10.0.0.6 --port 5433 --on-restart cleanup
  pgporter publish --resume p-20260101-120000-a1b2c3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.passwordFile = passwordFileFlag(cmd)
			switch {
			case o.serve != "":
				return runPublishServe(cmd.Context(), g, o.serve)
			case o.resume != "":
				return runPublishResume(cmd, g, o)
			case o.on != "":
				return runPublishOn(cmd.Context(), g, o)
			}
			return runPublish(cmd.Context(), g, o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.serve, "serve", "", "serve publication ID in the foreground (started by publish itself)")
	_ = f.MarkHidden("serve")
	f.StringVar(&o.repo, "repo", "", "repository: a directory or s3://BUCKET/PREFIX")
	f.StringVar(&o.repoPeer, "repo-peer", "", "repository served by the mover at ADDR#PEER_ID (instead of --repo); it must trust the publishing home's ID with read")
	f.DurationVar(&o.retryFor, "retry-for", 2*time.Minute, "with --repo-peer: how long a read retries through a lost connection to the repository mover")
	f.StringVar(&o.restorePoint, "restore-point", "", "restore point ID, or latest")
	f.IntVar(&o.port, "port", 0, "TCP port the instance listens on")
	f.StringVar(&o.listen, "listen", "127.0.0.1", "IP address the instance listens on, or * for all")
	f.StringVar(&o.auth, "auth", orchestrator.AuthPassword, "how clients authenticate: password (only password logins from the listen address's network) or backup-hba (the backup's own pg_hba.conf, trust lines included)")
	f.BoolVar(&o.strictHBA, "strict-hba", false, "allow only password logins (the default now)")
	_ = f.MarkDeprecated("strict-hba", "password logins are the default (--auth password); --auth backup-hba keeps the backup's pg_hba.conf")
	f.StringVar(&o.osUser, "os-user", "postgres", "OS user that runs PostgreSQL")
	f.StringVar(&o.onRestart, "on-restart", orchestrator.OnRestartRestart, "what 'mover serve' does with the publication when it finds its background process dead: restart (same layer, address and port) or cleanup (unpublish)")
	f.StringVar(&o.on, "on", "", "publish on the host of mover ADDR#PEER_ID (it must trust this home's ID with orchestrate); --repo is a path there")
	f.StringVar(&o.resume, "resume", "", "serve dead publication ID again on its copy-on-write layer, address and port")
	f.BoolVar(&o.asJSON, "json", false, "print one JSON object")
	f.StringVar(&o.at, "at", "", "publish as of this time (as export --at), or 'end' for the end of the WAL archive: the instance first replays the repository's archive")
	f.StringVar(&o.atLSN, "at-lsn", "", "publish as of this WAL location")
	f.StringVar(&o.atName, "at-name", "", "publish as of this named restore point")
	f.StringVar(&o.atTimeline, "at-timeline", "", "with --at, --at-lsn or --at-name: the timeline recovery follows (latest, current, or an ID; as export --at-timeline)")
	addCacheSizeFlag(f)
	c.MarkFlagsMutuallyExclusive("repo", "repo-peer")
	c.MarkFlagsMutuallyExclusive("at", "at-lsn", "at-name")
	return c
}

// serveCommand is the background process of a publication on this host.
func serveCommand(g *globals) (orchestrator.ServeCommand, error) {
	exe, err := os.Executable()
	if err != nil {
		return orchestrator.ServeCommand{}, fmt.Errorf("finding the pgporter executable: %w", err)
	}
	return orchestrator.ServeCommand{Args: []string{exe, "--home", g.home, "--log-level", g.logLevel, "--log-format", g.logFormat, "publish", "--serve"}}, nil
}

// runPublishResume serves a dead publication again.
func runPublishResume(cmd *cobra.Command, g *globals, o publishOpts) error {
	for _, name := range []string{"repo", "repo-peer", "retry-for", "restore-point", "port", "on", "listen", "strict-hba", "auth", "on-restart"} {
		if config.OnCommandLine(cmd.Flags(), name) {
			return usagef("publish --resume ID takes no --%s: the publication keeps its own", name)
		}
	}
	serve, err := serveCommand(g)
	if err != nil {
		return err
	}
	pb, err := orchestrator.NewPublisher(g.home, g.log)
	if err != nil {
		return err
	}
	p, err := pb.Resume(cmd.Context(), o.resume, serve)
	if err != nil {
		return err // ErrNoPublication: not found; ErrNotDead: a conflict
	}
	return printPublished(g, p, o.asJSON)
}

func printPublished(g *globals, p *orchestrator.Publication, asJSON bool) error {
	fmt.Fprintf(g.stdout, "published restore point %s as %s: PostgreSQL %s on %s port %d\n", p.RestorePoint, p.ID, p.Version, p.Listen, p.Port)
	fmt.Fprintf(g.stdout, "connect with a role of the backup and its password:\n  psql -h %s -p %d -U postgres postgres\n", p.Host(), p.Port)
	fmt.Fprintf(g.stdout, "writes are discarded by: pgporter unpublish %s\n", p.ID)
	if asJSON {
		return g.writeJSON(map[string]any{"id": p.ID, "host": p.Host(), "port": p.Port, "restore_point": p.RestorePoint, "state": p.State, "on": p.On})
	}
	return nil
}

// checkPublishRepo refuses anything but exactly one of --repo and
// --repo-peer; with on, both name what the mover's host reaches.
func checkPublishRepo(o publishOpts, on bool) error {
	switch {
	case o.repo == "" && o.repoPeer == "" && on:
		return usagef("publish --on needs --repo DIR (a path on the mover's host) or --repo-peer ADDR#PEER_ID (as the mover's host reaches it)")
	case o.repo == "" && o.repoPeer == "":
		return usagef("publish needs --repo DIR or --repo-peer ADDR#PEER_ID")
	case o.retryFor <= 0:
		return usagef("--retry-for must be positive, got %v", o.retryFor)
	}
	return nil
}

// publishOptions are the options of publish and publish --on.
func publishOptions(o publishOpts, serve []string) (orchestrator.PublishOptions, error) {
	at, err := parseAt(o.at, o.atLSN, o.atName, o.atTimeline)
	if err != nil {
		return orchestrator.PublishOptions{}, err
	}
	po := orchestrator.PublishOptions{
		Repo: o.repo, RepoPeer: o.repoPeer, RestorePoint: o.restorePoint, Listen: o.listen, Port: o.port,
		Auth: o.auth, StrictHBA: o.strictHBA, OSUser: o.osUser, OnRestart: o.onRestart,
		Serve: serve, At: at, Self: selfCommand,
	}
	if o.passwordFile != "" {
		// For the publication's own process, which may run from anywhere.
		if po.PasswordFile, err = filepath.Abs(o.passwordFile); err != nil {
			return orchestrator.PublishOptions{}, err
		}
	}
	if o.repoPeer != "" {
		po.RetryFor = o.retryFor
	}
	return po, nil
}

func runPublish(ctx context.Context, g *globals, o publishOpts) error {
	if err := checkPublishRepo(o, false); err != nil {
		return err
	}
	switch {
	case o.restorePoint == "":
		return usagef("publish needs --restore-point ID or --restore-point latest")
	case o.port == 0:
		return usagef("publish needs --port PORT")
	}
	serve, err := serveCommand(g)
	if err != nil {
		return err
	}
	po, err := publishOptions(o, serve.Args)
	if err != nil {
		return err
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
	case errors.Is(err, chunkstore.ErrNoRestorePoint) && o.repoPeer == "":
		return fmt.Errorf("%w (see 'pgporter restore-points --repo %s')", err, o.repo)
	case err != nil:
		return err // exitCode classifies: a port in use, no such repository
	}
	return printPublished(g, p, o.asJSON)
}

// runPublishOn publishes on a remote mover's host.
func runPublishOn(ctx context.Context, g *globals, o publishOpts) error {
	if err := checkPublishRepo(o, true); err != nil {
		return err
	}
	if o.passwordFile != "" {
		return usagef("publish --on takes no --repo-password-file: the mover's host opens the repository with its own passphrase (PGPORTER_REPO_PASSWORD_FILE in its environment)")
	}
	switch {
	case o.restorePoint == "":
		return usagef("publish needs --restore-point ID or --restore-point latest")
	case o.port == 0:
		return usagef("publish needs --port PORT")
	}
	po, err := publishOptions(o, []string{"(the mover's)"})
	if err != nil {
		return err
	}
	if err := po.Validate(); err != nil {
		return usageError{err}
	}
	pb, err := orchestrator.NewPublisher(g.home, g.log)
	if err != nil {
		return err
	}
	p, err := pb.PublishOn(ctx, o.on, po)
	if err != nil {
		return err
	}
	return printPublished(g, p, o.asJSON)
}
