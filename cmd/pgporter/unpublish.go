package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/orchestrator"
)

func newUnpublishCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "unpublish ID",
		Short: "Stop a published instance and drop its copy-on-write layer",
		Long: `Stop the instance of publication ID, unmount its restore point and drop its
copy-on-write layer: every write made through the publication is gone. A
publication whose background process died is cleaned up all the same. One
made with 'publish --on' is ended on its mover. Unpublishing a publication
that is gone already does nothing.`,
		Args: oneArg("unpublish", "publication ID (see 'pgporter published')"),
		RunE: func(cmd *cobra.Command, args []string) error {
			// An unknown publication, or a --home that holds none, is not
			// found without making a journal there.
			if _, err := orchestrator.ReadJournal(g.home).GetPublication(args[0]); err != nil {
				return err
			}
			pb, err := orchestrator.NewPublisher(g.home, g.log)
			if err != nil {
				return err
			}
			p, err := pb.Unpublish(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "unpublished %s (restore point %s, port %d)\n", p.ID, p.RestorePoint, p.Port)
			return nil
		},
	}
}
