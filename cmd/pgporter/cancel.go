package main

import "github.com/spf13/cobra"

func newCancelCmd(_ *globals) *cobra.Command {
	return stub("cancel SESSION_ID", "Cancel an export session and clean up everything it left", cobra.ArbitraryArgs)
}
