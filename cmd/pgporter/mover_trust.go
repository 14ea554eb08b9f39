package main

import (
	"fmt"
	"time"

	"github.com/pgporter/pgporter/mover"
	"github.com/spf13/cobra"
)

type trustOpts struct {
	allow, name string
	json        bool
}

func newMoverTrustCmd(g *globals) *cobra.Command {
	var o trustOpts
	c := &cobra.Command{
		Use:   "trust PEER_ID --allow send,read,orchestrate,archive [--name NAME]",
		Short: "Trust a peer with permissions",
		Long: `Add the mover PEER_ID (what 'pgporter mover id' prints on its host) to this
mover's trust list, DIR/trust.json under --home. Only trusted peers get
through the TLS handshake; what they may do then is set by --allow, a
comma-separated list of:

  send         write into this mover's --root directories (send dumps here)
  read         read this mover's backup repository (restore points, chunks,
               WAL: mount, export and publish --repo-peer, wal-fetch)
  orchestrate  command this mover (mount, dump, clean up)
  archive      push WAL files into this mover's repository (wal-push
               --repo-peer as archive_command), and nothing else: no read

If PEER_ID is trusted already, its permissions are REPLACED by --allow, not
merged: list every permission it should keep. --name is a label for people;
without it an existing name is kept.

A running 'pgporter mover serve' picks the change up without a restart.
Trusting this mover's own ID is allowed (loopback use).

Examples:
  pgporter mover trust D3Z7DPI-FUWIRPF-N46RWIE-NFMNG5B-AW5DQKH-SGURFXK-JD4ADVC-Y23IMAP --allow send --name staging-1
  pgporter mover trust D3Z7DPI-FUWIRPF-N46RWIE-NFMNG5B-AW5DQKH-SGURFXK-JD4ADVC-Y23IMAP --allow send,read
  pgporter mover trust D3Z7DPI-FUWIRPF-N46RWIE-NFMNG5B-AW5DQKH-SGURFXK-JD4ADVC-Y23IMAP --allow archive --name db1-archiver`,
		Args: oneArg("trust", "PEER_ID"),
		RunE: func(_ *cobra.Command, args []string) error { return runMoverTrust(g, args[0], o) },
	}
	f := c.Flags()
	f.StringVar(&o.allow, "allow", "", "permissions, comma-separated: send, read, orchestrate, archive (required; replaces existing ones)")
	f.StringVar(&o.name, "name", "", "a label for the peer, shown by 'pgporter mover peers'")
	f.BoolVar(&o.json, "json", false, `print {"peer_id", "name", "allow", "added", "updated"}, and nothing else, on stdout`)
	return c
}

func runMoverTrust(g *globals, arg string, o trustOpts) error {
	id, err := mover.ParsePeerID(arg)
	if err != nil {
		return usageError{fmt.Errorf("PEER_ID: %w", err)}
	}
	if o.allow == "" {
		return usagef("--allow is required: a comma-separated list of send, read, orchestrate, archive")
	}
	perms, err := mover.ParsePerms(o.allow)
	if err != nil {
		return usageError{fmt.Errorf("--allow: %w", err)}
	}
	if err := mover.CheckPeerName(o.name); err != nil {
		return usageError{fmt.Errorf("--name: %w", err)}
	}
	ts, err := mover.OpenTrust(g.home)
	if err != nil {
		return err
	}
	old, existed := ts.Lookup(id)
	if err := ts.Trust(mover.TrustedPeer{ID: id, Name: o.name, Perms: perms}); err != nil {
		return err
	}
	p, ok := ts.Lookup(id)
	if !ok { // removed by someone else in between
		return fmt.Errorf("trusting %s: removed from %s concurrently", id, ts.Path())
	}
	label := ""
	if p.Name != "" {
		label = fmt.Sprintf(" (%s)", p.Name)
	}
	if self, err := mover.LoadIdentity(g.home); err == nil && self.ID == id {
		label += " (this mover's own identity)"
	}
	if existed {
		fmt.Fprintf(g.stdout, "updated %s%s: allow %s (was %s)\n", id, label, p.Perms, old.Perms)
	} else {
		fmt.Fprintf(g.stdout, "trusted %s%s: allow %s\n", id, label, p.Perms)
	}
	if o.json {
		return g.writeJSON(peerJSON(p, existed))
	}
	return nil
}

// peerJSON is a trusted peer as 'mover trust' and 'mover peers' print it.
func peerJSON(p mover.TrustedPeer, updated bool) map[string]any {
	m := map[string]any{"peer_id": p.ID, "name": p.Name, "allow": p.Perms.Names(), "added": p.Added.Format(time.RFC3339)}
	if updated {
		m["updated"] = true
	}
	return m
}
