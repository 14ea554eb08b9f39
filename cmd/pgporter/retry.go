package main

import "github.com/spf13/cobra"

func newRetryCmd(_ *globals) *cobra.Command {
	return stub("retry SESSION_ID", "Continue a failed or interrupted export session", cobra.ArbitraryArgs)
}
