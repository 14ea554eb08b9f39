package main

import (
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
)

func newWALPushCmd(g *globals) *cobra.Command {
	var repo string
	c := &cobra.Command{
		Use:   "wal-push --repo DIR PATH",
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

A file archived already with the same content succeeds at once (PostgreSQL
retries a push whose answer it lost). Another file of the same name is
refused (exit code 6), and the archive is left as it was: two clusters must
not archive into one repository.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if repo == "" {
				return usagef("wal-push needs --repo DIR")
			}
			if err := checkWALName(filepath.Base(args[0])); err != nil {
				return err
			}
			// No lock, and no chunk of anyone else's: a prune never makes
			// it wait or lose data. Its flushes stay short: bigger merges
			// of the index are left to backups (design/0007).
			r, err := chunkstore.OpenRepoWith(repo, chunkstore.RepoOptions{
				Store: chunkstore.LocalOptions{Logger: g.log, MaxMerge: walPushMaxMerge, WriteOnly: true},
				Lock:  chunkstore.LockNone,
			})
			if err != nil {
				return err
			}
			defer r.Close()
			already, err := r.PushWAL(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if already {
				g.log.Info("WAL file archived already, with the same content", "file", filepath.Base(args[0]))
			}
			return r.Close()
		},
	}
	c.Flags().StringVar(&repo, "repo", "", "repository directory")
	// Failures only, and the first success after them: the newest WAL
	// record tells of every other success.
	recordRuns(g, c, &repo, always(chunkstore.OpWALPush), chunkstore.RecordRecovery)
	return c
}

// walFetchLockWait is how long wal-fetch waits for a prune to finish.
const walFetchLockWait = 30 * time.Minute

// walPushMaxMerge caps the index entries one wal-push may rewrite: 1M
// entries are 57 MB, well under a second.
const walPushMaxMerge = 1 << 20

func newWALFetchCmd(g *globals) *cobra.Command {
	var repo string
	c := &cobra.Command{
		Use:   "wal-fetch --repo DIR NAME PATH",
		Short: "Fetch an archived WAL file from a repository (PostgreSQL's restore_command)",
		Long: `Write the archived WAL file NAME from the repository DIR to PATH, after
checking its content. For a server recovering from the archive:

  restore_command = 'pgporter wal-fetch --repo /srv/pgporter/repo %f %p'

A file the archive does not hold fails at once with exit code 8, as
PostgreSQL expects at the end of the archive. The repository is read only,
never created.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if repo == "" {
				return usagef("wal-fetch needs --repo DIR")
			}
			if err := checkWALName(args[0]); err != nil {
				return err
			}
			// Reading must not create a repository.
			if _, err := chunkstore.ListRepo(repo); err != nil {
				return err
			}
			// A prune holds the repository for a while: waiting beats a
			// failure, which PostgreSQL would take for the end of the
			// archive.
			r, err := chunkstore.OpenRepoWith(repo, chunkstore.RepoOptions{Store: chunkstore.LocalOptions{Logger: g.log}, LockWait: walFetchLockWait})
			if err != nil {
				return err
			}
			defer r.Close()
			return r.FetchWAL(cmd.Context(), args[0], args[1])
		},
	}
	c.Flags().StringVar(&repo, "repo", "", "repository directory")
	return c
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
