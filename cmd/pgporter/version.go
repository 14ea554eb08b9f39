package main

import (
	"fmt"

	"github.com/pgporter/pgporter/internal/buildinfo"
	"github.com/spf13/cobra"
)

func newVersionCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "version",
		Short: "Print this build's release, commit and build date",
		Long: `Print which build of pgporter this is: its release, commit and build date,
and the Go toolchain that built it. 'make build' records them; a plain
'go build' or 'go install' falls back to what Go recorded (the module
version and the VCS revision). Movers tell each other their builds when they
connect. Same as 'pgporter --version'.`,
		Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			in := buildinfo.Get()
			if asJSON {
				return g.writeJSON(in)
			}
			_, err := fmt.Fprintln(g.stdout, in)
			return err
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, `print {"version", "commit", "date", "modified", "go_version"} instead`)
	return c
}
