package orchestrator

import (
	"testing"

	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// A step name is made and read back in one place; names no session has
// are refused, so that a peer's step event cannot add a step.
func TestParseStep(t *testing.T) {
	for _, tc := range []struct{ name, kind, db string }{
		{StepMount, StepMount, ""},
		{StepStart, StepStart, ""},
		{StepCheck, StepCheck, ""},
		{StepGlobals, StepGlobals, ""},
		{StepCleanup, StepCleanup, ""},
		{StepUnpublish, StepUnpublish, ""},
		{DumpStep("shop"), StepDump, "shop"},
		{TransferStep("Weird DB"), StepTransfer, "Weird DB"},
		{DumpStep("a:b"), StepDump, "a:b"},
	} {
		kind, db, ok := ParseStep(tc.name)
		require.True(t, ok, tc.name)
		require.Equal(t, tc.kind, kind, tc.name)
		require.Equal(t, tc.db, db, tc.name)
	}
	for _, bad := range []string{"", "dump", "dump:", "transfer:", "verify:shop", "mount:x", "Dump:shop"} {
		_, _, ok := ParseStep(bad)
		require.False(t, ok, bad)
	}
}

// A staging mover's events are a peer's: those naming a step this session
// cannot have (a database not in its plan, a name no session has) and
// those that are no step event are dropped, and add nothing to the journal;
// the others are journaled as before.
func TestMirrorDropsForeignSteps(t *testing.T) {
	r, err := NewRunner(Options{Home: t.TempDir()})
	require.NoError(t, err)
	s := &Session{ID: "x-20261206-120000-abcdef", State: StatePlanned, Plan: Plan{Databases: []string{"shop"}}}
	s.Step(DumpStep("shop"))
	require.NoError(t, r.j.Put(s))
	x := &sessionRun{r: r, s: s}
	ev := func(kind protocol.EventKind, step string) *protocol.JobEvent {
		return &protocol.JobEvent{Kind: kind, Version: protocol.JobVersion, Step: step, Done: 7}
	}
	for _, e := range []*protocol.JobEvent{
		ev(protocol.EventStart, DumpStep("other")),
		ev(protocol.EventDone, "verify:shop"),
		ev(protocol.EventStart, "../../etc"),
		ev(protocol.EventResult, ""),
		ev(protocol.EventEnd, ""),
	} {
		require.False(t, x.mirror(e), "%+v", e)
	}
	require.True(t, x.mirror(ev(protocol.EventSkip, "")), "an event about the whole session")
	require.True(t, x.mirror(ev(protocol.EventStart, DumpStep("shop"))))
	require.True(t, x.mirror(ev(protocol.EventDone, DumpStep("shop"))))
	got, err := r.j.Get(s.ID)
	require.NoError(t, err)
	require.Len(t, got.Steps, 1)
	require.Equal(t, StepDone, got.Steps[0].State)
	require.Equal(t, int64(7), got.Steps[0].Bytes)
	require.Equal(t, StateDumping, got.State)
}
