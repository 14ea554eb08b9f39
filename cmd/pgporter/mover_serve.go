package main

import "github.com/spf13/cobra"

func newMoverServeCmd(_ *globals) *cobra.Command {
	return stub("serve --listen ADDR [--root DIR]... [--repo DIR]", "Serve transfers, repository reads and orchestration", cobra.ArbitraryArgs)
}
