package main

import "github.com/spf13/cobra"

func newSessionsCmd(_ *globals) *cobra.Command {
	return stub("sessions [show ID]", "List export sessions, or show one", cobra.ArbitraryArgs)
}
