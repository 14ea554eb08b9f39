package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/pgporter/pgporter/mover"
)

// job is what an orchestrator hands a staging mover: the staging half of
// session Session, which the staging mover journals under the same ID, so
// that handing it again (retry) continues it.
type job struct {
	Session  string `json:"session"`
	Plan     Plan   `json:"plan"`
	Password string `json:"password,omitempty"`
	Cancel   bool   `json:"cancel,omitempty"` // cancel the session instead
}

// runRemote runs the session on the staging mover named in the plan and
// mirrors its steps into this journal.
func (x *sessionRun) runRemote(ctx context.Context) error {
	r, p := x.r, x.plan()
	addr, peer, err := mover.ParsePeerAddr(p.Staging)
	if err != nil {
		return err
	}
	sender, err := mover.NewSender(r.o.Home, r.o.Log)
	if err != nil {
		return fmt.Errorf("the orchestrator needs an identity to command %s: run 'pgporter mover init --home %s', then on the staging host 'pgporter mover trust ID --allow orchestrate': %w", p.Staging, r.o.Home, err)
	}
	defer sender.Close()
	plan := *p
	plan.Staging = ""
	body, err := json.Marshal(job{Session: x.s.ID, Plan: plan, Password: r.o.Password})
	if err != nil {
		return err
	}
	err = sender.RunJob(ctx, addr, peer, body, func(ev []byte) {
		var e Event
		if json.Unmarshal(ev, &e) != nil {
			return
		}
		x.mirror(e)
		r.emit(e)
	})
	if err != nil {
		// Steps the staging mover was running when it failed failed with it.
		_ = x.update(func(s *Session) {
			for _, st := range s.Steps {
				if st.State == StepRunning {
					st.State, st.Ended, st.Error = StepFailed, time.Now().UTC(), err.Error()
				}
			}
		})
		return fmt.Errorf("on staging mover %s: %w", p.Staging, err)
	}
	return nil
}

// mirror records a staging mover's step event in this journal.
func (x *sessionRun) mirror(e Event) {
	if e.Step == "" || e.Kind == "progress" || e.Kind == "warning" {
		return
	}
	_ = x.update(func(s *Session) {
		st := s.Step(e.Step)
		now := time.Now().UTC()
		switch e.Kind {
		case "start":
			st.State, st.Started, st.Ended, st.Error = StepRunning, now, time.Time{}, ""
			st.Attempts++
			switch {
			case e.Step == StepCheck || e.Step == StepMount || e.Step == StepStart:
				s.State = StateChecking
			case strings.HasPrefix(e.Step, "dump:"):
				s.State = StateDumping
			case strings.HasPrefix(e.Step, "transfer:"):
				s.State = StateTransferring
			case e.Step == StepCleanup:
				s.State = StateCleaning
			}
		case "done":
			st.State, st.Ended = StepDone, now
			st.Bytes, st.WireBytes, st.Detail = e.Done, e.WireBytes, e.Text
		case "skip":
			if st.State != StepDone {
				st.State, st.Ended = StepDone, now
			}
			if e.Done > 0 || e.WireBytes > 0 {
				st.Bytes, st.WireBytes = e.Done, e.WireBytes
			}
		}
	})
}

// StagingJobs runs, on a staging mover, the jobs orchestrators hand it
// ('pgporter mover serve' wires it into the server): each is the staging
// half of an export session, journaled under the mover's home.
type StagingJobs struct {
	Home string
	Log  *slog.Logger
	// Serve starts the background process of a publication that a
	// publication job asks for (see publish_remote.go); Roots bound where
	// an export from one may write.
	Serve ServeCommand
	Roots []string

	mu      sync.Mutex             // guards running
	running map[string]*stagingRun // the job running each export session
}

// stagingRun is a job running an export session on this mover.
type stagingRun struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the job has let go of the session
}

var _ mover.JobRunner = (*StagingJobs)(nil)

// RunJob runs (or continues) the session the job names.
func (j *StagingJobs) RunJob(ctx context.Context, body []byte, emit func([]byte)) error {
	if pubJobKind(body) != "" {
		return j.runPubJob(ctx, body, emit)
	}
	var jb job
	if err := json.Unmarshal(body, &jb); err != nil {
		return fmt.Errorf("%w: bad job: %v", ErrBadPlan, err)
	}
	if jb.Plan.Staging != "" {
		return fmt.Errorf("%w: a staging mover does not hand jobs on", ErrBadPlan)
	}
	if !validSessionID(jb.Session) {
		return fmt.Errorf("%w: bad session ID %q", ErrBadPlan, jb.Session)
	}
	ctx, release, err := j.takeOver(ctx, jb.Session)
	if err != nil {
		return err
	}
	defer release()
	var r *Runner
	send := func(e Event) {
		if b, err := json.Marshal(e); err == nil {
			emit(b)
		}
	}
	r, err = NewRunner(Options{Home: j.Home, Log: j.Log, Password: jb.Password, Events: func(e Event) {
		if e.Kind == "skip" && e.Step != "" {
			// A step done in an earlier run: the orchestrator may have missed
			// its figures (it was killed before the done event reached it).
			if s, err := r.j.Get(jb.Session); err == nil {
				e = skipEvent(s.Step(e.Step))
			}
		}
		send(e)
	}})
	if err != nil {
		return err
	}
	if jb.Cancel {
		_, err := r.Cancel(ctx, jb.Session)
		if errors.Is(err, ErrNoSession) {
			return nil // it never started here
		}
		return err
	}
	if s, err := r.j.Get(jb.Session); errors.Is(err, ErrNoSession) {
		if _, err := r.create(jb.Plan, jb.Session); err != nil {
			return err
		}
	} else if err != nil {
		return err
	} else if s.State == StateDone {
		// Done here, yet asked again: the orchestrator missed the end of
		// the job (killed, or cut off). It gets every step's figures.
		for _, st := range s.Steps {
			send(skipEvent(st))
		}
	}
	_, err = r.Run(ctx, jb.Session)
	return err
}

// skipEvent reports st, done in an earlier run, with its figures.
func skipEvent(st *Step) Event {
	return Event{Step: st.Name, Kind: "skip", Done: st.Bytes, Total: st.Bytes, WireBytes: st.WireBytes, Text: "done in an earlier run"}
}

// takeOver makes the calling job the only one running session id on this
// mover. A job still running it was handed by an orchestrator that is gone
// without this mover noticing yet (killed, or cut off: its connection dies
// only when idle for jobIdleTimeout): a new job for the session is a retry
// or a cancel, so the old job is cancelled and waited for, instead of the
// new one failing with ErrRunning. release lets go of the session.
func (j *StagingJobs) takeOver(ctx context.Context, id string) (_ context.Context, release func(), _ error) {
	for {
		j.mu.Lock()
		old := j.running[id]
		if old == nil {
			if j.running == nil {
				j.running = map[string]*stagingRun{}
			}
			rctx, cancel := context.WithCancel(ctx)
			me := &stagingRun{cancel: cancel, done: make(chan struct{})}
			j.running[id] = me
			j.mu.Unlock()
			return rctx, func() {
				cancel()
				j.mu.Lock()
				delete(j.running, id)
				j.mu.Unlock()
				close(me.done)
			}, nil
		}
		j.mu.Unlock()
		if j.Log != nil {
			j.Log.Info("a new job for the session: stopping the earlier one, whose orchestrator is gone", "session", id)
		}
		old.cancel()
		select {
		case <-old.done:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// validSessionID accepts what newSessionID makes, and nothing that could
// leave a directory.
func validSessionID(id string) bool {
	if id == "" || len(id) > 64 || strings.HasPrefix(id, ".") {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// cancelRemote asks the staging mover to cancel its half of the session.
func (r *Runner) cancelRemote(ctx context.Context, s *Session) error {
	addr, peer, err := mover.ParsePeerAddr(s.Plan.Staging)
	if err != nil {
		return err
	}
	sender, err := mover.NewSender(r.o.Home, r.o.Log)
	if err != nil {
		return err
	}
	defer sender.Close()
	plan := s.Plan
	plan.Staging = ""
	body, err := json.Marshal(job{Session: s.ID, Plan: plan, Cancel: true})
	if err != nil {
		return err
	}
	if err := sender.RunJob(ctx, addr, peer, body, func([]byte) {}); err != nil {
		return fmt.Errorf("cancelling on staging mover %s (it holds the dumps, instance and mount; retry the cancel when it is reachable): %w", s.Plan.Staging, err)
	}
	return nil
}
