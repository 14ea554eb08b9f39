package objstore_test

import (
	"context"
	"errors"
	"io"
	"iter"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/objstore"
)

// flaky is a Backend whose Stat fails transiently the first fails times
// and whose PutIfAbsent always does, recording when each call came. It
// stands for a failing backend in the policy's timing tests, which run on
// synctest's clock; the S3 fault tests (retry_test.go) use the real server.
type flaky struct {
	objstore.Backend
	fails int
	calls []time.Time
}

var errFlaky = &objstore.TransientError{Err: errors.New("flaky")}

func (f *flaky) Stat(ctx context.Context, name string) (int64, error) {
	f.calls = append(f.calls, time.Now())
	if len(f.calls) <= f.fails {
		return 0, errFlaky
	}
	return 7, nil
}

func (f *flaky) PutIfAbsent(ctx context.Context, name string, r io.Reader, size int64) error {
	f.calls = append(f.calls, time.Now())
	_, _ = io.Copy(io.Discard, r)
	return errFlaky
}

func (f *flaky) List(context.Context, string) iter.Seq2[objstore.Object, error] { return nil }

func TestRetryPolicy(t *testing.T) {
	t.Run("BackoffBounds", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := &flaky{fails: 5}
			b := objstore.WithRetry(f, objstore.RetryPolicy{MaxAttempts: 10, BaseDelay: time.Second, MaxDelay: 4 * time.Second, MaxTotal: time.Hour})
			size, err := b.Stat(t.Context(), "x")
			require.NoError(t, err)
			require.Equal(t, int64(7), size)
			require.Len(t, f.calls, 6)
			bound := time.Second
			for i := 1; i < len(f.calls); i++ {
				wait := f.calls[i].Sub(f.calls[i-1])
				require.Greater(t, wait, time.Duration(0), "wait %d", i)
				require.LessOrEqual(t, wait, bound, "wait %d", i)
				bound = min(2*bound, 4*time.Second)
			}
		})
	})
	t.Run("TotalCap", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := &flaky{fails: 1 << 30}
			b := objstore.WithRetry(f, objstore.RetryPolicy{MaxAttempts: 1 << 20, BaseDelay: time.Second, MaxDelay: 10 * time.Second, MaxTotal: time.Minute})
			start := time.Now()
			_, err := b.Stat(t.Context(), "x")
			require.True(t, objstore.IsTransient(err))
			require.ErrorContains(t, err, "giving up after")
			require.LessOrEqual(t, time.Since(start), time.Minute)
			require.Greater(t, len(f.calls), 6)
		})
	})
	t.Run("Defaults", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := &flaky{fails: 1 << 30}
			start := time.Now()
			_, err := objstore.WithRetry(f, objstore.RetryPolicy{}).Stat(t.Context(), "x")
			require.True(t, objstore.IsTransient(err))
			require.Len(t, f.calls, 6)
			require.LessOrEqual(t, time.Since(start), 2*time.Minute)
		})
	})
	// A reader that cannot seek back has one attempt: its bytes are gone.
	t.Run("PutUnseekable", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := &flaky{}
			b := objstore.WithRetry(f, objstore.RetryPolicy{})
			err := b.PutIfAbsent(t.Context(), "x", struct{ io.Reader }{strings.NewReader("abc")}, 3)
			require.True(t, objstore.IsTransient(err))
			require.Len(t, f.calls, 1)
			f.calls = nil
			err = b.PutIfAbsent(t.Context(), "x", strings.NewReader("abc"), 3)
			require.True(t, objstore.IsTransient(err))
			require.Len(t, f.calls, 6)
		})
	})
}
