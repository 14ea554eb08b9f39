package orchestrator

import (
	"context"
	"errors"
	"fmt"

	"github.com/pgporter/pgporter/protocol"
)

// ServeCommand is how a publication's background process is started: the
// command line, to which the publication ID is appended, and what it adds
// to the environment. It is pgporter's hidden 'publish --serve'.
type ServeCommand struct {
	Args []string
	Env  []string
}

// ErrNotDead is returned by Resume for a publication that is not dead.
var ErrNotDead = errors.New("publication is not dead")

// Resume serves a dead publication again (its serve process was killed, or
// its host rebooted), or a resumed one that failed to come up and kept its
// layer: it stops the instance the dead process left, removes its mounts,
// mounts the restore point again under the same copy-on-write layer and
// starts the instance on the same address and port. Every write
// the instance had made durable is there; the instance does crash recovery
// as after a power loss. It returns once the instance is up.
func (pb *Publisher) Resume(ctx context.Context, id string, serve ServeCommand) (*Publication, error) {
	if len(serve.Args) == 0 {
		return nil, errors.New("resume needs the serve command")
	}
	if p, err := pb.j.GetPublication(id); err != nil {
		return nil, err // before the lock, which would create a lock file
	} else if p.On != "" {
		return pb.resumeOn(ctx, p)
	}
	lock, err := pb.j.Lock(id)
	if errors.Is(err, ErrRunning) {
		return nil, fmt.Errorf("%w: %s is served by a running process", ErrNotDead, id)
	}
	if err != nil {
		return nil, err
	}
	p, err := pb.j.GetPublication(id)
	if err != nil {
		lock.Unlock()
		return nil, err
	}
	switch {
	case !resumable(p):
		lock.Unlock()
		return nil, fmt.Errorf("%w: %s is %s ('pgporter unpublish %s' removes what is left)", ErrNotDead, id, p.State, id)
	case !exists(p.UpperDir()):
		lock.Unlock()
		return nil, fmt.Errorf("publication %s has no copy-on-write layer at %s to resume on; unpublish it", id, p.UpperDir())
	}
	if err := pb.releaseMounts(ctx, p); err != nil {
		lock.Unlock()
		return nil, err
	}
	if err := checkPort(p.Listen, p.Port); err != nil {
		lock.Unlock()
		return nil, fmt.Errorf("publication %s cannot listen again: %w", id, err)
	}
	err = pb.j.UpdatePublication(id, func(p *Publication) {
		p.State, p.Error, p.InstancePID, p.ServePID, p.Mounted, p.Unpublishing = PubStarting, "", 0, 0, false, false
		p.Restarts++
	})
	if err != nil {
		lock.Unlock()
		return nil, err
	}
	pb.log.Info("resuming a dead publication", "publication", id, "port", p.Port)
	return pb.spawn(ctx, id, lock, serve.Args, serve.Env)
}

// resumable reports whether p, whose lock nobody holds, has a layer to be
// served again on: its process died, or a resume of it failed.
func resumable(p *Publication) bool {
	switch p.State {
	case PubStarting, PubUp, PubStopping:
		return true
	case PubFailed:
		return p.Restarts > 0 && exists(p.UpperDir())
	}
	return false
}

// resumeOn resumes publication p on its mover.
func (pb *Publisher) resumeOn(ctx context.Context, p *Publication) (*Publication, error) {
	res, err := pb.remoteJob(ctx, p.On, &protocol.RunJob{Kind: protocol.JobResume, Version: protocol.JobVersion, Publication: p.ID})
	if err != nil {
		return nil, err // ErrNotDead, from the mover's job, matches
	}
	if res.Publication == nil {
		return nil, fmt.Errorf("mover %s did not return the publication", p.On)
	}
	q := publicationFromWire(res.Publication, p.On)
	return q, pb.j.PutPublication(q)
}

// RecoverResult is what Recover did to one dead publication.
type RecoverResult struct {
	ID     string
	Action string // OnRestartRestart or OnRestartCleanup
	Err    error
}

// Recover handles the publications of this home whose serve process is
// gone (and those whose resume failed with their layer kept), as each was
// configured: it resumes those with OnRestartRestart and
// unpublishes those with OnRestartCleanup. 'pgporter mover serve' calls it
// when it starts. Publications that run, and those another host runs, are
// left alone. One publication's failure does not stop the others.
func (pb *Publisher) Recover(ctx context.Context, serve ServeCommand) ([]RecoverResult, error) {
	list, err := pb.List(false)
	if err != nil {
		return nil, err
	}
	var out []RecoverResult
	for _, p := range list {
		if p.On != "" || (p.State != PubDead && !(p.State == PubFailed && resumable(p))) {
			continue
		}
		res := RecoverResult{ID: p.ID, Action: p.OnRestart}
		if res.Action == "" {
			res.Action = OnRestartRestart
		}
		switch res.Action {
		case OnRestartCleanup:
			_, res.Err = pb.Unpublish(ctx, p.ID)
		default:
			_, res.Err = pb.Resume(ctx, p.ID, serve)
		}
		if errors.Is(res.Err, ErrNotDead) {
			continue // another process got to it first
		}
		if res.Err != nil {
			pb.log.Warn("recovering a dead publication", "publication", p.ID, "action", res.Action, "err", res.Err)
		} else {
			pb.log.Info("recovered a dead publication", "publication", p.ID, "action", res.Action)
		}
		out = append(out, res)
	}
	return out, ctx.Err()
}
