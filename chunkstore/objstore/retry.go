package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/rand/v2"
	"time"
)

// RetryPolicy bounds WithRetry's retries. The zero value works.
type RetryPolicy struct {
	// MaxAttempts is the most attempts of one operation, the first
	// included (default 6).
	MaxAttempts int
	// BaseDelay is the most the first wait may be; each wait's bound
	// doubles, up to MaxDelay. A wait is drawn uniformly below its bound
	// ("full jitter"), so that clients throttled together do not come
	// back together. Defaults 200 ms and 10 s.
	BaseDelay, MaxDelay time.Duration
	// MaxTotal caps the time an operation may spend retrying: no wait
	// reaches past it (default 2 min).
	MaxTotal time.Duration
	// Retrying, if set, is told of each failure that will be retried, with
	// the wait before the next attempt and when the retries will end at the
	// latest: for a log line that says what is retried and until when.
	Retrying func(err error, wait time.Duration, until time.Time)
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = 6
	}
	if p.BaseDelay <= 0 {
		p.BaseDelay = 200 * time.Millisecond
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = 10 * time.Second
	}
	if p.MaxTotal <= 0 {
		p.MaxTotal = 2 * time.Minute
	}
	return p
}

// Retrying is a Backend that retries another's transient failures
// (IsTransient: 5xx answers, throttling, broken connections), within a
// RetryPolicy. Any other error, a 4xx answer or ErrNotFound say, is
// returned at once. Giving up returns the last error, which is still
// transient. It waits for ctx, never past it.
//
// PutIfAbsent is retried only when its reader is an io.Seeker (it is sought
// back to where it was); another reader's bytes are gone. A retried put may
// find the object that an earlier attempt of its own created (the answer
// was lost, not the write): a retry that meets ErrExists therefore looks at
// the object, and takes one of the size it was writing for its own, and
// success. Names in a repository are random or content hashes, so another
// writer's object of the same name and size holds the same bytes; a caller
// for whom that is not so must not use WithRetry for puts. A first attempt
// that meets ErrExists returns it.
//
// List restarts a listing that fails, skipping the names it already
// yielded (a listing is in order of name).
type Retrying struct {
	b Backend
	p RetryPolicy
}

var _ Backend = (*Retrying)(nil)

// WithRetry wraps b.
func WithRetry(b Backend, p RetryPolicy) *Retrying {
	return &Retrying{b: b, p: p.withDefaults()}
}

// do runs op until it succeeds, fails for good, or the policy is spent.
// op is told its attempt, from 1.
func (r *Retrying) do(ctx context.Context, op func(attempt int) error) error {
	start := time.Now()
	bound := r.p.BaseDelay
	for attempt := 1; ; attempt++ {
		err := op(attempt)
		if err == nil || !IsTransient(err) || ctx.Err() != nil {
			return err
		}
		if attempt == r.p.MaxAttempts {
			return fmt.Errorf("giving up after %d attempts: %w", attempt, err)
		}
		wait := rand.N(bound) + 1
		bound = min(2*bound, r.p.MaxDelay)
		if time.Since(start)+wait > r.p.MaxTotal {
			return fmt.Errorf("giving up after %d attempts in %v: %w", attempt, time.Since(start).Round(time.Millisecond), err)
		}
		if r.p.Retrying != nil {
			r.p.Retrying(err, wait, start.Add(r.p.MaxTotal))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), err)
		case <-t.C:
		}
	}
}

// PutIfAbsent implements Backend.
func (r *Retrying) PutIfAbsent(ctx context.Context, name string, rd io.Reader, size int64) error {
	seeker, ok := rd.(io.Seeker)
	var pos int64
	if ok {
		var err error
		if pos, err = seeker.Seek(0, io.SeekCurrent); err != nil {
			ok = false
		}
	}
	if !ok {
		return r.b.PutIfAbsent(ctx, name, rd, size)
	}
	return r.do(ctx, func(attempt int) error {
		if attempt > 1 {
			if _, err := seeker.Seek(pos, io.SeekStart); err != nil {
				return fmt.Errorf("rewinding %s for a retry: %w", name, err)
			}
		}
		err := r.b.PutIfAbsent(ctx, name, rd, size)
		if attempt > 1 && errors.Is(err, ErrExists) {
			got, serr := r.b.Stat(ctx, name)
			if serr != nil {
				return serr
			}
			if got == size {
				return nil
			}
		}
		return err
	})
}

// GetRange implements Backend.
func (r *Retrying) GetRange(ctx context.Context, name string, off, n int64, dst []byte) ([]byte, error) {
	out := dst
	err := r.do(ctx, func(int) error {
		var err error
		out, err = r.b.GetRange(ctx, name, off, n, dst)
		return err
	})
	return out, err
}

// Get implements Backend.
func (r *Retrying) Get(ctx context.Context, name string, dst []byte) ([]byte, error) {
	out := dst
	err := r.do(ctx, func(int) error {
		var err error
		out, err = r.b.Get(ctx, name, dst)
		return err
	})
	return out, err
}

// Stat implements Backend.
func (r *Retrying) Stat(ctx context.Context, name string) (int64, error) {
	var size int64
	err := r.do(ctx, func(int) error {
		var err error
		size, err = r.b.Stat(ctx, name)
		return err
	})
	return size, err
}

// Delete implements Backend.
func (r *Retrying) Delete(ctx context.Context, name string) error {
	return r.do(ctx, func(int) error { return r.b.Delete(ctx, name) })
}

// List implements Backend.
func (r *Retrying) List(ctx context.Context, prefix string) iter.Seq2[Object, error] {
	return func(yield func(Object, error) bool) {
		var last string
		some, stopped := false, false
		err := r.do(ctx, func(int) error {
			for o, err := range r.b.List(ctx, prefix) {
				if err != nil {
					return err
				}
				if some && o.Name <= last {
					continue
				}
				last, some = o.Name, true
				if !yield(o, nil) {
					stopped = true
					return nil
				}
			}
			return nil
		})
		if err != nil && !stopped {
			yield(Object{}, err)
		}
	}
}

// Unwrap returns the backend r retries, for As.
func (r *Retrying) Unwrap() Backend { return r.b }
