package main

import (
	"github.com/spf13/cobra"
)

func newRetryCmd(g *globals) *cobra.Command {
	var asJSON bool
	var passwordFile string
	var port int
	c := &cobra.Command{
		Use:   "retry SESSION_ID",
		Short: "Continue a failed or interrupted export session",
		Long: `Continue an export session from its first unfinished step. A finished dump
is not redone; a transfer sends only the chunks the target does not hold. What a
crashed run left (an instance, a stale mount) is cleaned first. Retrying a
finished session does nothing and says so.

The PostgreSQL password is looked up again, as for export.`,
		Args: oneArg("retry", "SESSION_ID (see 'pgporter sessions')"),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := loadSession(g, args[0])
			if err != nil {
				return err
			}
			if passwordFile == "" {
				passwordFile = s.Plan.PasswordFile
			}
			r, err := retryRunner(g, &credentials{user: s.Plan.PGUser, userSet: true, passwordFile: passwordFile,
				port: port, portSet: cmd.Flags().Changed("source-port"), auth: s.Plan.Auth, published: s.Plan.Published != ""})
			if err != nil {
				return err
			}
			return driveSession(cmd, g, r, s.ID, asJSON)
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON summary, and nothing else, on stdout")
	c.Flags().StringVar(&passwordFile, "password-file", "", "file whose first line is the PostgreSQL user's password (default: the export's)")
	c.Flags().IntVar(&port, "source-port", 5432, "port of the backed-up server, to match ~/.pgpass entries")
	return c
}
