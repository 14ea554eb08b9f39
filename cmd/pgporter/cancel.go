package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newCancelCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel SESSION_ID",
		Short: "Cancel an export session and remove everything it left",
		Long: `Cancel an export session: stop its instance, unmount its restore point, remove
its staging dumps and the partial directories on the target, and put back a
target directory that --overwrite had moved aside. A local --to directory (and
its parents) that the export created is removed if it is left empty; one that
existed before stays. Dumps already delivered and verified stay. A session running in another process must be interrupted first.`,
		Args: oneArg("cancel", "SESSION_ID (see 'pgporter sessions')"),
		RunE: func(cmd *cobra.Command, args []string) error {
			// An unknown session, or a --home that holds none, is not
			// found without making a journal there.
			if _, err := loadSession(g, args[0]); err != nil {
				return err
			}
			r, err := newRunnerOnly(g)
			if err != nil {
				return err
			}
			s, err := r.Cancel(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			for _, d := range s.Removed {
				fmt.Fprintf(g.stdout, "removed %s (made by the export, left empty)\n", d)
			}
			fmt.Fprintf(g.stdout, "session %s cancelled\n", s.ID)
			return nil
		},
	}
}
