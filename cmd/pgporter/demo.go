package main

import "github.com/spf13/cobra"

func newDemoCmd(_ *globals) *cobra.Command {
	return stub("demo", "Run an end-to-end export on sample data", cobra.ArbitraryArgs)
}
