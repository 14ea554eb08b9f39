package main

import "github.com/spf13/cobra"

func newRestoreCmd(_ *globals) *cobra.Command {
	return stub("restore DUMP_DIR --dbname NAME", "Verify a dump, then restore it with pg_restore", cobra.ArbitraryArgs)
}
