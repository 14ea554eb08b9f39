package main

import "github.com/spf13/cobra"

func newMoverCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "mover",
		Short: "Run and configure the mover daemon (identity, trust, serve)",
	}
	c.AddCommand(
		stub("init", "Create this mover's identity; prints the peer ID", cobra.ArbitraryArgs),
		stub("id", "Print this mover's peer ID", cobra.ArbitraryArgs),
		stub("trust PEER_ID --allow send,read,orchestrate", "Trust a peer with permissions", cobra.ArbitraryArgs),
		stub("serve --listen ADDR [--root DIR]... [--repo DIR]", "Serve transfers, repository reads and orchestration", cobra.ArbitraryArgs),
	)
	return c
}
