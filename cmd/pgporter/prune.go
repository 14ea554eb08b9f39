package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/bytesize"
)

func newForgetCmd(g *globals) *cobra.Command {
	var (
		repo           string
		policy         chunkstore.ForgetPolicy
		dryRun, asJSON bool
		wait           time.Duration
	)
	c := &cobra.Command{
		Use:   "forget --repo DIR [ID...] [--keep-last N] [--keep-daily N] [--keep-weekly N]",
		Short: "Remove restore points from a repository's catalog (then 'pgporter prune')",
		Long: `Remove restore points from the catalog of the repository DIR: those named
by ID, and with --keep-* rules every point the rules do not keep: the newest
--keep-last, the newest of each of the --keep-daily most recent days that
have one, and of each of the --keep-weekly most recent ISO weeks (UTC). The
space goes only with 'pgporter prune'. --dry-run lists what would go.

It takes the repository's exclusive lock: while backups, exports, mounts,
publications, or peers of a repository mover use the repository, it waits
for them up to --wait (default: not at all), then fails (exit code 6),
naming them. wal-push goes on.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if repo == "" {
				return usagef("forget needs --repo DIR")
			}
			policy.IDs = args
			for name, n := range map[string]int{"--keep-last": policy.KeepLast, "--keep-daily": policy.KeepDaily, "--keep-weekly": policy.KeepWeekly} {
				if n < 0 {
					return usagef("%s %d: a count of restore points, 0 or more", name, n)
				}
			}
			if len(args) == 0 && policy.KeepLast <= 0 && policy.KeepDaily <= 0 && policy.KeepWeekly <= 0 {
				return usagef("forget needs restore point IDs or a --keep-last, --keep-daily or --keep-weekly rule")
			}
			if _, err := chunkstore.ListRepo(cmd.Context(), repo); err != nil {
				return err
			}
			r, err := chunkstore.OpenRepoWith(cmd.Context(), repo, chunkstore.RepoOptions{Store: chunkstore.LocalOptions{Logger: g.log}, Lock: chunkstore.LockExclusive, LockWait: wait})
			if err != nil {
				return err
			}
			defer r.Close()
			rps, err := r.List()
			if err != nil {
				return err
			}
			keep, forget, err := policy.Plan(rps)
			if err != nil {
				return err
			}
			if !dryRun {
				if err := r.Forget(forget); err != nil {
					return err
				}
			}
			ids := func(rps []chunkstore.RestorePoint) []string {
				out := []string{}
				for _, rp := range rps {
					out = append(out, rp.ID)
				}
				return out
			}
			if asJSON {
				return g.writeJSON(map[string]any{"kept": ids(keep), "forgotten": ids(forget), "dry_run": dryRun})
			}
			verb := "forgot"
			if dryRun {
				verb = "would forget"
			}
			for _, rp := range forget {
				fmt.Fprintf(g.stdout, "%s %s (%s)\n", verb, rp.ID, rp.Time.UTC().Format("2006-01-02 15:04:05"))
			}
			state := "forgotten"
			if dryRun {
				state = "to forget"
			}
			fmt.Fprintf(g.stdout, "%d restore points kept, %d %s; run 'pgporter prune --repo %s' to free their space\n", len(keep), len(forget), state, repo)
			return r.Close()
		},
	}
	f := c.Flags()
	f.StringVar(&repo, "repo", "", "repository directory")
	f.IntVar(&policy.KeepLast, "keep-last", 0, "keep the newest N restore points")
	f.IntVar(&policy.KeepDaily, "keep-daily", 0, "keep the newest restore point of each of the last N days that have one")
	f.IntVar(&policy.KeepWeekly, "keep-weekly", 0, "keep the newest restore point of each of the last N weeks that have one")
	f.BoolVar(&dryRun, "dry-run", false, "list what would be forgotten, change nothing")
	f.DurationVar(&wait, "wait", 0, "how long to wait for the repository's other users to let it go (e.g. 30m)")
	f.BoolVar(&asJSON, "json", false, "print one JSON object")
	recordRuns(g, c, &repo, unlessDry(&dryRun, chunkstore.OpForget), chunkstore.RecordRun)
	return c
}

func newPruneCmd(g *globals) *cobra.Command {
	var (
		repo           string
		dryRun, asJSON bool
		wait           time.Duration
	)
	c := &cobra.Command{
		Use:   "prune --repo DIR [--dry-run]",
		Short: "Free the space of what no restore point needs",
		Long: `Remove from the repository DIR the chunks no restore point references, the
WAL older than the oldest restore point's start (when that point is an
online backup with a WAL range; otherwise all WAL is kept), and the packs
left by writers that crashed over an hour ago (and, on object storage, the
multipart uploads they left unfinished over a day ago). Packs with nothing
live are deleted; packs mostly dead are rewritten. It is safe to interrupt: a rerun
finishes the work. --dry-run reports what would go.

It takes the repository's exclusive lock, waiting up to --wait for its
other users (see 'pgporter forget'); wal-push goes on meanwhile, and
wal-fetch waits for it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if repo == "" {
				return usagef("prune needs --repo DIR")
			}
			if _, err := chunkstore.ListRepo(cmd.Context(), repo); err != nil {
				return err
			}
			r, err := chunkstore.OpenRepoWith(cmd.Context(), repo, chunkstore.RepoOptions{Store: chunkstore.LocalOptions{Logger: g.log}, Lock: chunkstore.LockExclusive, LockWait: wait})
			if err != nil {
				return err
			}
			defer r.Close()
			st, err := r.Prune(cmd.Context(), dryRun)
			if err != nil {
				return err
			}
			if asJSON {
				return g.writeJSON(map[string]any{"dry_run": dryRun, "stats": st})
			}
			verb := "freed"
			if dryRun {
				verb = "would free"
			}
			fmt.Fprintf(g.stdout, "%s %s: %d packs deleted, %d rewritten, %d left by crashed writers; %d WAL files; %d live chunks of %d restore points kept (%s dead in packs mostly live)\n",
				verb, bytesize.Format(st.BytesFreed), st.PacksDeleted, st.PacksRepacked, st.PacksOrphaned, st.WALFilesPruned,
				st.LiveChunks, st.RestorePoints, bytesize.Format(st.BytesKeptDead))
			if st.UploadsAborted > 0 {
				verb = "aborted"
				if dryRun {
					verb = "would abort"
				}
				fmt.Fprintf(g.stdout, "%s %d multipart uploads left by writers killed over a day ago\n", verb, st.UploadsAborted)
			}
			return r.Close()
		},
	}
	c.Flags().StringVar(&repo, "repo", "", "repository directory")
	c.Flags().BoolVar(&dryRun, "dry-run", false, "report what would go, change nothing")
	c.Flags().DurationVar(&wait, "wait", 0, "how long to wait for the repository's other users to let it go (e.g. 30m)")
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	recordRuns(g, c, &repo, unlessDry(&dryRun, chunkstore.OpPrune), chunkstore.RecordRun)
	return c
}
