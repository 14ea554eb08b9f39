package main

import "github.com/spf13/cobra"

func newMoverTrustCmd(_ *globals) *cobra.Command {
	return stub("trust PEER_ID --allow send,read,orchestrate", "Trust a peer with permissions", cobra.ArbitraryArgs)
}
