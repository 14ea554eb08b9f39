package staging

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
)

// Staged is a restore point brought up for PostgreSQL, in layers: its FUSE
// mount, optionally an overlay that keeps the instance's writes on disk,
// and the instance on top. Each layer comes up by its own call, so that the
// caller journals between them; Close takes down what came up, the last
// first, and calls the hooks of StagedOptions after each step, so that the
// caller journals what is gone in the order its crash recovery expects.
//
// A Staged is used by one goroutine at a time.
type Staged struct {
	o       StagedOptions
	m       *Mounted
	overlay string // where the overlay is mounted, if it is
	in      *Instance

	unmountedOnce sync.Once
	unmounted     chan struct{} // closed when m ends; made by Unmounted
}

// StagedOptions configure how a Staged comes down. The zero value stops the
// instance, unmounts once, and reports the first error.
type StagedOptions struct {
	// UnmountWait, when positive, is how long Close retries unmounting a
	// busy mount (the overlay, then the restore point's) before it
	// detaches it lazily: for a caller about to exit, which ends the mount
	// for whoever still uses it. Zero unmounts once, and a busy mount
	// stays, with an error.
	UnmountWait time.Duration
	// JoinErrors makes Close return the errors of all its steps joined;
	// without it, Close returns the first.
	JoinErrors bool
	// Stopped, if set, is called by Close once it has stopped the
	// instance, with the stop's error, before anything is unmounted. What
	// it returns is the step's error.
	Stopped func(err error) error
	// Unmounted, if set, is called by Close once it has unmounted the
	// overlay and the restore point, with the error of that. What it
	// returns is the step's error.
	Unmounted func(err error) error
	Log       *slog.Logger
}

// NewStaged returns a Staged with nothing up.
func NewStaged(o StagedOptions) *Staged {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Staged{o: o}
}

// Mount mounts the restore point at dir (see Mount).
func (s *Staged) Mount(ctx context.Context, dir string, tree []chunkstore.Node, chunks ChunkReader, o MountOptions) (*Mounted, error) {
	m, err := Mount(ctx, dir, tree, chunks, o)
	if err != nil {
		return nil, err
	}
	s.m = m
	return m, nil
}

// Overlay mounts an overlay over the restore point at dir (see
// MountOverlay); o.Lower is the mount's directory.
func (s *Staged) Overlay(dir string, o OverlayOptions) error {
	o.Lower = s.m.Dir()
	if err := MountOverlay(dir, o); err != nil {
		return err
	}
	s.overlay = dir
	return nil
}

// Start starts the instance (see StartInstance).
func (s *Staged) Start(ctx context.Context, o InstanceOptions) (*Instance, error) {
	in, err := StartInstance(ctx, o)
	if err != nil {
		return nil, err
	}
	s.in = in
	return in, nil
}

// Mounted is the restore point's mount, nil before Mount.
func (s *Staged) Mounted() *Mounted { return s.m }

// Instance is the instance, nil before Start.
func (s *Staged) Instance() *Instance { return s.in }

// Unmounted is closed when the restore point's mount ends, by Close or from
// outside; at once if it is not mounted when first called.
func (s *Staged) Unmounted() <-chan struct{} {
	s.unmountedOnce.Do(func() {
		s.unmounted = make(chan struct{})
		m := s.m
		if m == nil {
			close(s.unmounted)
			return
		}
		go func() {
			m.Wait()
			close(s.unmounted)
		}()
	})
	return s.unmounted
}

// Close takes down what came up, the last first: it stops the instance
// (ctx bounds the stop), then unmounts the overlay and the restore point.
// Layers that never came up are skipped, and so are their hooks; a second
// Close does nothing.
func (s *Staged) Close(ctx context.Context) error {
	var errs []error
	if s.in != nil {
		err := s.in.Stop(ctx)
		s.in = nil
		if s.o.Stopped != nil {
			err = s.o.Stopped(err)
		}
		errs = append(errs, err)
	}
	if s.overlay != "" || s.m != nil {
		err := s.unmount()
		if s.o.Unmounted != nil {
			err = s.o.Unmounted(err)
		}
		errs = append(errs, err)
	}
	if s.o.JoinErrors {
		return errors.Join(errs...)
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// unmount unmounts the overlay, then the restore point.
func (s *Staged) unmount() error {
	var err error
	if s.overlay != "" {
		err = UnmountOverlay(s.overlay, s.o.UnmountWait)
		s.overlay = ""
	}
	if s.m != nil {
		var uerr error
		if s.o.UnmountWait > 0 {
			uerr = s.unmountBusy()
		} else {
			uerr = s.m.Unmount()
		}
		s.m = nil
		err = errors.Join(err, uerr)
	}
	return err
}

// unmountBusy unmounts, retrying for UnmountWait while the instance's last
// processes let go of the mount, then detaches it lazily.
func (s *Staged) unmountBusy() error {
	unmounted := s.Unmounted()
	deadline := time.Now().Add(s.o.UnmountWait)
	for {
		select {
		case <-unmounted:
			return nil // from outside
		default:
		}
		err := s.m.Unmount()
		if err == nil {
			<-unmounted
			return nil
		}
		if time.Now().After(deadline) {
			s.o.Log.Warn("mount still busy; detaching it lazily", "mountpoint", s.m.Dir(), "err", err)
			return s.m.Detach()
		}
		time.Sleep(50 * time.Millisecond) // polling the kernel for the mount's users to leave
	}
}
