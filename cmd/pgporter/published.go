package main

import "github.com/spf13/cobra"

func newPublishedCmd(_ *globals) *cobra.Command {
	return stub("published", "List published instances", cobra.ArbitraryArgs)
}
