package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/walproxy"
	"github.com/pgporter/pgporter/mover"
)

// walOpts are the flags of wal-push and wal-fetch.
type walOpts struct {
	repo, repoPeer string
	retryFor       time.Duration
	proxy          string // wal-fetch --proxy
}

func (o *walOpts) flags(c *cobra.Command, what string) {
	f := c.Flags()
	f.StringVar(&o.repo, "repo", "", "repository: a directory or s3://BUCKET/PREFIX")
	f.StringVar(&o.repoPeer, "repo-peer", "", "repository served by the mover at ADDR#PEER_ID (instead of --repo); it must trust this home's ID with "+what)
	f.DurationVar(&o.retryFor, "retry-for", 2*time.Minute, "with --repo-peer: how long to retry through a lost connection to the repository mover")
	c.MarkFlagsMutuallyExclusive("repo", "repo-peer")
}

// check reports a usage mistake of cmd's repository flags.
func (o *walOpts) check(cmd string) error {
	switch {
	case o.proxy != "":
		return nil
	case o.repo == "" && o.repoPeer == "":
		return usagef("%s needs --repo DIR or --repo-peer ADDR#PEER_ID", cmd)
	case o.retryFor <= 0:
		return usagef("--retry-for must be positive, got %v", o.retryFor)
	}
	if o.repoPeer != "" {
		if _, _, err := mover.ParsePeerAddr(o.repoPeer); err != nil {
			return usageError{fmt.Errorf("--repo-peer: %w", err)}
		}
	}
	return nil
}

// dialRepoPeer connects to the repository mover of --repo-peer as the mover
// of --home. One connection: a WAL file is one request.
func (o *walOpts) dialRepoPeer(ctx context.Context, g *globals) (*mover.RemoteRepo, error) {
	addr, peer, err := mover.ParsePeerAddr(o.repoPeer)
	if err != nil {
		return nil, usageError{fmt.Errorf("--repo-peer: %w", err)}
	}
	rr, err := mover.DialRepo(ctx, g.home, addr, peer, mover.RemoteRepoOptions{Conns: 1, RetryFor: o.retryFor, Log: g.log})
	if err != nil {
		return nil, fmt.Errorf("repository mover %s: %w", o.repoPeer, err)
	}
	return rr, nil
}

func newWALPushCmd(g *globals) *cobra.Command {
	var o walOpts
	c := &cobra.Command{
		Use:   "wal-push (--repo DIR | --repo-peer ADDR#PEER_ID) PATH",
		Short: "Archive a WAL file into a repository (PostgreSQL's archive_command)",
		Long: `Archive the WAL file at PATH into the repository DIR, under its file name:
its content is chunked, deduplicated and compressed like a backup's, and the
command returns 0 only once the file is durable in the repository. Set it on
the server being backed up:

  archive_mode = on
  archive_command = 'pgporter wal-push --repo /srv/pgporter/repo %p'

It runs as the server's OS user (postgres), so that user must own the
repository; pgporter run as root keeps files it writes there owned by the
repository's owner. Pushing never waits on backups, exports, mounts or
publications of the same repository.

With --repo-peer the repository is another host's, served there by
'pgporter mover serve --repo', which must trust the mover identity under
--home with archive (mover trust --allow archive): that permission pushes
WAL files and nothing else. Only the chunks the repository lacks cross the
network, and 0 means the file is durable on the repository's host. The
identity under --home is the server's OS user's own: create it as that user
('pgporter mover init --home DIR'), and trust its ID on the repository host:

  archive_command = 'pgporter wal-push --home /var/lib/postgresql/pgporter --repo-peer repo1:7448#PEER_ID %p'

A file archived already with the same content succeeds at once (PostgreSQL
retries a push whose answer it lost). Another file of the same name is
refused (exit code 6), and the archive is left as it was: two clusters must
not archive into one repository.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runWALPush(cmd.Context(), g, o, args[0]) },
	}
	o.flags(c, "archive")
	// Failures only, and the first success after them: the newest WAL
	// record tells of every other success. A push to a repository mover
	// records nothing here: the repository is not on this host.
	recordRuns(g, c, &o.repo, always(chunkstore.OpWALPush), chunkstore.RecordRecovery)
	return c
}

func runWALPush(ctx context.Context, g *globals, o walOpts, path string) error {
	if err := o.check("wal-push"); err != nil {
		return err
	}
	if err := checkWALName(filepath.Base(path)); err != nil {
		return err
	}
	var already bool
	if o.repoPeer != "" {
		rr, err := o.dialRepoPeer(ctx, g)
		if err != nil {
			return err
		}
		defer rr.Close()
		if already, err = rr.PushWAL(ctx, path); err != nil {
			return err
		}
	} else {
		// No lock, and no chunk of anyone else's: a prune never makes it
		// wait or lose data. Its flushes stay short: bigger merges of the
		// index are left to backups (design/0007).
		r, err := chunkstore.OpenRepoWith(ctx, o.repo, chunkstore.RepoOptions{
			Store: chunkstore.LocalOptions{Logger: g.log, MaxMerge: walPushMaxMerge, WriteOnly: true},
			Lock:  chunkstore.LockNone,
		})
		if err != nil {
			return err
		}
		defer r.Close()
		if already, err = r.PushWAL(ctx, path); err != nil {
			return err
		}
		if err := r.Close(); err != nil {
			return err
		}
	}
	if already {
		g.log.Info("WAL file archived already, with the same content", "file", filepath.Base(path))
	}
	return nil
}

// walFetchLockWait is how long wal-fetch waits for a prune to finish.
const walFetchLockWait = 30 * time.Minute

// walPushMaxMerge caps the index entries one wal-push may rewrite: 1M
// entries are 57 MB, well under a second.
const walPushMaxMerge = 1 << 20

func newWALFetchCmd(g *globals) *cobra.Command {
	var o walOpts
	c := &cobra.Command{
		Use:   "wal-fetch (--repo DIR | --repo-peer ADDR#PEER_ID) NAME PATH",
		Short: "Fetch an archived WAL file from a repository (PostgreSQL's restore_command)",
		Long: `Write the archived WAL file NAME from the repository DIR to PATH, after
checking its content. For a server recovering from the archive:

  restore_command = 'pgporter wal-fetch --repo /srv/pgporter/repo %f %p'

With --repo-peer the repository is another host's, served there by
'pgporter mover serve --repo', which must trust the mover identity under
--home with read; every chunk is checked against its hash as it arrives:

  restore_command = 'pgporter wal-fetch --home /var/lib/postgresql/pgporter --repo-peer repo1:7448#PEER_ID %f %p'

A file the archive does not hold fails at once with exit code 8, as
PostgreSQL expects at the end of the archive. Any other failure (a
repository that cannot be read, a corrupt chunk, a repository mover that
cannot be reached within --retry-for) exits 255: PostgreSQL then stops the
recovery, where it would take a code from 1 to 125 for the end of the
archive and go on, promoting a server that lacks WAL the archive has. A
usage mistake exits 2. The repository is read only, never created.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := runWALFetch(cmd.Context(), g, o, args[0], args[1])
			var ue usageError
			if err == nil || errors.Is(err, chunkstore.ErrWALNotFound) || errors.As(err, &ue) || errors.Is(err, context.Canceled) {
				return err
			}
			return mark(err, errAbortRecovery)
		},
	}
	o.flags(c, "read")
	c.Flags().StringVar(&o.proxy, "proxy", "", "fetch through the Unix socket of an export's WAL proxy (set by pgporter in the throwaway instance's restore_command when the repository is a mover's)")
	_ = c.Flags().MarkHidden("proxy")
	c.MarkFlagsMutuallyExclusive("proxy", "repo")
	c.MarkFlagsMutuallyExclusive("proxy", "repo-peer")
	return c
}

func runWALFetch(ctx context.Context, g *globals, o walOpts, name, dst string) error {
	if err := o.check("wal-fetch"); err != nil {
		return err
	}
	if err := checkWALName(name); err != nil {
		return err
	}
	if o.proxy != "" {
		return walproxy.Fetch(ctx, o.proxy, name, dst)
	}
	if o.repoPeer != "" {
		rr, err := o.dialRepoPeer(ctx, g)
		if err != nil {
			return err
		}
		defer rr.Close()
		return rr.FetchWAL(ctx, name, dst)
	}
	// Reading must not create a repository.
	if _, err := chunkstore.ListRepo(ctx, o.repo); err != nil {
		return err
	}
	// A prune holds the repository for a while: waiting beats a failure,
	// which PostgreSQL would take for the end of the archive.
	r, err := chunkstore.OpenRepoWith(ctx, o.repo, chunkstore.RepoOptions{Store: chunkstore.LocalOptions{Logger: g.log}, LockWait: walFetchLockWait})
	if err != nil {
		return err
	}
	defer r.Close()
	return r.FetchWAL(ctx, name, dst)
}

func checkWALName(name string) error {
	if !chunkstore.ValidWALName(name) {
		return usagef("%q is not a WAL file name (a segment such as 000000010000000000000001, a .history, .partial or .backup file)", name)
	}
	return nil
}

// selfCommand is how a point-in-time export's instance runs this pgporter
// (orchestrator.Options.Self); empty means this process's executable.
// Tests set it: their executable is a test binary.
var selfCommand string
