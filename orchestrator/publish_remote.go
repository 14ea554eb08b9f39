package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/protocol"
)

// Publications on another host ('pgporter publish --on ADDR#PEER_ID') are
// run by that host's mover, under its home, as if published there: the
// mover's journal holds them, its serve processes run them, and a restart
// of that mover recovers them. The orchestrator that asked keeps a record
// with On set, and reaches the publication through publication jobs
// (protocol.JobPublish, JobListPublications, JobUnpublish, JobResume) on
// the mover's RunJob, which needs the orchestrate permission. A job ends
// with one result event: the publication, or the list of them.

// runPubJob runs a publication job on this mover, under its home.
func (j *StagingJobs) runPubJob(ctx context.Context, jb *protocol.RunJob, emit func(*protocol.JobEvent)) error {
	if jb.Publication != "" && !validPubID(jb.Publication) {
		return fmt.Errorf("%w: bad publication ID %q", ErrBadPlan, jb.Publication)
	}
	pb, err := NewPublisher(j.Home, j.Log)
	if err != nil {
		return err
	}
	res := &protocol.JobEvent{Kind: protocol.EventResult, Version: protocol.JobVersion}
	var p *Publication
	switch jb.Kind {
	case protocol.JobPublish:
		if len(j.Serve.Args) == 0 {
			return errors.New("this mover cannot publish: it has no serve command")
		}
		// What runs here is this mover's choice, never the peer's.
		o := publishFromWire(jb.Publish)
		if err := j.confinePublish(&o); err != nil {
			return err
		}
		o.Serve, o.ServeEnv, o.Self = j.Serve.Args, j.Serve.Env, j.Self
		p, err = pb.Publish(ctx, o)
	case protocol.JobListPublications:
		var ps []*Publication
		ps, err = pb.List(true)
		for _, q := range ps {
			q.CowSize = CowBytes(q)
			res.Publications = append(res.Publications, publicationToWire(q))
		}
	case protocol.JobUnpublish:
		p, err = pb.Unpublish(ctx, jb.Publication)
	case protocol.JobResume:
		p, err = pb.Resume(ctx, jb.Publication, j.Serve)
	default:
		return fmt.Errorf("%w: a %s job is not a publication's", ErrBadPlan, jb.Kind)
	}
	if err != nil {
		return err
	}
	if p != nil {
		w := publicationToWire(p)
		res.Publication = &w
	}
	emit(res)
	return nil
}

// confinePublish puts this mover's settings into a publish job's options,
// refusing the peer's own values for them: the OS user, the listen
// address and a local repository are the mover's to choose.
func (j *StagingJobs) confinePublish(o *PublishOptions) error {
	if err := peerSetting("os_user", "--os-user", o.OSUser, j.osUser(), defaultOSUser); err != nil {
		return err
	}
	listen := j.PublishListen
	if listen == "" {
		listen = "127.0.0.1"
	}
	if err := peerSetting("listen", "--publish-listen", o.Listen, listen, "127.0.0.1"); err != nil {
		return err
	}
	o.OSUser, o.Listen = j.osUser(), listen
	if o.Repo != "" {
		if j.Repo == "" {
			return fmt.Errorf("%w: repo is set by the mover (--job-repo), which has none: name a repository mover with --repo-peer", ErrPeerSetting)
		}
		if !sameDir(o.Repo, j.Repo) {
			return fmt.Errorf("%w: repo is set by the mover (--job-repo), not by the orchestrator (the job asked for %q)", ErrPeerSetting, o.Repo)
		}
		o.Repo = j.Repo
	}
	return nil
}

// confineSessionPlan puts this mover's staging directory into the plan of
// an export from a publication, refusing the peer's own, and confines a
// local --to to the mover's roots.
func (j *StagingJobs) confineSessionPlan(p *Plan) error {
	if err := peerSetting("staging_dir", "--staging-dir", p.StagingDir, j.stagingDir(), DefaultStagingDir); err != nil {
		return err
	}
	if err := peerSetting("os_user", "--os-user", p.OSUser, j.osUser(), defaultOSUser); err != nil {
		return err
	}
	p.StagingDir, p.OSUser = j.stagingDir(), ""
	if p.Target == "" {
		to, err := confine(p.To, j.Roots)
		if err != nil {
			return fmt.Errorf("to: %w", err)
		}
		p.To = to
	}
	return nil
}

// confine returns dir, a clean absolute path from a peer, with symbolic
// links resolved (those of the part that exists; the rest is created
// later), if it lies inside one of roots (resolved too); otherwise an
// error. A link inside a root that points out of it does not pass.
func confine(dir string, roots []string) (string, error) {
	if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
		return "", fmt.Errorf("%w: %q must be a clean absolute path on the mover's host", ErrBadPlan, dir)
	}
	got, err := resolveExisting(dir)
	if err != nil {
		return "", fmt.Errorf("%w: resolving %s: %v", ErrBadPlan, dir, err)
	}
	for _, r := range roots {
		r, err := filepath.Abs(r)
		if err != nil {
			continue
		}
		if r, err = resolveExisting(r); err != nil {
			continue
		}
		if got == r || strings.HasPrefix(got, r+string(filepath.Separator)) || r == "/" {
			return got, nil
		}
	}
	shown := dir
	if got != dir {
		shown = dir + " (" + got + ")"
	}
	return "", fmt.Errorf("%w: %s is outside this mover's roots (%s); start 'mover serve' with --root covering it", ErrBadPlan, shown, strings.Join(roots, ", "))
}

// resolveExisting resolves the symbolic links of dir's longest existing
// ancestor (dir itself if it exists) and appends the rest.
func resolveExisting(dir string) (string, error) {
	dir = filepath.Clean(dir)
	rest := ""
	for {
		res, err := filepath.EvalSymlinks(dir)
		if err == nil {
			return filepath.Join(res, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", err
		}
		rest = filepath.Join(filepath.Base(dir), rest)
		dir = parent
	}
}

// pubJobTimeout bounds the short publication jobs (list, and reaching the
// mover at all); publish and unpublish wait for the instance.
const pubJobTimeout = 10 * time.Second

// remoteJob runs a publication job on mover on and returns its result.
func (pb *Publisher) remoteJob(ctx context.Context, on string, jb *protocol.RunJob) (*protocol.JobEvent, error) {
	res, err := pb.remoteJobEvents(ctx, on, jb, nil)
	if err == nil && res == nil {
		return nil, fmt.Errorf("mover %s ended the %s job without a result", on, jb.Kind)
	}
	return res, err
}

// remoteJobEvents runs a job on mover on, passing its events but the
// result to onEvent (if not nil), and returns its result event, if it sent
// one.
func (pb *Publisher) remoteJobEvents(ctx context.Context, on string, jb *protocol.RunJob, onEvent func(*protocol.JobEvent)) (*protocol.JobEvent, error) {
	addr, peer, err := mover.ParsePeerAddr(on)
	if err != nil {
		return nil, err
	}
	sender, err := mover.NewSender(pb.home, pb.log)
	if err != nil {
		return nil, fmt.Errorf("commanding mover %s needs an identity in this home: run 'pgporter mover init --home %s', then on that mover's host 'pgporter mover trust ID --allow orchestrate' with the ID 'pgporter mover id --home %s' prints: %w", on, pb.home, pb.home, err)
	}
	defer sender.Close()
	var res *protocol.JobEvent
	err = sender.RunJob(ctx, addr, peer, jb, func(ev *protocol.JobEvent) {
		switch {
		case ev.Kind == protocol.EventResult:
			res = ev
		case onEvent != nil:
			onEvent(ev)
		}
	})
	if errors.Is(err, mover.ErrPermission) {
		return nil, fmt.Errorf("mover %s refuses this home's ID %s: on its host run 'pgporter mover trust %s --allow orchestrate': %w", on, sender.ID(), sender.ID(), err)
	}
	if err != nil {
		return nil, fmt.Errorf("on mover %s: %w", on, fromJob(err))
	}
	return res, nil
}

// PublishOn publishes on the host of mover on (ADDR#PEER_ID): o.Repo is a
// path there, o.Serve is ignored (the mover runs its own). The publication
// is recorded here with On set.
func (pb *Publisher) PublishOn(ctx context.Context, on string, o PublishOptions) (*Publication, error) {
	if _, _, err := mover.ParsePeerAddr(on); err != nil {
		return nil, err
	}
	o.Serve, o.ServeEnv = []string{"(the mover's)"}, nil
	o = o.withDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	res, err := pb.remoteJob(ctx, on, &protocol.RunJob{Kind: protocol.JobPublish, Version: protocol.JobVersion, Publish: publishToWire(o)})
	if err != nil {
		return nil, err
	}
	if res.Publication == nil {
		return nil, fmt.Errorf("mover %s did not return the publication", on)
	}
	p := publicationFromWire(res.Publication, on)
	if err := pb.j.PutPublication(p); err != nil {
		return nil, fmt.Errorf("publication %s is up on %s but could not be recorded here (unpublish it there): %w", p.ID, on, err)
	}
	return p, nil
}

// Refresh replaces the records of publications on other hosts in ps by what
// their movers report now, one job per mover. A mover that cannot be reached
// leaves its records as they were, with the reason in Error.
func (pb *Publisher) Refresh(ctx context.Context, ps []*Publication) {
	byMover := map[string][]*Publication{}
	for _, p := range ps {
		if p.On != "" && p.State != PubGone {
			byMover[p.On] = append(byMover[p.On], p)
		}
	}
	for on, local := range byMover {
		jctx, cancel := context.WithTimeout(ctx, pubJobTimeout)
		res, err := pb.remoteJob(jctx, on, &protocol.RunJob{Kind: protocol.JobListPublications, Version: protocol.JobVersion})
		cancel()
		remote := map[string]*Publication{}
		if err == nil {
			for i := range res.Publications {
				remote[res.Publications[i].ID] = publicationFromWire(&res.Publications[i], on)
			}
		}
		for _, p := range local {
			r, ok := remote[p.ID]
			switch {
			case err != nil:
				p.Error = "mover unreachable: " + err.Error()
			case !ok:
				p.State, p.Error = PubGone, "the mover no longer knows it"
			default:
				*p = *r
			}
		}
	}
}

// unpublishOn ends publication p on its mover and records it gone here.
func (pb *Publisher) unpublishOn(ctx context.Context, p *Publication) (*Publication, error) {
	res, err := pb.remoteJob(ctx, p.On, &protocol.RunJob{Kind: protocol.JobUnpublish, Version: protocol.JobVersion, Publication: p.ID})
	if err != nil && !errors.Is(err, ErrNoPublication) {
		return p, err
	}
	if err == nil && res.Publication != nil {
		p = publicationFromWire(res.Publication, p.On)
	}
	p.State = PubGone
	return p, pb.j.PutPublication(p)
}
