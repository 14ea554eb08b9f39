package main

import "github.com/spf13/cobra"

func newUnpublishCmd(_ *globals) *cobra.Command {
	return stub("unpublish ID", "Stop a published instance and drop its copy-on-write layer", cobra.ArbitraryArgs)
}
