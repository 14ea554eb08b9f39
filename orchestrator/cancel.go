package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/protocol"
	"github.com/pgporter/pgporter/staging"
)

// reclaim releases what a run that died (SIGKILL, power loss) left on the
// staging host: a postgres still running on the dead mount, and the mount.
func (r *Runner) reclaim(ctx context.Context, s *Session) error {
	if pid := s.Resources.InstancePID; pid > 0 {
		if err := stopOrphan(ctx, pid); err != nil {
			return fmt.Errorf("stopping the instance (pid %d) left by an earlier run: %w", pid, err)
		}
		r.o.Log.Info("stopped an instance left by an earlier run", "session", s.ID, "pid", pid)
		s.Resources.InstancePID = 0
	}
	if mnt := s.Resources.Mountpoint; mnt != "" {
		if _, err := staging.CleanStaleMount(mnt); err != nil {
			return fmt.Errorf("cleaning the mount %s left by an earlier run: %w", mnt, err)
		}
		_ = os.Remove(mnt)
		s.Resources.Mountpoint = ""
	}
	return r.j.Put(s)
}

// stopOrphan stops a postmaster that an earlier run started, if pid is
// still one: SIGQUIT (immediate shutdown), then SIGKILL.
func stopOrphan(ctx context.Context, pid int) error {
	if !isPostgres(pid) {
		return nil // gone, or the PID was reused by something else
	}
	// The instance was started in a process group of its own: signal the
	// whole group, backends included.
	_ = syscall.Kill(-pid, syscall.SIGQUIT)
	deadline := time.Now().Add(10 * time.Second)
	for isPostgres(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			deadline = time.Now().Add(10 * time.Second)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond): // polling a process we do not own
		}
	}
	return nil
}

// isPostgres reports whether pid is a live (not zombie) postgres process.
func isPostgres(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...
	s := string(stat)
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open || close+2 >= len(s) {
		return false
	}
	comm, state := s[open+1:close], s[close+2]
	return strings.HasPrefix(comm, "postgres") && state != 'Z' && state != 'X'
}

// Cancel ends session id and releases everything it holds: the instance,
// the mount, the staging dumps, partial target directories, and the
// directories of a local To that the session created, if they are empty
// (Session.Removed lists them); a target directory moved aside by
// --overwrite is put back. A session running in
// another process must be interrupted first.
func (r *Runner) Cancel(ctx context.Context, id string) (*Session, error) {
	lock, err := r.j.Lock(id)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	s, err := r.j.Get(id)
	if err != nil {
		return nil, err
	}
	if s.State == StateDone {
		return s, fmt.Errorf("session %s is done; nothing to cancel (its dumps are delivered)", id)
	}
	if s.State == StateCancelled {
		if len(s.Resources.TargetLeft) > 0 {
			// Only the target's part was left to do.
			if s.Plan.Staging != "" {
				return s, r.cancelStaging(ctx, s)
			}
			return s, r.abandonOnTarget(ctx, s)
		}
		return s, nil
	}
	if s.Plan.Published != "" {
		return r.cancelPublished(ctx, s)
	}
	if s.Plan.Staging != "" {
		// The staging host holds what there is to release, and asks the
		// target to remove what its transfers left.
		return s, r.cancelStaging(ctx, s)
	}
	if err := r.reclaim(ctx, s); err != nil {
		return s, err
	}
	if err := removeOwned(s.SessionDir(), s.ID); err != nil {
		return s, fmt.Errorf("removing the staging files: %w", err)
	}
	var onTarget []string
	for _, db := range s.Plan.Databases {
		if s.Step(TransferStep(db)).State == StepDone {
			continue // delivered and verified: the user's now
		}
		if s.Plan.Target != "" {
			// The target mover made them: it removes them, asked below.
			onTarget = append(onTarget, db)
			continue
		}
		// The embedded target mover made it a real directory; anything else
		// there (a link planted by a local user) is not pgporter's.
		partial := s.TargetDir(db) + ".partial"
		if fi, err := os.Lstat(partial); err == nil && !fi.IsDir() {
			r.o.Log.Warn("left as it is: not a directory the target mover made", "session", s.ID, "path", partial, "type", fi.Mode().Type().String())
		} else if err := os.RemoveAll(partial); err != nil {
			return s, err
		}
		// The empty directory under a temporary name that a target mover
		// killed while making DEST.partial leaves (rmdir: nothing else).
		mover.RemovePartialTemps(partial)
		if aside, ok := s.Resources.Aside[db]; ok {
			if _, err := mover.PutBack(mover.HostFS, s.TargetDir(db), aside); err != nil {
				return s, err
			}
			delete(s.Resources.Aside, db)
		}
	}
	if s.Plan.Target == "" {
		// Last: a To the export made is empty only once its partial
		// directories are gone.
		s.Removed = r.removeMadeTo(s)
		s.Resources.MadeTo = nil
	}
	s.State, s.Error, s.PID = StateCancelled, "", 0 // a run killed before it could clear its PID
	if len(onTarget) > 0 {
		s.Resources.TargetLeft = onTarget
		return s, r.abandonOnTarget(ctx, s)
	}
	return s, r.j.Put(s)
}

// cancelStaging has the staging mover cancel its half of the session
// (cancelRemote) and cancels s. When the staging mover could not have the
// target remove its partial directories (ErrTargetLeft), s is cancelled
// all the same, with them in Resources.TargetLeft for the next cancel.
func (r *Runner) cancelStaging(ctx context.Context, s *Session) error {
	err := r.cancelRemote(ctx, s)
	if err != nil && !errors.Is(err, ErrTargetLeft) {
		return err
	}
	s.Resources.TargetLeft = nil
	if err != nil {
		for _, db := range s.Plan.Databases {
			if s.Step(TransferStep(db)).State != StepDone {
				s.Resources.TargetLeft = append(s.Resources.TargetLeft, db)
			}
		}
	}
	s.State, s.Error, s.PID = StateCancelled, "", 0 // a run killed before it could clear its PID
	if perr := r.j.Put(s); perr != nil {
		return perr
	}
	return err
}

// ErrTargetLeft matches a cancel that left partial directories on the
// target mover because it could not be asked to remove them
// (*TargetLeftError, or a staging mover's cancel job that failed so).
var ErrTargetLeft = errors.New("orchestrator: partial directories left on the target mover")

// TargetLeftError reports a cancel that released everything on this host
// but could not have the target mover remove the partial directories it
// made (Session.Resources.TargetLeft): the session is cancelled, and the
// next cancel asks the target again. Its exit code is its cause's (4 for a
// target that does not answer).
type TargetLeftError struct {
	Target string
	Dirs   []string // the DEST.partial directories on the target
	Err    error
}

func (e *TargetLeftError) Error() string {
	return fmt.Sprintf("cancelled here, but the target mover %s could not remove %s (run the cancel again once it is reachable): %v",
		e.Target, strings.Join(e.Dirs, ", "), e.Err)
}

func (e *TargetLeftError) Unwrap() []error { return []error{ErrTargetLeft, e.Err} }

// abandonOnTarget asks the target mover (Plan.Target) to remove the
// partial directories of the databases in s.Resources.TargetLeft, sending
// with this home's identity: the one that sent the transfers. A target too
// old to do it, or one that refuses (a directory not as its transfer left
// it, an identity it does not trust with send), is noted in s.TargetNotes
// and not asked again; one that cannot be reached (or is busy) keeps them
// in TargetLeft, and the error is a *TargetLeftError.
// It journals s.
func (r *Runner) abandonOnTarget(ctx context.Context, s *Session) error {
	var left []string
	var errs []error
	addr, peer, err := mover.ParsePeerAddr(s.Plan.Target)
	var id *mover.Identity
	if err == nil {
		id, err = mover.LoadIdentity(r.o.Home)
	}
	if err != nil {
		left, errs = s.Resources.TargetLeft, []error{err}
	} else {
		for _, db := range s.Resources.TargetLeft {
			dest := s.TargetDir(db)
			st, err := mover.Abandon(ctx, id, addr, peer, s.ID+"-"+transferIDPart(db), dest)
			var old *mover.TooOldError
			var refused *protocol.RemoteError
			switch {
			case errors.As(err, &old):
				r.noteTarget(s, old.Error())
				left, errs = nil, nil
			case (errors.As(err, &refused) && !protocol.Retryable(err)) || errors.Is(err, mover.ErrUntrusted) ||
				errors.Is(err, mover.ErrWrongPeer) || errors.Is(err, protocol.ErrPermission):
				// Refused, not unreachable: not this session's to remove as
				// the target sees it, or this identity may not ask.
				r.noteTarget(s, fmt.Sprintf("%s.partial stays on the target: %v", dest, err))
				continue
			case err != nil:
				// Unreachable, or busy: the next cancel asks again.
				left, errs = append(left, db), append(errs, err)
				continue
			case st == protocol.AbandonRemoved:
				s.RemovedOnTarget = append(s.RemovedOnTarget, dest+".partial")
				r.o.Log.Info("removed on the target", "session", s.ID, "path", dest+".partial")
				r.emit(Event{Step: removedOnTargetStep, Kind: protocol.EventDone, Text: dest + ".partial"})
				continue
			default:
				continue
			}
			break // too old: the others are left too
		}
	}
	s.Resources.TargetLeft = left
	if perr := r.j.Put(s); perr != nil {
		return perr
	}
	if len(left) == 0 {
		return nil
	}
	dirs := make([]string, len(left))
	for i, db := range left {
		dirs[i] = s.TargetDir(db) + ".partial"
	}
	return &TargetLeftError{Target: s.Plan.Target, Dirs: dirs, Err: errors.Join(errs...)}
}

// removedOnTargetStep names the done event of a cancel job that reports a
// DEST.partial the target removed (its Text), to the orchestrator.
const removedOnTargetStep = "cancel:target"

// noteTarget records and reports what a cancel leaves on the target.
func (r *Runner) noteTarget(s *Session, note string) {
	s.TargetNotes = append(s.TargetNotes, note)
	r.o.Log.Warn(note, "session", s.ID)
	r.emit(Event{Kind: protocol.EventWarning, Text: note})
}

// ReclaimOrphans releases what sessions journaled under home hold on this
// host (an instance, a mount) when no process runs them any more: a mover
// restarted after a crash calls it, so that nothing it had started lingers
// until the next retry. Sessions running in another process are left alone.
// It returns how many sessions it cleaned.
func ReclaimOrphans(ctx context.Context, home string, log *slog.Logger) (int, error) {
	r, err := NewRunner(Options{Home: home, Log: log})
	if err != nil {
		return 0, err
	}
	list, err := r.j.List()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range list {
		if s.Resources.InstancePID == 0 && s.Resources.Mountpoint == "" {
			continue
		}
		lock, err := r.j.Lock(s.ID)
		if err != nil {
			if stuck := (*staging.StuckError)(nil); errors.As(err, &stuck) {
				r.o.Log.Warn("cannot reclaim an interrupted session", "session", s.ID, "err", err)
			}
			continue // running elsewhere, or stuck: retry and cancel report it too
		}
		// Read it again under the lock: the run may have just ended.
		if s, err = r.j.Get(s.ID); err == nil {
			err = r.reclaim(ctx, s)
		}
		lock.Unlock()
		if err != nil {
			return n, fmt.Errorf("session %s: %w", s.ID, err)
		}
		r.o.Log.Info("released what an interrupted session held", "session", s.ID)
		n++
	}
	return n, nil
}
