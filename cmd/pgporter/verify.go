package main

import "github.com/spf13/cobra"

func newVerifyCmd(_ *globals) *cobra.Command {
	return stub("verify DUMP_DIR", "Check a received directory against its pgporter-manifest.json", cobra.ArbitraryArgs)
}
