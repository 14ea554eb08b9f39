package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgporter/pgporter/mover"
	"github.com/spf13/cobra"
)

func newMoverPeersCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "peers",
		Short: "List the peers this mover trusts",
		Long: `List the trust list under --home (DIR/trust.json): each trusted peer's ID,
name, permissions and when it was added, and the pgporter version it ran
when a connection from or to it last completed its handshake, by any
pgporter of this home (DIR/peers-seen.json; "unknown" until then). Change the
list with 'pgporter mover trust' and 'pgporter mover untrust'.

Example:
  pgporter mover peers --home /var/lib/pgporter
  pgporter mover peers --json | jq -r '.peers[].peer_id'`,
		Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error { return runMoverPeers(g, asJSON) },
	}
	c.Flags().BoolVar(&asJSON, "json", false, `print only {"peers": [{"peer_id", "name", "allow", "added", "self", "version", "software", "seen"}]} ("version" and "software" empty, "seen" absent, when never seen)`)
	return c
}

func runMoverPeers(g *globals, asJSON bool) error {
	ts, err := mover.OpenTrust(g.home)
	if err != nil {
		return err
	}
	peers := ts.List()
	seen := mover.LoadPeersSeen(g.home)
	var self mover.PeerID
	if id, err := mover.LoadIdentity(g.home); err == nil {
		self = id.ID
	}
	switch {
	case len(peers) == 0:
		fmt.Fprintf(g.stderr, "no trusted peers in %s; add one with: pgporter mover trust PEER_ID --allow PERMS\n", ts.Path())
	case !asJSON: // with --json, the object below is the whole of stdout
		tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PEER ID\tNAME\tALLOW\tADDED\tVERSION\tLAST SEEN")
		for _, p := range peers {
			name := p.Name
			if p.ID == self {
				name = strings.TrimSpace(name + " (self)")
			}
			version, at := "unknown", "never"
			if s, ok := seen[p.ID]; ok {
				version, at = s.Version(), s.Seen.Local().Format(time.DateTime)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, name, p.Perms, p.Added.Local().Format(time.DateTime), version, at)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if asJSON {
		list := make([]map[string]any, 0, len(peers))
		for _, p := range peers {
			m := peerJSON(p, false)
			m["self"] = p.ID == self
			s := seen[p.ID]
			m["version"], m["software"] = "", s.Software
			if s.Software != "" {
				m["version"] = s.Version()
			}
			if !s.Seen.IsZero() {
				m["seen"] = s.Seen.Format(time.RFC3339)
			}
			list = append(list, m)
		}
		return g.writeJSON(map[string]any{"peers": list})
	}
	return nil
}
