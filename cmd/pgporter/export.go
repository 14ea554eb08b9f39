package main

import "github.com/spf13/cobra"

func newExportCmd(_ *globals) *cobra.Command {
	return stub("export --repo DIR --restore-point ID|latest --db NAME... --to DIR", "Export databases from a restore point to a target directory", cobra.ArbitraryArgs)
}
