package mover

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

// reasonJobs fails every job with an error that names its kind.
type reasonJobs struct{}

func (reasonJobs) RunJob(_ context.Context, _ []byte, emit func([]byte)) error {
	emit([]byte(`{"kind":"progress"}`))
	return reasonedErr{}
}

type reasonedErr struct{}

func (reasonedErr) Error() string     { return "publication is not dead" }
func (reasonedErr) JobReason() string { return "not-dead" }

// A job's failure reaches the orchestrator with its kind as a value
// (JobError.Reason), not only its text.
func TestJobErrorReason(t *testing.T) {
	r := startReceiver(t, ServerOptions{Jobs: reasonJobs{}})
	s := newTestSender(t, r, PermOrchestrate)
	events := 0
	err := s.RunJob(context.Background(), r.addr, r.id.ID, []byte(`{}`), func([]byte) { events++ })
	je, ok := errors.AsType[*JobError](err)
	require.True(t, ok, "%v", err)
	require.Equal(t, "not-dead", je.Reason)
	require.Equal(t, "publication is not dead", je.Message)
	require.Equal(t, 1, events)
}
