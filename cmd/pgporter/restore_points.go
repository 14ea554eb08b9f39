package main

import "github.com/spf13/cobra"

func newRestorePointsCmd(_ *globals) *cobra.Command {
	return stub("restore-points --repo DIR", "List the restore points of a repository", cobra.ArbitraryArgs)
}
