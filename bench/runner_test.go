package bench

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeScenario's tools log the order they run in and may fail.
type fakeScenario struct {
	tools   []string
	failAt  int // the run (counting from 1) that fails; 0 never
	ran     []string
	closed  int
	prepErr error
	profile bool // the setup has a Profile, which logs "profile FILE" in ran
}

func (s *fakeScenario) Name() string     { return "fake" }
func (s *fakeScenario) Describe() string { return "a fake" }

func (s *fakeScenario) Prepare(context.Context, Env) (*Setup, error) {
	if s.prepErr != nil {
		return nil, s.prepErr
	}
	st := &Setup{Bytes: 1e6, Close: func() error { s.closed++; return nil }}
	st.Settle = func(context.Context) error { s.ran = append(s.ran, "settle"); return nil }
	if s.profile {
		st.Profile = func(_ context.Context, file string) error { s.ran = append(s.ran, "profile "+file); return nil }
	}
	for _, n := range s.tools {
		st.Tools = append(st.Tools, &fakeTool{s: s, name: n})
	}
	return st, nil
}

type fakeTool struct {
	s    *fakeScenario
	name string
}

func (t *fakeTool) Name() string { return t.name }

func (t *fakeTool) Run(_ context.Context, rep int) (Measure, error) {
	t.s.ran = append(t.s.ran, t.name)
	if len(t.s.ran) == t.s.failAt {
		return Measure{}, errors.New("boom")
	}
	return Measure{Wall: time.Duration(len(t.s.ran)) * time.Millisecond, CPUSender: float64(rep + 1)}, nil
}

func TestRunOrder(t *testing.T) {
	require.Equal(t, [][]int{{0, 1, 2}, {1, 2, 0}, {2, 0, 1}, {0, 1, 2}}, RunOrder(3, 4))
	require.Equal(t, [][]int{{0}, {0}}, RunOrder(1, 2))
}

func TestRunInterleavesAndRotates(t *testing.T) {
	s := &fakeScenario{tools: []string{"a", "b", "c"}}
	res, err := Run(context.Background(), s, RunOptions{Reps: 3})
	require.NoError(t, err)
	require.Equal(t, []string{
		"settle", "a", "settle", "b", "settle", "c",
		"settle", "b", "settle", "c", "settle", "a",
		"settle", "c", "settle", "a", "settle", "b",
	}, s.ran, "rotated, and settled before every run")
	require.Equal(t, 1, s.closed)
	require.Equal(t, []string{"a", "b", "c"}, res.Tools, "tools in the scenario's order, not the run order")
	require.Len(t, res.Runs, 9)
	require.Equal(t, Sample{Tool: "b", Rep: 1, Measure: Measure{Wall: 8 * time.Millisecond, CPUSender: 2}}, res.Runs[3])
	require.Equal(t, int64(1e6), res.Bytes)
	require.Equal(t, 3, res.Reps)
}

func TestRunFailureKeepsRunsAndCloses(t *testing.T) {
	s := &fakeScenario{tools: []string{"a", "b"}, failAt: 6} // settle, a, settle, b, settle, b
	res, err := Run(context.Background(), s, RunOptions{Reps: 5})
	require.ErrorContains(t, err, "fake: b, run 2: boom")
	require.Len(t, res.Runs, 2, "the runs before the failure are kept")
	require.Equal(t, 1, s.closed, "the setup is closed on failure too")
}

func TestRunPrepareError(t *testing.T) {
	s := &fakeScenario{prepErr: errors.New("no data")}
	_, err := Run(context.Background(), s, RunOptions{})
	require.ErrorContains(t, err, "preparing scenario fake: no data")
}

func TestRunCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s := &fakeScenario{tools: []string{"a"}}
	_, err := Run(ctx, s, RunOptions{Reps: 2})
	require.ErrorIs(t, err, context.Canceled)
	require.Empty(t, s.ran)
	require.Equal(t, 1, s.closed)
}

func TestClusterScale(t *testing.T) {
	for _, c := range []struct {
		scale int
		smoke bool
		want  int
	}{{0, false, 20}, {0, true, 1}, {-3, false, 20}, {7, false, 7}, {7, true, 7}} {
		if got := clusterScale(c.scale, c.smoke); got != c.want {
			t.Errorf("clusterScale(%d, %v) = %d, want %d", c.scale, c.smoke, got, c.want)
		}
	}
}

func TestRunOnlySomeTools(t *testing.T) {
	s := &fakeScenario{tools: []string{"a", "b -z", "c"}}
	res, err := Run(context.Background(), s, RunOptions{Reps: 2, Tools: []string{"c", "b -z", "x"}})
	require.NoError(t, err)
	require.Equal(t, []string{"b -z", "c"}, res.Tools)
	require.Equal(t, []string{"settle", "b -z", "settle", "c", "settle", "c", "settle", "b -z"}, s.ran)

	s = &fakeScenario{tools: []string{"a", "b"}}
	_, err = Run(context.Background(), s, RunOptions{Reps: 2, Tools: []string{"rsync"}})
	require.ErrorContains(t, err, `scenario fake has none of the tools ["rsync"]; its tools: "a", "b"`)
	require.Empty(t, s.ran)
	require.Equal(t, 1, s.closed, "the setup is closed")
}
