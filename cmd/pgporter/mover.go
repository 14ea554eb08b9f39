package main

import "github.com/spf13/cobra"

func newMoverCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "mover",
		Short: "Run and configure the mover daemon (identity, trust, serve)",
	}
	c.AddCommand(
		newMoverInitCmd(g),
		newMoverIDCmd(g),
		newMoverTrustCmd(g),
		newMoverUntrustCmd(g),
		newMoverPeersCmd(g),
		newMoverServeCmd(g),
	)
	return c
}
