package main

import (
	"errors"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// newExitCodesTopic is 'pgporter help exit-codes': a help topic (no Run),
// listed under "Additional help topics".
func newExitCodesTopic() *cobra.Command {
	return &cobra.Command{
		Use:   "exit-codes",
		Short: "The exit codes of every command, and the --json failure object",
		Long:  exitCodesHelp,
	}
}

// strictSubcommands makes c and every command below it that only groups
// subcommands ('pgporter', 'pgporter mover') refuse an unknown subcommand
// as a usage error (exit 2), with cobra's suggestions. Left alone, cobra
// prints help and exits 0 for 'pgporter mover bogus', and returns an
// untyped error for 'pgporter sned'. Without arguments such a command
// prints its help, as before. Every other command's positional-argument
// check (cobra.NoArgs: 'pgporter sessions extra') becomes a usage error
// too.
func strictSubcommands(c *cobra.Command) {
	if !c.HasParent() {
		c.SetHelpCommand(newHelpCmd())
	}
	for _, sub := range c.Commands() {
		strictSubcommands(sub)
	}
	if !c.HasSubCommands() || c.Runnable() {
		if check := c.Args; check != nil {
			c.Args = func(cmd *cobra.Command, args []string) error {
				err := check(cmd, args)
				if err != nil && !errors.As(err, new(usageError)) {
					err = usageError{err}
				}
				return err
			}
		}
		return
	}
	c.Args = cobra.ArbitraryArgs
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		if cmd.SuggestionsMinimumDistance <= 0 {
			cmd.SuggestionsMinimumDistance = 2 // cobra's default, which only its own check sets
		}
		msg := "unknown command %q for %q"
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += "; did you mean " + strings.Join(s, " or ") + "?"
		}
		return usagef(msg, args[0], cmd.CommandPath())
	}
}

// newHelpCmd is cobra's help command, except that an unknown topic is a
// usage error (cobra prints "Unknown help topic", or the root's help, and
// exits 0).
func newHelpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		Long: `Help provides help for any command in the application.
Simply type pgporter help [path to command] for full details.`,
		RunE: func(c *cobra.Command, args []string) error {
			cmd, rest, err := c.Root().Find(args)
			if err != nil || len(rest) > 0 {
				return usagef("unknown help topic %q", strings.Join(args, " "))
			}
			cmd.InitDefaultHelpFlag()
			cmd.InitDefaultVersionFlag()
			return cmd.Help()
		},
	}
}

// checkFlags checks cmd's required flags and flag groups (cobra's
// MarkFlagRequired, MarkFlagsMutuallyExclusive, MarkFlagsOneRequired,
// MarkFlagsRequiredTogether) before cobra does, so that a violation is a
// usage error that names the flags in the words the hand-written checks
// use ("export takes --repo or --repo-peer, not both").
func checkFlags(cmd *cobra.Command) error {
	groups := map[string]map[string]bool{} // annotation → group → seen
	var missing []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if req := f.Annotations[cobra.BashCompOneRequiredFlag]; len(req) > 0 && req[0] == "true" && !f.Changed {
			missing = append(missing, "--"+f.Name)
		}
		for _, kind := range []string{annotationExclusive, annotationOneRequired, annotationTogether} {
			for _, grp := range f.Annotations[kind] {
				if groups[kind] == nil {
					groups[kind] = map[string]bool{}
				}
				groups[kind][grp] = true
			}
		}
	})
	if len(missing) > 0 {
		return usagef("%s needs %s", cmd.Name(), joinFlags(missing, "and"))
	}
	for _, kind := range []string{annotationExclusive, annotationOneRequired, annotationTogether} {
		names := make([]string, 0, len(groups[kind]))
		for grp := range groups[kind] {
			names = append(names, grp)
		}
		slices.Sort(names)
		for _, grp := range names {
			var all, set, unset []string
			for _, name := range strings.Fields(grp) {
				all = append(all, "--"+name)
				if f := cmd.Flags().Lookup(name); f != nil && f.Changed {
					set = append(set, "--"+name)
				} else {
					unset = append(unset, "--"+name)
				}
			}
			switch {
			case kind == annotationExclusive && len(set) > 1:
				if len(all) == 2 {
					return usagef("%s takes %s or %s, not both", cmd.Name(), all[0], all[1])
				}
				return usagef("%s takes only one of %s; got %s", cmd.Name(), joinFlags(all, "and"), joinFlags(set, "and"))
			case kind == annotationOneRequired && len(set) == 0:
				return usagef("%s needs %s", cmd.Name(), joinFlags(all, "or"))
			case kind == annotationTogether && len(set) > 0 && len(unset) > 0:
				return usagef("%s go together: %s without %s", joinFlags(all, "and"), joinFlags(set, "and"), joinFlags(unset, "and"))
			}
		}
	}
	return nil
}

// cobra's annotations of flag groups (flag_groups.go).
const (
	annotationTogether    = "cobra_annotation_required_if_others_set"
	annotationOneRequired = "cobra_annotation_one_required"
	annotationExclusive   = "cobra_annotation_mutually_exclusive"
)

// joinFlags writes ["--a", "--b", "--c"] as "--a, --b and --c".
func joinFlags(flags []string, conj string) string {
	if len(flags) < 2 {
		return strings.Join(flags, "")
	}
	return strings.Join(flags[:len(flags)-1], ", ") + " " + conj + " " + flags[len(flags)-1]
}
