package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/pgtool"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/protocol"
	"github.com/pgporter/pgporter/staging"
)

// An export from a publication ('export --published ID') is a session like
// any export, journaled step by step, so that 'retry' continues it and
// 'cancel' removes what it left; its plan names the publication instead of
// a repository. Its steps, on the host that runs the publication:
//
//   - check: the publication is up, the user can log in and read, space;
//   - dump:DB: pg_dump -Fd from the publication's instance into a hidden
//     directory beside DIR/DB (or into the staging directory, with
//     --target), with its manifest;
//   - transfer:DB: the hidden directory renamed to DIR/DB (found there
//     already, with this session's manifest, after a crash), or the dump
//     sent to the target mover;
//   - cleanup, and unpublish with --unpublish-after.
//
// A publication on another host (publish --on) runs the session on its
// mover, as a staging mover runs an export's steps: this journal mirrors
// them, and retry and cancel go there.

// createPublished journals a new session exporting from publication
// p.Published.
func (r *Runner) createPublished(p Plan, id string) (*Session, error) {
	switch {
	case len(p.Databases) == 0:
		return nil, fmt.Errorf("%w: name at least one database with --db", ErrBadPlan)
	case p.To == "":
		return nil, fmt.Errorf("%w: --to is required", ErrBadPlan)
	case p.Repo != "" || p.RepoPeer != "" || p.Staging != "":
		return nil, fmt.Errorf("%w: an export from a publication takes no --repo, --repo-peer or --staging", ErrBadPlan)
	case p.Globals || p.Overwrite:
		return nil, fmt.Errorf("%w: --globals and --overwrite do not work with --published in this version", ErrBadPlan)
	}
	seen := map[string]bool{}
	for _, db := range p.Databases {
		if db == "" || seen[dbDirName(db)] {
			return nil, fmt.Errorf("%w: database %q empty or named twice", ErrBadPlan, db)
		}
		seen[dbDirName(db)] = true
	}
	if p.PGUser == "" {
		p.PGUser = "postgres"
	}
	if p.Jobs <= 0 {
		p.Jobs = 2
	}
	if p.StagingDir == "" {
		p.StagingDir = "/var/tmp/pgporter"
	}
	var err error
	if p.StagingDir, err = filepath.Abs(p.StagingDir); err != nil {
		return nil, err
	}
	if p.Target != "" {
		if _, _, err := mover.ParsePeerAddr(p.Target); err != nil {
			return nil, fmt.Errorf("%w: --target: %v", ErrBadPlan, err)
		}
	}
	pub, err := r.j.GetPublication(p.Published)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPlan, err) // ErrNoPublication: not found
	}
	if pub.State == PubGone || pub.State == PubFailed {
		return nil, fmt.Errorf("%w: publication %s is %s", ErrBadPlan, pub.ID, pub.State)
	}
	p.RestorePoint = pub.RestorePoint
	if err := r.credentials(&p); err != nil {
		return nil, err
	}
	s := &Session{ID: id, State: StatePlanned, Created: time.Now().UTC(), Plan: p}
	if p.Target != "" || pub.On != "" {
		// A path on the target, or on the publication's host: checked there.
		if !filepath.IsAbs(p.To) || filepath.Clean(p.To) != p.To {
			return nil, fmt.Errorf("%w: --to %q must be a clean absolute path on the host that receives the dumps", ErrBadPlan, p.To)
		}
	} else {
		var err error
		if s.Plan.To, err = planTo(p.To); err != nil {
			return nil, err
		}
		for _, db := range p.Databases {
			if _, err := os.Lstat(s.TargetDir(db)); err == nil {
				return nil, fmt.Errorf("%w: %s %w; remove it or choose another --to", ErrBadPlan, s.TargetDir(db), ErrExists)
			}
		}
	}
	s.Step(StepCheck)
	for _, db := range p.Databases {
		s.Step(DumpStep(db))
		s.Step(TransferStep(db))
	}
	s.Step(StepCleanup)
	if p.UnpublishAfter {
		s.Step(StepUnpublish)
	}
	if err := r.j.Put(s); err != nil {
		return nil, err
	}
	if p.Target == "" && pub.On == "" {
		if err := r.makeTo(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// publisher is a Publisher over the runner's journal.
func (r *Runner) publisher() *Publisher {
	return &Publisher{home: r.o.Home, j: r.j, log: r.o.Log}
}

// hiddenDumpDir is where db's dump is written beside its target directory
// before it is renamed into place.
func hiddenDumpDir(s *Session, db string) string {
	return filepath.Join(s.Plan.To, ".pgporter-"+s.ID+"-"+dbDirName(db))
}

// runPublished runs a session exporting from a publication.
func (x *sessionRun) runPublished(ctx context.Context) error {
	r, p := x.r, x.plan()
	pb := r.publisher()
	pub, err := pb.j.GetPublication(p.Published)
	if err != nil {
		return err
	}
	if pub.On != "" {
		return x.runPublishedOn(ctx, pb, pub)
	}
	var tgt *targetMover
	if p.Target != "" {
		if tgt, err = openRemoteTarget(r.o.Home, p.Target, r.o.Log); err != nil {
			return err
		}
		defer tgt.close()
	}
	// The instance is the publication's, whichever steps are left.
	var in *staging.Instance
	pending := false
	for _, st := range x.s.Steps {
		pending = pending || (st.State != StepDone && st.Name != StepCleanup && st.Name != StepUnpublish)
	}
	if pending {
		if in, err = pb.instance(pub); err != nil {
			return err
		}
	}
	if err := x.setState(StateChecking); err != nil {
		return err
	}
	if err := x.step(ctx, StepCheck, func(out *stepOutcome) error { return x.checkPublished(ctx, in, pub.ID, tgt, out) }); err != nil {
		return err
	}
	for _, db := range p.Databases {
		if err := x.setState(StateDumping); err != nil {
			return err
		}
		err := x.step(ctx, DumpStep(db), func(out *stepOutcome) error { return x.dumpPublished(ctx, in, db, tgt != nil, out) })
		if err != nil {
			return err
		}
		if err := x.setState(StateTransferring); err != nil {
			return err
		}
		err = x.step(ctx, TransferStep(db), func(out *stepOutcome) error {
			if tgt != nil {
				return x.transfer(ctx, tgt, db, nil, out)
			}
			return x.commitInPlace(db, out)
		})
		if err != nil {
			return err
		}
	}
	if err := x.setState(StateCleaning); err != nil {
		return err
	}
	err = x.step(ctx, StepCleanup, func(*stepOutcome) error {
		if err := removeOwned(x.s.SessionDir(), x.s.ID); err != nil {
			return fmt.Errorf("removing the staging files: %w", err)
		}
		return nil
	})
	if err != nil || !p.UnpublishAfter {
		return err
	}
	return x.step(ctx, StepUnpublish, func(out *stepOutcome) error {
		q, err := pb.Unpublish(ctx, pub.ID)
		if err == nil {
			out.Detail = "publication " + q.ID + " " + string(q.State)
		}
		return err
	})
}

// checkPublished is the check step from publication instance in: the
// dumps go to the plan's To, or with a target mover to the session's
// staging directory, made here.
func (x *sessionRun) checkPublished(ctx context.Context, in *staging.Instance, pub string, tgt *targetMover, out *stepOutcome) error {
	c := checkSpec{in: in, password: x.r.o.Password, dumpDir: x.plan().To, tgt: tgt, detail: " (from publication " + pub + ")"}
	if tgt != nil {
		c.dumpDir = x.s.SessionDir()
		if err := makeOwnedDir(c.dumpDir, x.s.ID); err != nil {
			return fmt.Errorf("the staging directory of session %s: %w", x.s.ID, err)
		}
	} else if err := x.makeTo(); err != nil {
		return err
	}
	return x.check(ctx, c, out)
}

// dumpPublished is db's dump step from publication instance in: into a
// hidden directory beside its target directory, with its manifest, or with
// a target mover (toTarget) into the session's staging directory.
func (x *sessionRun) dumpPublished(ctx context.Context, in *staging.Instance, db string, toTarget bool, out *stepOutcome) error {
	dir := hiddenDumpDir(x.s, db)
	if toTarget {
		dir = x.s.DumpDir(db)
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	res, err := x.dumpDB(ctx, in, db, x.r.o.Password, staging.DumpOptions{Dir: dir})
	if err != nil {
		return err
	}
	if !toTarget {
		if err := writeDumpManifest(ctx, dir, x.s.ID+"-"+transferIDPart(db)); err != nil {
			return fmt.Errorf("writing the manifest of %s: %w", dir, err)
		}
	}
	out.dumped(res)
	return nil
}

// commitInPlace renames db's finished dump into DIR/db. A DIR/db holding
// this session's manifest was committed by a run that died before
// journaling it.
func (x *sessionRun) commitInPlace(db string, out *stepOutcome) error {
	src, dest := hiddenDumpDir(x.s, db), x.s.TargetDir(db)
	man, err := mover.ReadManifest(dest)
	if err == nil && man.Transfer == x.s.ID+"-"+transferIDPart(db) {
		out.Bytes, out.Detail = man.Bytes, "in place (committed by an earlier run)"
		return nil
	}
	if _, err := os.Lstat(dest); err == nil {
		return fmt.Errorf("%s %w; remove it and retry", dest, ErrExists)
	}
	man, err = mover.ReadManifest(src)
	if err != nil {
		return fmt.Errorf("the dump of %q: %w", db, err)
	}
	if err := os.Rename(src, dest); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(dest))
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return err
	}
	out.Bytes, out.Detail = man.Bytes, "written in place on the publication's host, no transfer"
	return nil
}

// ErrNotUp is matched by the error of an export from a publication that is
// not serving.
var ErrNotUp = errors.New("publication is not up")

// instance is the running instance of local publication pub; ErrNotUp
// if it is not up.
func (pb *Publisher) instance(pub *Publication) (*staging.Instance, error) {
	alive := pb.j.lockHeld(pub)
	if pub.State != PubUp || !alive {
		state := pub.State
		if !alive && state != PubGone && state != PubFailed {
			state = PubDead
		}
		return nil, fmt.Errorf("%w: %s is %s", ErrNotUp, pub.ID, state)
	}
	bin, err := pgtool.ServerBinDir(pub.Version, "")
	if err != nil {
		return nil, err
	}
	return &staging.Instance{BinDir: bin, DataDir: pub.Mountpoint(), SocketDir: pub.SocketDir(), Port: pub.Port, Version: pub.Version}, nil
}

// cancelPublished removes what a session exporting from a publication
// left: hidden and partial dump directories, staging files. Delivered dumps
// and the publication stay.
func (r *Runner) cancelPublished(ctx context.Context, s *Session) (*Session, error) {
	pub, err := r.j.GetPublication(s.Plan.Published)
	if err == nil && pub.On != "" {
		if _, err := r.publisher().remoteJobEvents(ctx, pub.On, &protocol.RunJob{Kind: protocol.JobCancelExportPublished, Version: protocol.JobVersion, Session: s.ID}, nil); err != nil {
			return s, fmt.Errorf("cancelling on mover %s (it holds the dumps; retry the cancel when it is reachable): %w", pub.On, err)
		}
	} else {
		if err := removeOwned(s.SessionDir(), s.ID); err != nil {
			return s, fmt.Errorf("removing the staging files: %w", err)
		}
		if s.Plan.Target == "" {
			for _, db := range s.Plan.Databases {
				h := hiddenDumpDir(s, db)
				for _, d := range []string{h, h + ".partial"} {
					if err := os.RemoveAll(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
						return s, err
					}
				}
			}
			s.Removed = r.removeMadeTo(s)
			s.Resources.MadeTo = nil
		}
	}
	s.State, s.Error = StateCancelled, ""
	return s, r.j.Put(s)
}

// runPublishedOn runs the session on the mover of publication pub and
// mirrors its steps here.
func (x *sessionRun) runPublishedOn(ctx context.Context, pb *Publisher, pub *Publication) error {
	plan := *x.plan()
	jb := &protocol.RunJob{Kind: protocol.JobExportPublished, Version: protocol.JobVersion, Session: x.s.ID, Plan: planToWire(&plan), Password: x.r.o.Password}
	_, err := pb.remoteJobEvents(ctx, pub.On, jb, func(ev *protocol.JobEvent) {
		if x.mirror(ev) {
			x.r.emit(eventFromWire(ev))
		}
	})
	if err != nil {
		_ = x.update(func(s *Session) {
			for _, st := range s.Steps {
				if st.State == StepRunning {
					st.State, st.Ended, st.Error = StepFailed, time.Now().UTC(), err.Error()
				}
			}
		})
		return err
	}
	if plan.UnpublishAfter {
		if err := pb.j.UpdatePublication(pub.ID, func(q *Publication) { q.State = PubGone }); err != nil {
			return err
		}
	}
	// The mover's steps are done: mirror what the events may have missed.
	return x.update(func(s *Session) {
		for _, st := range s.Steps {
			if st.State != StepDone {
				st.State, st.Ended = StepDone, time.Now().UTC()
			}
		}
	})
}

// runSessionJob runs (or continues, or cancels) an export session from a
// publication of this mover, as an orchestrator asked.
func (j *StagingJobs) runSessionJob(ctx context.Context, jb *protocol.RunJob, emit func(*protocol.JobEvent)) error {
	if !validSessionID(jb.Session) {
		return fmt.Errorf("%w: bad session ID %q (not one pgporter makes)", ErrBadPlan, jb.Session)
	}
	r, err := NewRunner(Options{Home: j.Home, Log: j.Log, Password: jb.Password, Roots: j.Roots, Events: func(e Event) { emit(eventToWire(e)) }})
	if err != nil {
		return err
	}
	if jb.Kind == protocol.JobCancelExportPublished {
		_, err := r.Cancel(ctx, jb.Session)
		if errors.Is(err, ErrNoSession) {
			return nil // it never started here
		}
		return err
	}
	plan := planFromWire(jb.Plan)
	if plan.Published == "" {
		return fmt.Errorf("%w: an export session job without a publication", ErrBadPlan)
	}
	if err := j.confineSessionPlan(&plan); err != nil {
		return err
	}
	if _, err := r.j.Get(jb.Session); errors.Is(err, ErrNoSession) {
		if _, err := r.create(ctx, plan, jb.Session); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	_, err = r.Run(ctx, jb.Session)
	return err
}

// writeDumpManifest hashes every file of the finished dump in dir and
// writes its pgporter-manifest.json: temp file, fsync, rename, directory
// fsync.
func writeDumpManifest(ctx context.Context, dir, name string) error {
	m := mover.Manifest{Format: mover.ManifestFormat, Transfer: name, Created: time.Now().UTC(), Chunking: chunk.DefaultParams}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		h, n, err := mover.HashFile(ctx, f)
		f.Close()
		if err != nil {
			return err
		}
		m.Files = append(m.Files, mover.ManifestFile{Path: filepath.ToSlash(rel), Size: n, Mode: mover.FileMode(fi.Mode().Perm()), MTime: fi.ModTime().UTC(), BLAKE3: h})
		m.Bytes += n
		return nil
	})
	if err != nil {
		return err
	}
	slices.SortFunc(m.Files, func(a, b mover.ManifestFile) int {
		switch {
		case a.Path < b.Path:
			return -1
		case a.Path > b.Path:
			return 1
		}
		return 0
	})
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".manifest-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, mover.ManifestName)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
