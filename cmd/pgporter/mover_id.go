package main

import "github.com/spf13/cobra"

func newMoverIDCmd(_ *globals) *cobra.Command {
	return stub("id", "Print this mover's peer ID", cobra.ArbitraryArgs)
}
