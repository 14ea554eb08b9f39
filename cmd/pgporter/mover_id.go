package main

import (
	"fmt"

	"github.com/pgporter/pgporter/mover"
	"github.com/spf13/cobra"
)

func newMoverIDCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "id",
		Short: "Print this mover's peer ID",
		Long: `Print the peer ID of the identity under --home, created by 'pgporter mover
init'. Other movers put this ID in their trust lists, and clients name this
mover by it ('pgporter send --peer ID').

Example:
  pgporter mover id --home /var/lib/pgporter`,
		Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			id, err := mover.LoadIdentity(g.home)
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, id.ID)
			if asJSON {
				return g.writeJSON(map[string]any{"peer_id": id.ID})
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, `print {"peer_id"}, and nothing else, on stdout`)
	return c
}
