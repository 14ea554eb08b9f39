package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/orchestrator"
)

// TestCompletionsRegistered guards against a renamed command or flag
// silently losing its dynamic completion.
func TestCompletionsRegistered(t *testing.T) {
	root := newRootCmd(&globals{stdout: io.Discard, stderr: io.Discard})
	for path := range argCompletions {
		c, rest, err := root.Find(strings.Fields(path))
		require.NoError(t, err, path)
		require.Empty(t, rest, path)
		require.NotNil(t, c.ValidArgsFunction, path)
	}
	for path, flags := range flagCompletions {
		c, rest, err := root.Find(strings.Fields(path))
		require.NoError(t, err, path)
		require.Empty(t, rest, path)
		for name := range flags {
			_, ok := c.GetFlagCompletionFunc(name)
			require.True(t, ok, "%s --%s has no completion", path, name)
		}
	}
}

// mksession HOME ID STATE [DB...] journals a session under HOME, as an
// export would have, for scripts that read journals (completion).
func cmdMkSession(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 3 {
		ts.Fatalf("usage: mksession HOME ID STATE [DB...]")
	}
	j, err := orchestrator.OpenJournal(ts.MkAbs(args[0]))
	ts.Check(err)
	now := time.Now().UTC()
	ts.Check(j.Put(&orchestrator.Session{ID: args[1], State: orchestrator.State(args[2]), Created: now,
		Plan: orchestrator.Plan{Databases: args[3:]}}))
}

// mkpublication HOME ID STATE journals a publication under HOME.
func cmdMkPublication(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: mkpublication HOME ID STATE")
	}
	j, err := orchestrator.OpenJournal(ts.MkAbs(args[0]))
	ts.Check(err)
	ts.Check(j.PutPublication(&orchestrator.Publication{ID: args[1], State: orchestrator.PubState(args[2]),
		RestorePoint: "rp-20261206T100000Z-abcdef", Port: 5433, Created: time.Now().UTC()}))
}
