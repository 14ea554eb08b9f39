package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/bytesize"
)

func newRepoCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "repo",
		Short: "Work on whole repositories (copy one into another)",
	}
	c.AddCommand(newRepoCopyCmd(g))
	return c
}

func newRepoCopyCmd(g *globals) *cobra.Command {
	var (
		from, to string
		asJSON   bool
	)
	c := &cobra.Command{
		Use:   "copy --from REPO --to REPO",
		Short: "Copy the restore points one repository lacks from another, chunks deduplicated",
		Long: `Copies into --to every restore point of --from that --to does not hold,
oldest first, with the chunks of each that --to lacks. Either may be a
directory or s3://BUCKET/PREFIX: moving a repository to object storage,
back, or between buckets. --to is created if it is a directory that does
not exist yet (a bucket must exist).

Each restore point appears in --to only once all its chunks are durable
there, so an interrupted copy leaves --to consistent; run it again and it
copies only what is still missing. Every chunk is read back and checked
against its BLAKE3 before it is stored.

Examples:
  pgporter repo copy --from /srv/pgporter/repo --to s3://backups/prod
  pgporter repo copy --from s3://backups/prod --to s3://backups-dr/prod --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return usagef("repo copy needs --from REPO and --to REPO")
			}
			ctx := cmd.Context()
			if _, err := chunkstore.ListRepo(ctx, from); err != nil { // a typo must create nothing
				return err
			}
			src, err := chunkstore.OpenRepo(ctx, from, g.log)
			if err != nil {
				return err
			}
			defer src.Close()
			dst, err := chunkstore.OpenRepo(ctx, to, g.log)
			if err != nil {
				return err
			}
			defer dst.Close()
			st, err := chunkstore.CopyRepo(ctx, src, dst, func(st chunkstore.CopyStats) {
				fmt.Fprintf(g.stderr, "copied %d restore points: %d chunks, %s\n", st.Points, st.Chunks, bytesize.Format(st.Bytes))
			})
			if err != nil {
				return err
			}
			if err := dst.Close(); err != nil {
				return err
			}
			if asJSON {
				return g.writeJSON(st)
			}
			fmt.Fprintf(g.stdout, "%d restore points copied (%d present already): %d chunks, %s (%d chunks present already)\n",
				st.Points, st.PointsHeld, st.Chunks, bytesize.Format(st.Bytes), st.ChunksHeld)
			return nil
		},
	}
	c.Flags().StringVar(&from, "from", "", "repository to copy from: a directory or s3://BUCKET/PREFIX")
	c.Flags().StringVar(&to, "to", "", "repository to copy into: a directory or s3://BUCKET/PREFIX")
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON summary, and nothing else, on stdout")
	return c
}
