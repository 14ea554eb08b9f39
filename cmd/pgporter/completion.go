package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/orchestrator"
)

// Dynamic shell completion ('pgporter completion bash|zsh|fish' prints the
// scripts; the shell then calls the hidden 'pgporter __complete ARGS...').
// Every completer only reads: a journal, trust list or repository that is
// not there completes nothing, and no home is ever created for it. Errors
// are not shown (a shell completion has nowhere to say them); they reach
// cobra's debug log (BASH_COMP_DEBUG_FILE).

// completer completes one argument or flag value.
type completer func(g *globals, cmd *cobra.Command, toComplete string) []string

// argCompletions completes the first positional argument of a command, by
// its path under pgporter.
var argCompletions = map[string]completer{
	"sessions show": completeSessions,
	"retry":         completeSessions,
	"cancel":        completeSessions,
	"unpublish":     completePublications,
	"mover trust":   completePeers,
	"mover untrust": completePeers,
}

// flagCompletions completes flag values: command path, then flag name.
var flagCompletions = map[string]map[string]completer{
	"export":  {"restore-point": completeRestorePoints, "published": completePublications},
	"mount":   {"restore-point": completeRestorePoints},
	"publish": {"restore-point": completeRestorePoints, "resume": completePublications},
	"send":    {"peer": completePeers},
	// The permissions a peer may be trusted with, comma-separated.
	"mover trust": {"allow": completePerms},
}

// addCompletions registers the completers on the commands of root. It
// skips (and returns) the commands and flags it does not find;
// TestCompletionsRegistered fails then, so that a renamed command does not
// lose its completion silently.
func addCompletions(g *globals, root *cobra.Command) (missing []string) {
	// cobra would add 'completion' when the CLI runs; made now, it is in the
	// tree for everything that walks it (man pages, tests).
	root.InitDefaultCompletionCmd()
	find := func(path string) *cobra.Command {
		c, rest, err := root.Find(strings.Fields(path))
		if err != nil || len(rest) > 0 || c == root {
			return nil
		}
		return c
	}
	for path, fn := range argCompletions {
		c := find(path)
		if c == nil {
			missing = append(missing, path)
			continue
		}
		c.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return fn(g, cmd, toComplete), cobra.ShellCompDirectiveNoFileComp
		}
	}
	for path, flags := range flagCompletions {
		c := find(path)
		for name, fn := range flags {
			if c == nil || c.Flags().Lookup(name) == nil {
				missing = append(missing, path+" --"+name)
				continue
			}
			err := c.RegisterFlagCompletionFunc(name, func(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				return fn(g, cmd, toComplete), cobra.ShellCompDirectiveNoFileComp
			})
			if err != nil {
				missing = append(missing, fmt.Sprintf("%s --%s: %v", path, name, err))
			}
		}
	}
	// Directories: --home everywhere, --repo where it names one.
	dirs := func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return nil, cobra.ShellCompDirectiveFilterDirs
	}
	if err := root.RegisterFlagCompletionFunc("home", dirs); err != nil {
		missing = append(missing, "--home: "+err.Error())
	}
	for _, path := range []string{"restore-points", "export", "mount", "publish", "backup", "wal-push", "wal-fetch"} {
		if c := find(path); c != nil && c.Flags().Lookup("repo") != nil {
			_ = c.RegisterFlagCompletionFunc("repo", dirs)
		}
	}
	return missing
}

// withDesc is a completion candidate with its description, which zsh and
// fish show beside it (cobra's "VALUE\tDESCRIPTION").
func withDesc(value, desc string) string {
	desc = strings.Join(strings.Fields(desc), " ")
	if desc == "" {
		return value
	}
	return value + "\t" + desc
}

// completeSessions lists the session IDs in the journal under --home,
// newest first, each with its state and databases.
func completeSessions(g *globals, _ *cobra.Command, toComplete string) []string {
	list, err := orchestrator.ReadJournal(g.home).List()
	if err != nil {
		cobra.CompDebugln("sessions: "+err.Error(), false)
		return nil
	}
	var out []string
	for _, s := range list {
		if strings.HasPrefix(s.ID, toComplete) {
			out = append(out, withDesc(s.ID, fmt.Sprintf("%s %s", s.State, strings.Join(s.Plan.Databases, ","))))
		}
	}
	return out
}

// completePublications lists the publications journaled under --home that
// are not gone, newest first.
func completePublications(g *globals, _ *cobra.Command, toComplete string) []string {
	list, err := orchestrator.ReadJournal(g.home).ListPublications()
	if err != nil {
		cobra.CompDebugln("publications: "+err.Error(), false)
		return nil
	}
	var out []string
	for _, p := range list {
		if p.State != orchestrator.PubGone && strings.HasPrefix(p.ID, toComplete) {
			out = append(out, withDesc(p.ID, fmt.Sprintf("%s %s port %d", p.State, p.RestorePoint, p.Port)))
		}
	}
	return out
}

// completePeers lists the peers in the trust list under --home.
func completePeers(g *globals, _ *cobra.Command, toComplete string) []string {
	ts, err := mover.OpenTrust(g.home)
	if err != nil {
		cobra.CompDebugln("peers: "+err.Error(), false)
		return nil
	}
	var out []string
	for _, p := range ts.List() {
		if id := p.ID.String(); strings.HasPrefix(id, toComplete) {
			out = append(out, withDesc(id, strings.TrimSpace(p.Name+" "+p.Perms.String())))
		}
	}
	return out
}

// completePerms completes the last name of a comma-separated list of
// permissions (mover trust --allow), each with what it grants.
func completePerms(_ *globals, _ *cobra.Command, toComplete string) []string {
	done, last := "", toComplete
	if i := strings.LastIndex(toComplete, ","); i >= 0 {
		done, last = toComplete[:i+1], toComplete[i+1:]
	}
	given := strings.Split(done, ",")
	var out []string
	for _, p := range mover.PermDescriptions() {
		if strings.HasPrefix(p.Name, last) && !slices.Contains(given, p.Name) {
			out = append(out, withDesc(done+p.Name, p.Grants))
		}
	}
	return out
}

// completeRestorePoints lists "latest" and the restore points of the
// command's --repo, when it is a local directory (an S3 repository or a
// --repo-peer would need the network: not from a completion).
func completeRestorePoints(_ *globals, cmd *cobra.Command, toComplete string) []string {
	var out []string
	if strings.HasPrefix("latest", toComplete) {
		out = append(out, withDesc("latest", "the newest restore point"))
	}
	f := cmd.Flags().Lookup("repo")
	if f == nil || f.Value.String() == "" || strings.Contains(f.Value.String(), "://") {
		return out
	}
	rps, err := chunkstore.ListRepo(cmd.Context(), f.Value.String())
	if err != nil {
		cobra.CompDebugln("restore points: "+err.Error(), false)
		return out
	}
	// Newest first, as a human looks for them.
	for i := len(rps) - 1; i >= 0; i-- {
		rp := rps[i]
		if strings.HasPrefix(rp.ID, toComplete) {
			out = append(out, withDesc(rp.ID, fmt.Sprintf("%s PostgreSQL %s, %d databases", rp.Time.UTC().Format("2006-01-02 15:04:05"), rp.PGVersion, len(rp.Databases))))
		}
	}
	return out
}
