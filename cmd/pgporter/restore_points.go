package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/bytesize"
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
nothing.

For a backup of a running server (backup --from-server), RECOVERABLE TO says
how far an export --at can take it with the WAL archive (wal-push): until
the push of the last segment of the unbroken run of archived segments from
the backup's end; "gap" marks a missing segment past which the archive holds
more. After a failover, recovery follows the newest timeline that branched
from the backup's after its end (as recovery_target_timeline=latest, which
export --at follows by default): "on timeline N" says it ends on a later
timeline than the backup's. "-" is a backup without a WAL range (--pgdata), or
one whose end segment is not archived: it exports as of itself only.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if repo == "" {
				return usagef("restore-points needs --repo DIR")
			}
			rps, err := chunkstore.ListRepo(cmd.Context(), repo)
			if err != nil {
				return err
			}
			type point struct {
				chunkstore.RestorePoint
				Recoverable *chunkstore.Coverage `json:"recoverable,omitempty"`
			}
			points := make([]point, len(rps))
			archive, err := chunkstore.OpenWALArchive(cmd.Context(), repo)
			if err != nil {
				return err
			}
			for i := range rps {
				points[i].RestorePoint = rps[i]
				if points[i].Recoverable, err = archive.Coverage(cmd.Context(), &rps[i], chunkstore.TimelineLatest); err != nil {
					return err
				}
			}
			if asJSON {
				return g.writeJSON(map[string]any{"restore_points": points})
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIME\tVERSION\tDATABASES\tSIZE\tSTORED\tRECOVERABLE TO")
			for _, p := range points {
				to := "-"
				if c := p.Recoverable; c != nil && !c.To.IsZero() {
					to = c.To.UTC().Format("2006-01-02 15:04:05")
					if c.Timeline != p.WAL.Timeline {
						to += fmt.Sprintf(" on timeline %d", c.Timeline)
					}
					if c.GapAfter != "" {
						to += " (gap after " + c.GapAfter + ")"
					}
				} else if c != nil && c.Problem != "" {
					to = "- (" + c.Problem + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", p.ID, p.Time.UTC().Format("2006-01-02 15:04:05"),
					p.PGVersion, len(p.Databases), bytesize.Format(p.Size), bytesize.Format(p.StoredSize), to)
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVar(&repo, "repo", "", "repository: a directory or s3://BUCKET/PREFIX")
	c.Flags().BoolVar(&asJSON, "json", false, "print the restore points as one JSON object")
	return c
}
