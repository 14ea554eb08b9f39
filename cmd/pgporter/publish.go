package main

import "github.com/spf13/cobra"

func newPublishCmd(_ *globals) *cobra.Command {
	return stub("publish --repo DIR --restore-point ID|latest --port PORT", "Publish a restore point as a live PostgreSQL instance", cobra.ArbitraryArgs)
}
