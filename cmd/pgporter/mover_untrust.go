package main

import (
	"fmt"

	"github.com/pgporter/pgporter/mover"
	"github.com/spf13/cobra"
)

func newMoverUntrustCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "untrust PEER_ID",
		Short: "Remove a peer from the trust list",
		Long: `Remove PEER_ID from this mover's trust list (DIR/trust.json under --home).
A running 'pgporter mover serve' notices within a second, without a restart:
it refuses the peer's new connections and closes those already open, which
ends the peer's transfers, chunk fetches and jobs there. Removing a peer
that is not in the list is an error (exit 1).

Example:
  pgporter mover untrust D3Z7DPI-FUWIRPF-N46RWIE-NFMNG5B-AW5DQKH-SGURFXK-JD4ADVC-Y23IMAP`,
		Args: oneArg("untrust", "PEER_ID"),
		RunE: func(_ *cobra.Command, args []string) error {
			id, err := mover.ParsePeerID(args[0])
			if err != nil {
				return usageError{fmt.Errorf("PEER_ID: %w", err)}
			}
			ts, err := mover.OpenTrust(g.home)
			if err != nil {
				return err
			}
			p, _ := ts.Lookup(id)
			if err := ts.Untrust(id); err != nil {
				return err
			}
			label := ""
			if p.Name != "" {
				label = fmt.Sprintf(" (%s)", p.Name)
			}
			fmt.Fprintf(g.stdout, "untrusted %s%s\n", id, label)
			return nil
		},
	}
	return c
}
