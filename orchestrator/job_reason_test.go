package orchestrator

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/mover"
)

// An error of a known kind crosses a job's end event as its reason and
// matches its sentinel again on the orchestrator's side; others stay as
// they were.
func TestJobReasonRoundTrip(t *testing.T) {
	for _, k := range errorKinds {
		err := jobReason(fmt.Errorf("publication p-1: %w", k.err))
		var r mover.JobReasoner
		require.True(t, errors.As(err, &r), k.name)
		require.Equal(t, k.name, r.JobReason())
		require.ErrorIs(t, err, k.err, "still matches on the mover's side")

		back := fromJob(&mover.JobError{Message: err.Error(), Reason: r.JobReason()})
		require.ErrorIs(t, back, k.err, k.name)
		require.ErrorIs(t, back, mover.ErrJobFailed)
	}
	plain := errors.New("something else")
	require.Equal(t, plain, jobReason(plain))
	je := &mover.JobError{Message: "x", Reason: "no-such-kind"}
	require.Equal(t, error(je), fromJob(je))
}
