package main

import "github.com/spf13/cobra"

func newMoverInitCmd(_ *globals) *cobra.Command {
	return stub("init", "Create this mover's identity; prints the peer ID", cobra.ArbitraryArgs)
}
