package main

import (
	"errors"
	"fmt"

	"github.com/pgporter/pgporter/orchestrator"

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
existed before stays. Dumps already delivered and verified stay. A session running in another process must be interrupted first.

Across hosts (--target), the target mover removes the DEST.partial directories
that this session's transfers left there (protocol 12). A target mover too old
to do so is named and they stay (the next export to the same destination takes
them over); the cancel succeeds. A target that cannot be reached: the rest is
cancelled, the directories left are named, the exit code is 4, and running the
cancel again asks the target again. The --to on the target stays.`,
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
			if s == nil || (err != nil && !errors.Is(err, orchestrator.ErrTargetLeft)) {
				return err
			}
			for _, d := range s.Removed {
				fmt.Fprintf(g.stdout, "removed %s (made by the export, left empty)\n", d)
			}
			for _, d := range s.RemovedOnTarget {
				fmt.Fprintf(g.stdout, "removed %s on the target mover\n", d)
			}
			for _, n := range s.TargetNotes {
				fmt.Fprintf(g.stderr, "note: %s\n", n)
			}
			fmt.Fprintf(g.stdout, "session %s cancelled\n", s.ID)
			// Left on the target (unreachable): exit 4, and a second
			// cancel asks it again.
			return err
		},
	}
}
