package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
)

func newRestorePointsCmd(g *globals) *cobra.Command {
	var (
		repo   string
		asJSON bool
	)
	c := &cobra.Command{
		Use:   "restore-points --repo DIR",
		Short: "List the restore points of a repository",
		Long: `List the restore points of the repository DIR, oldest first: ID, time
(UTC), PostgreSQL version, number of databases, plain size, and the bytes
each backup added to the repository. It reads the catalog only, and creates
nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if repo == "" {
				return usagef("restore-points needs --repo DIR")
			}
			rps, err := chunkstore.ListRepo(repo)
			if err != nil {
				return err
			}
			if asJSON {
				if rps == nil {
					rps = []chunkstore.RestorePoint{}
				}
				return g.writeJSON(map[string]any{"restore_points": rps})
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIME\tVERSION\tDATABASES\tSIZE\tSTORED")
			for _, rp := range rps {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", rp.ID, rp.Time.UTC().Format("2006-01-02 15:04:05"),
					rp.PGVersion, len(rp.Databases), humanSize(rp.Size), humanSize(rp.StoredSize))
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVar(&repo, "repo", "", "repository directory")
	c.Flags().BoolVar(&asJSON, "json", false, "print the restore points as one JSON object")
	return c
}
