package mover

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

// TestBackoff: the pause between reconnects doubles up to maxBackoff,
// starts again after progress, and ends early when ctx ends or done closes.
func TestBackoff(t *testing.T) {
	synctest.Test(t, testBackoff)
}

func testBackoff(t *testing.T) {
	b := newBackoff(time.Millisecond)
	start := time.Now()
	require.NoError(t, b.wait(t.Context(), nil, nil))
	require.Equal(t, 2*time.Millisecond, b.next)
	require.NoError(t, b.wait(t.Context(), nil, nil))
	require.Equal(t, 4*time.Millisecond, b.next)
	require.Equal(t, 3*time.Millisecond, time.Since(start))
	b.next = maxBackoff * 3 / 4
	now := time.Now()
	require.False(t, b.past(now, now.Add(maxBackoff)))
	require.True(t, b.past(now, now.Add(maxBackoff/2)))
	b.reset()
	require.Equal(t, time.Millisecond, b.next)

	b.next = maxBackoff * 3 / 4
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.ErrorIs(t, b.wait(ctx, nil, nil), context.Canceled)
	require.Equal(t, maxBackoff*3/4, b.next, "an interrupted pause does not grow")
	closed := errors.New("closed")
	done := make(chan struct{})
	close(done)
	require.ErrorIs(t, b.wait(t.Context(), done, closed), closed)

	b.next = maxBackoff * 3 / 4
	b.first = b.next
	require.NoError(t, b.wait(t.Context(), nil, nil))
	require.Equal(t, maxBackoff, b.next, "capped")
}
