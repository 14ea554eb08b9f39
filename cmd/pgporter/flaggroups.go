package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// helpWidth is the width --help wraps flag descriptions to: a terminal's
// default, and what the grouped help is checked against.
const helpWidth = 80

// flagGroup is a heading of a command's --help and the flags under it.
type flagGroup struct {
	Heading string
	Flags   []string
}

// otherFlags is the heading of the flags no group names (--help among them).
const otherFlags = "Other"

// setGroupedUsage makes c's usage (the part of --help after its long
// description) list its flags under groups' headings, in that order, with
// the flags no group names under "Other" and the global flags last. cobra
// lists every flag of a command in one alphabetical block, which for a
// command with several modes ('export': local, cross-host, from a
// publication) hides which flags go together.
func setGroupedUsage(c *cobra.Command, groups []flagGroup) {
	c.SetUsageFunc(func(cmd *cobra.Command) error {
		return writeGroupedUsage(cmd.OutOrStderr(), cmd, groups)
	})
}

func writeGroupedUsage(w io.Writer, cmd *cobra.Command, groups []flagGroup) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage:\n%s\n", wrapUseLine(cmd.UseLine(), helpWidth))
	if cmd.HasExample() {
		fmt.Fprintf(&b, "\nExamples:\n%s\n", cmd.Example)
	}
	local := cmd.LocalFlags()
	named := map[string]bool{}
	sets := make([]*pflag.FlagSet, len(groups))
	for i, g := range groups {
		sets[i] = pflag.NewFlagSet(g.Heading, pflag.ContinueOnError)
		sets[i].SortFlags = false // in the group's order: the main flag first
		for _, name := range g.Flags {
			if f := local.Lookup(name); f != nil && !f.Hidden {
				sets[i].AddFlag(f)
				named[name] = true
			}
		}
	}
	oi := slices.IndexFunc(groups, func(g flagGroup) bool { return g.Heading == otherFlags })
	if oi < 0 {
		oi = len(groups)
		groups = append(groups, flagGroup{Heading: otherFlags})
		sets = append(sets, pflag.NewFlagSet(otherFlags, pflag.ContinueOnError))
	}
	local.VisitAll(func(f *pflag.Flag) {
		if !named[f.Name] && !f.Hidden {
			sets[oi].AddFlag(f)
		}
	})
	for i, g := range groups {
		if sets[i].HasAvailableFlags() {
			fmt.Fprintf(&b, "\n%s flags:\n%s", g.Heading, sets[i].FlagUsagesWrapped(helpWidth))
		}
	}
	if cmd.HasAvailableInheritedFlags() {
		fmt.Fprintf(&b, "\nGlobal flags:\n%s", cmd.InheritedFlags().FlagUsagesWrapped(helpWidth))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// wrapUseLine indents a command's synopsis by two spaces and breaks it
// before a flag, an alternative "(...)" or an option "[...]" outside
// parentheses where it would be wider than width, continuing lines at six.
func wrapUseLine(use string, width int) string {
	var parts []string // the synopsis cut where it may break
	depth, start := 0, 0
	for i, r := range use {
		switch r {
		case '(', '[':
			if depth == 0 && i > 0 && use[i-1] == ' ' {
				parts, start = append(parts, use[start:i-1]), i
			}
			depth++
		case ')', ']':
			depth--
		case '-':
			if depth == 0 && strings.HasPrefix(use[i:], "--") && i > 0 && use[i-1] == ' ' {
				parts, start = append(parts, use[start:i-1]), i
			}
		}
	}
	parts = append(parts, use[start:])
	var b strings.Builder
	line := "  " + parts[0]
	for _, p := range parts[1:] {
		if len(line)+1+len(p) > width {
			b.WriteString(line + "\n")
			line = "      " + p
			continue
		}
		line += " " + p
	}
	b.WriteString(line)
	return b.String()
}
