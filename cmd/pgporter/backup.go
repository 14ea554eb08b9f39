package main

import "github.com/spf13/cobra"

func newBackupCmd(_ *globals) *cobra.Command {
	return stub("backup --repo DIR (--pgdata DIR | --from-server CONNSTRING)", "Back up a PostgreSQL data directory into a repository", cobra.ArbitraryArgs)
}
