package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/protocol"
	"github.com/pgporter/pgporter/staging"
)

// runRemote runs the session on the staging mover named in the plan and
// mirrors its steps into this journal: the staging half of the session,
// which the staging mover journals under the same ID, so that handing it
// again (retry) continues it.
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
	plan := peerPlan(p)
	jb := &protocol.RunJob{Kind: protocol.JobExport, Version: protocol.JobVersion, Session: x.s.ID, Plan: planToWire(&plan), Password: r.o.Password}
	err = sender.RunJob(ctx, addr, peer, jb, func(ev *protocol.JobEvent) {
		if x.mirror(ev) {
			r.emit(eventFromWire(ev))
		}
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
		return fmt.Errorf("on staging mover %s: %w", p.Staging, fromJob(err))
	}
	return nil
}

// mirror records a mover's step event in this journal, and reports whether
// it is one to pass on to this run's events: a step event about the whole
// session or naming a step of it. Any other (a result, a step name no
// session has, a database not in the plan) is dropped, so that a peer adds
// no such step to the journal.
func (x *sessionRun) mirror(ev *protocol.JobEvent) bool {
	switch ev.Kind {
	case protocol.EventStart, protocol.EventDone, protocol.EventSkip, protocol.EventProgress, protocol.EventWarning:
	default:
		return false
	}
	kind, db, ok := ParseStep(ev.Step)
	if ev.Step != "" && (!ok || (db != "" && !slices.Contains(x.plan().Databases, db))) {
		return false
	}
	if ev.Step == "" || ev.Kind == protocol.EventProgress || ev.Kind == protocol.EventWarning {
		return true
	}
	_ = x.update(func(s *Session) {
		st := s.Step(ev.Step)
		now := time.Now().UTC()
		switch ev.Kind {
		case protocol.EventStart:
			st.State, st.Started, st.Ended, st.Error = StepRunning, now, time.Time{}, ""
			st.Attempts++
			switch kind {
			case StepCheck, StepMount, StepStart:
				s.State = StateChecking
			case StepDump:
				s.State = StateDumping
			case StepTransfer:
				s.State = StateTransferring
			case StepCleanup:
				s.State = StateCleaning
			}
		case protocol.EventDone:
			st.State, st.Ended = StepDone, now
			st.Bytes, st.WireBytes, st.Detail = ev.Done, ev.WireBytes, ev.Text
			st.Manifest = ev.Manifest
		case protocol.EventSkip:
			if st.State != StepDone {
				st.State, st.Ended = StepDone, now
			}
			if ev.Done > 0 || ev.WireBytes > 0 {
				st.Bytes, st.WireBytes = ev.Done, ev.WireBytes
			}
			if ev.Manifest != "" {
				st.Manifest = ev.Manifest
			}
		}
	})
	return true
}

// peerPlan is the plan as a staging mover is handed it: without what the
// staging host decides itself (its staging directory, OS user and local
// repository; a staging mover refuses a peer's values for them).
func peerPlan(p *Plan) Plan {
	plan := *p
	plan.Staging, plan.StagingDir, plan.OSUser = "", "", ""
	if plan.RepoPeer != "" {
		plan.Repo = ""
	}
	return plan
}

// StagingJobs runs, on a staging mover, the jobs orchestrators hand it
// ('pgporter mover serve' wires it into the server): each is the staging
// half of an export session, journaled under the mover's home.
//
// A peer trusted with orchestrate names what to export and where to send
// it, never what happens on this host's file system beyond that: the
// staging directory, the OS user that runs PostgreSQL, a local
// repository and the address publications listen on are this mover's
// settings, a job's own values for them are refused (ErrPeerSetting), and
// every local path in a job must resolve inside Roots.
type StagingJobs struct {
	Home string
	Log  *slog.Logger
	// Serve starts the background process of a publication that a
	// publication job asks for (see publish_remote.go); Roots bound where
	// a job may write on this host (a local --to, an export from a
	// publication).
	Serve ServeCommand
	Roots []string
	// StagingDir is where export jobs' dumps go ('mover serve
	// --staging-dir'; default DefaultStagingDir).
	StagingDir string
	// OSUser runs the instances of jobs ('mover serve --os-user'; default
	// postgres).
	OSUser string
	// Repo is the local repository jobs may read ('mover serve
	// --job-repo'); without it, jobs name a repository mover.
	Repo string
	// PublishListen is the address publications of jobs listen on ('mover
	// serve --publish-listen'; default 127.0.0.1).
	PublishListen string
	// ExportDone, if set, is called when an export job ends with its
	// session done (the daemon's metrics keep the time).
	ExportDone func(session string)
	// ExportProgress, if set, is called with each step's progress of an
	// export job (bytes of a transfer, tables of a dump; done equals total
	// once the step is done), and ExportEnded once the job ends, whatever
	// its outcome (the daemon's per-session series).
	ExportProgress func(session, step string, done, total int64)
	ExportEnded    func(session string)
	// Self is as Options.Self: how a point-in-time export job's instance
	// runs this pgporter ("" means this process's executable).
	Self string

	mu      sync.Mutex             // guards running
	running map[string]*stagingRun // the job running each export session
}

// stagingRun is a job running an export session on this mover.
type stagingRun struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the job has let go of the session
}

var _ mover.JobRunner = (*StagingJobs)(nil)

// RunJob runs the job: an export session's staging half, a
// publication's job (publish_remote.go), or an export session from a
// publication (publish_session.go).
func (j *StagingJobs) RunJob(ctx context.Context, jb *protocol.RunJob, emit func(*protocol.JobEvent)) error {
	return jobReason(j.runJob(ctx, jb, emit))
}

func (j *StagingJobs) runJob(ctx context.Context, jb *protocol.RunJob, emit func(*protocol.JobEvent)) error {
	switch jb.Kind {
	case protocol.JobExport, protocol.JobCancelExport:
		return j.runExportJob(ctx, jb, emit)
	case protocol.JobExportPublished, protocol.JobCancelExportPublished:
		return j.runSessionJob(ctx, jb, emit)
	default:
		return j.runPubJob(ctx, jb, emit)
	}
}

// runExportJob runs (or continues, or cancels) the staging half of an
// export session.
func (j *StagingJobs) runExportJob(ctx context.Context, jb *protocol.RunJob, emit func(*protocol.JobEvent)) error {
	if !validSessionID(jb.Session) {
		return fmt.Errorf("%w: bad session ID %q (not one pgporter makes)", ErrBadPlan, jb.Session)
	}
	cancel := jb.Kind == protocol.JobCancelExport
	var plan Plan
	if !cancel {
		plan = planFromWire(jb.Plan)
		if err := j.confinePlan(&plan); err != nil {
			return err
		}
	}
	ctx, release, err := j.takeOver(ctx, jb.Session)
	if err != nil {
		return err
	}
	defer release()
	if j.ExportEnded != nil && !cancel {
		defer j.ExportEnded(jb.Session)
	}
	var r *Runner
	var totalsMu sync.Mutex
	totals := map[string]int64{} // each step's last progress total
	r, err = NewRunner(Options{Home: j.Home, Log: j.Log, Self: j.Self, Password: jb.Password, Roots: j.Roots, Events: func(e Event) {
		ev := eventToWire(e)
		if j.ExportProgress != nil && e.Step != "" && !cancel {
			totalsMu.Lock()
			switch e.Kind {
			case protocol.EventProgress:
				totals[e.Step] = e.Total
				j.ExportProgress(jb.Session, e.Step, e.Done, e.Total)
			case protocol.EventDone:
				// Done in the unit of its progress: all of it.
				t := max(totals[e.Step], 1)
				j.ExportProgress(jb.Session, e.Step, t, t)
			}
			totalsMu.Unlock()
		}
		switch {
		case e.Kind == protocol.EventSkip && e.Step != "":
			// A step done in an earlier run: the orchestrator may have missed
			// its figures (it was killed before the done event reached it).
			if s, err := r.j.Get(jb.Session); err == nil {
				ev = skipEvent(s.Step(e.Step))
			}
		case e.Kind == protocol.EventDone:
			if kind, _, _ := ParseStep(e.Step); kind == StepTransfer {
				// Journaled here before the event: the orchestrator keeps it too.
				if s, err := r.j.Get(jb.Session); err == nil {
					ev.Manifest = s.Step(e.Step).Manifest
				}
			}
		}
		emit(ev)
	}})
	if err != nil {
		return err
	}
	if cancel {
		_, err := r.Cancel(ctx, jb.Session)
		if errors.Is(err, ErrNoSession) {
			return nil // it never started here
		}
		return err
	}
	if s, err := r.j.Get(jb.Session); errors.Is(err, ErrNoSession) {
		if _, err := r.create(ctx, plan, jb.Session); err != nil {
			return err
		}
	} else if err != nil {
		return err
	} else if s.State == StateDone {
		// Done here, yet asked again: the orchestrator missed the end of
		// the job (killed, or cut off). It gets every step's figures.
		for _, st := range s.Steps {
			emit(skipEvent(st))
		}
	}
	s, err := r.Run(ctx, jb.Session)
	if err == nil && s != nil && s.State == StateDone && j.ExportDone != nil {
		j.ExportDone(jb.Session)
	}
	if errors.Is(err, staging.ErrHBA) {
		// The backup's pg_hba.conf refuses the role: the wire code is a
		// refused permission (the orchestrator exits 5, as for a local
		// export), the job's reason (errorKinds) ErrHBA itself.
		err = marked{err, protocol.ErrPermission}
	}
	return err
}

// skipEvent reports st, done in an earlier run, with its figures.
func skipEvent(st *Step) *protocol.JobEvent {
	ev := eventToWire(Event{Step: st.Name, Kind: protocol.EventSkip, Done: st.Bytes, Total: st.Bytes, WireBytes: st.WireBytes, Text: "done in an earlier run"})
	ev.Manifest = st.Manifest
	return ev
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

// validSessionID accepts exactly what newSessionID makes
// (x-YYYYMMDD-HHMMSS-hhhhhh): a session ID from the wire names a directory
// in the staging directory and a mount point in /tmp, so a bare word such
// as "etc" is refused as surely as "../x".
func validSessionID(id string) bool {
	const layout = "x-20060102-150405-"
	if len(id) != len(layout)+6 || !strings.HasPrefix(id, "x-") || id[10] != '-' || id[17] != '-' {
		return false
	}
	if _, err := time.Parse("20060102-150405", id[2:17]); err != nil {
		return false
	}
	for _, c := range id[18:] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// validPubID accepts a publication ID from the wire that cannot leave a
// directory; publications are looked up in the journal by it, never made.
func validPubID(id string) bool {
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

// DefaultStagingDir is where dumps are staged unless --staging-dir says
// otherwise.
const DefaultStagingDir = "/var/tmp/pgporter"

const defaultOSUser = "postgres"

// ErrPeerSetting marks a job value that only the mover's own configuration
// may set.
var ErrPeerSetting = errors.New("set by the mover, not by the orchestrator")

// peerSetting refuses a peer's value for a setting of this mover: the value
// the mover uses anyway, or the built-in default an orchestrator fills in
// when its user named none, is no choice and is accepted.
func peerSetting(field, flag, got, mine, builtin string) error {
	if got == "" || got == mine || got == builtin {
		return nil
	}
	return fmt.Errorf("%w: %s is set by the staging mover (%s), not by the orchestrator (the job asked for %q; this mover uses %q)", ErrPeerSetting, field, flag, got, mine)
}

func (j *StagingJobs) stagingDir() string {
	if j.StagingDir == "" {
		return DefaultStagingDir
	}
	return j.StagingDir
}

func (j *StagingJobs) osUser() string {
	if j.OSUser == "" {
		return defaultOSUser
	}
	return j.OSUser
}

// confinePlan puts this mover's settings into an export job's plan,
// refusing the peer's own values for them, and confines its local paths
// to the mover's roots. (A job's plan names no staging mover: a mover
// hands no job on, and the wire cannot say so.)
func (j *StagingJobs) confinePlan(p *Plan) error {
	if p.Published != "" {
		return fmt.Errorf("%w: an export from a publication is a %s job", ErrBadPlan, protocol.JobExportPublished)
	}
	if err := peerSetting("staging_dir", "--staging-dir", p.StagingDir, j.stagingDir(), DefaultStagingDir); err != nil {
		return err
	}
	if err := peerSetting("os_user", "--os-user", p.OSUser, j.osUser(), defaultOSUser); err != nil {
		return err
	}
	p.StagingDir, p.OSUser = j.stagingDir(), j.osUser()
	switch {
	case p.RepoPeer != "" && p.Repo != "":
		return fmt.Errorf("%w: a job names the repository mover (repo_peer) or none, not a local repo", ErrPeerSetting)
	case p.RepoPeer == "" && j.Repo == "":
		return fmt.Errorf("%w: repo is set by the staging mover (--job-repo), which has none: name a repository mover with --repo-peer", ErrPeerSetting)
	case p.RepoPeer == "":
		if p.Repo != "" && !sameDir(p.Repo, j.Repo) {
			return fmt.Errorf("%w: repo is set by the staging mover (--job-repo), not by the orchestrator (the job asked for %q)", ErrPeerSetting, p.Repo)
		}
		p.Repo = j.Repo
	}
	if p.Target == "" {
		// This host is the target too: the dumps land in its roots.
		if p.Overwrite {
			return fmt.Errorf("%w: overwrite is not accepted from a peer: a job only adds new directories to this mover's roots", ErrBadPlan)
		}
		to, err := confine(p.To, j.Roots)
		if err != nil {
			return fmt.Errorf("to: %w", err)
		}
		p.To = to
	}
	return nil
}

// sameDir reports whether a and b name the same directory, links resolved.
func sameDir(a, b string) bool {
	ra, err1 := resolveExisting(a)
	rb, err2 := resolveExisting(b)
	return err1 == nil && err2 == nil && ra == rb
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
	jb := &protocol.RunJob{Kind: protocol.JobCancelExport, Version: protocol.JobVersion, Session: s.ID}
	s.RemovedOnTarget, s.TargetNotes = nil, nil
	err = sender.RunJob(ctx, addr, peer, jb, func(ev *protocol.JobEvent) {
		// What the staging mover had the target remove, or could not.
		switch ev.Kind {
		case protocol.EventWarning:
			s.TargetNotes = append(s.TargetNotes, ev.Text)
		case protocol.EventDone:
			if ev.Step == removedOnTargetStep {
				s.RemovedOnTarget = append(s.RemovedOnTarget, ev.Text)
			}
		}
	})
	if err = fromJob(err); errors.Is(err, ErrTargetLeft) {
		return fmt.Errorf("cancelled on staging mover %s, which could not have the target mover remove the partial directories (run the cancel again once they reach each other): %w", s.Plan.Staging, err)
	} else if err != nil {
		return fmt.Errorf("cancelling on staging mover %s (it holds the dumps, instance and mount; retry the cancel when it is reachable): %w", s.Plan.Staging, err)
	}
	return nil
}
