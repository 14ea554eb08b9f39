package main

import (
	"fmt"

	"github.com/pgporter/pgporter/mover"
	"github.com/spf13/cobra"
)

func newMoverInitCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "init",
		Short: "Create this mover's identity; prints the peer ID",
		Long: `Create this mover's identity under --home: a new Ed25519 key and a
self-signed certificate in DIR/identity/ (key.pem is readable by the owner
only). The peer ID, the SHA-256 of the certificate, is printed as the last
line of stdout; give it to the movers that will connect to this one, and
trust theirs here with 'pgporter mover trust'.

An existing identity is never replaced (peers trust its ID): running init
again prints the existing peer ID and exits 0.

Example:
  pgporter mover init --home /var/lib/pgporter
  ID=$(pgporter mover init --home /var/lib/pgporter)`,
		Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error { return runMoverInit(g, asJSON) },
	}
	c.Flags().BoolVar(&asJSON, "json", false, `print {"peer_id", "created", "dir"}, and nothing else, on stdout`)
	return c
}

func runMoverInit(g *globals, asJSON bool) error {
	id, created, err := mover.InitIdentity(g.home)
	if err != nil {
		return err
	}
	dir := mover.IdentityDir(g.home)
	if created {
		fmt.Fprintf(g.stderr, "created identity in %s\n", dir)
	} else {
		fmt.Fprintf(g.stderr, "identity exists; not replaced (%s)\n", dir)
	}
	fmt.Fprintln(g.stdout, id.ID)
	if asJSON {
		return g.writeJSON(map[string]any{"peer_id": id.ID, "created": created, "dir": dir})
	}
	return nil
}
