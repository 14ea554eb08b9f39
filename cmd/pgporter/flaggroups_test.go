package main

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
)

// TestExportHelpGroups guards against a new export flag that lands under
// "Other" because no group names it, and against a group naming a flag
// that does not exist (a rename).
func TestExportHelpGroups(t *testing.T) {
	c := newExportCmd(&globals{})
	addPasswordFileFlags(c) // as newRootCmd does
	c.InitDefaultHelpFlag()
	named := map[string]string{}
	for _, g := range exportFlagGroups {
		for _, name := range g.Flags {
			require.NotNil(t, c.Flags().Lookup(name), "group %q names --%s, which export does not have", g.Heading, name)
			require.Empty(t, named[name], "--%s is in two groups", name)
			named[name] = g.Heading
		}
	}
	c.Flags().VisitAll(func(f *pflag.Flag) {
		require.NotEmpty(t, named[f.Name], "--%s is in no group of exportFlagGroups", f.Name)
	})
}

func TestWrapUseLine(t *testing.T) {
	for _, tc := range []struct {
		use   string
		width int
		want  string
	}{
		{"pgporter send SRC DEST [flags]", 80, "  pgporter send SRC DEST [flags]"},
		{
			"pgporter export (--repo DIR | --repo-peer ADDR#ID | --published ID) --db NAME... --to DIR [flags]", 80,
			"  pgporter export (--repo DIR | --repo-peer ADDR#ID | --published ID)\n      --db NAME... --to DIR [flags]",
		},
		{
			"pgporter x --a A --b B [flags]", 16,
			"  pgporter x\n      --a A\n      --b B\n      [flags]",
		},
	} {
		got := wrapUseLine(tc.use, tc.width)
		require.Equal(t, tc.want, got)
		for _, line := range strings.Split(got, "\n") {
			require.LessOrEqual(t, len(line), max(tc.width, len("  pgporter x")), "line %q", line)
		}
	}
}
