package orchestrator

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/pgtool"
	"github.com/pgporter/pgporter/internal/walproxy"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/protocol"
	"github.com/pgporter/pgporter/staging"
	"golang.org/x/sync/errgroup"
)

// Event reports progress of a running session to the CLI; a staging
// mover sends its events to the orchestrator as job events (jobwire.go).
type Event struct {
	Step      string // a step name (ParseStep)
	Kind      protocol.EventKind
	Done      int64 // bytes (transfer) or tables (dump) so far; a done step's bytes
	Total     int64
	WireBytes int64 // a done step's
	Text      string
}

// Options configure a Runner.
type Options struct {
	Home string
	Log  *slog.Logger
	// Events, if set, receives progress; it is called from the goroutine
	// running the session.
	Events func(Event)
	// Password for the PostgreSQL user, if the CLI resolved one.
	Password string
	// Credentials, if set, is called by Create once the plan holds up and
	// before anything is made or journaled, to find the password of the
	// plan's PostgreSQL user (it replaces Password); it may change that
	// user (a connection service names one). Its error is Create's, so a
	// missing password is reported after the plan's own mistakes, and
	// leaves nothing behind.
	Credentials func(p *Plan) (password string, err error)
	// Self is the command, as shell words, that runs this pgporter for
	// the instance's OS user: a point-in-time export's restore_command is
	// Self + " wal-fetch ...". Empty means this process's executable.
	Self string
	// Roots, if set, are the only places where cancel removes a directory
	// of a local To that the session created (strictly inside one of
	// them): a mover's --root, when it runs a peer's session.
	Roots []string
}

// Runner creates, runs, retries and cancels export sessions.
type Runner struct {
	o Options
	j *Journal
}

// NewRunner opens the journal under o.Home.
func NewRunner(o Options) (*Runner, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	j, err := OpenJournal(o.Home)
	if err != nil {
		return nil, err
	}
	return &Runner{o: o, j: j}, nil
}

// SetEvents sets the progress callback.
func (r *Runner) SetEvents(fn func(Event)) { r.o.Events = fn }

// Journal is the runner's session journal.
func (r *Runner) Journal() *Journal { return r.j }

func (r *Runner) emit(e Event) {
	if r.o.Events != nil {
		r.o.Events(e)
	}
}

// ErrBadPlan marks a plan that cannot run as asked: the CLI maps it to a
// usage error.
var ErrBadPlan = errors.New("bad export request")

// ErrExists is matched by the refusal to replace a target directory that
// exists (without Plan.Overwrite): the CLI maps it to its conflict code.
var ErrExists = errors.New("exists")

// marked is err that also matches mark, with err's message: it classifies
// an error for the CLI without changing what the user reads.
type marked struct{ err, mark error }

func (e marked) Error() string   { return e.err.Error() }
func (e marked) Unwrap() []error { return []error{e.err, e.mark} }

// Create checks p, resolves its restore point and journals a new session in
// state planned. Nothing heavy happens here.
func (r *Runner) Create(ctx context.Context, p Plan) (*Session, error) {
	return r.create(ctx, p, newSessionID(time.Now()))
}

func (r *Runner) create(ctx context.Context, p Plan, id string) (*Session, error) {
	if p.RepoPasswordFile != "" {
		ctx = chunkstore.WithPasswordFile(ctx, p.RepoPasswordFile)
	}
	if err := p.checkAuth(); err != nil {
		return nil, err
	}
	if p.Published != "" {
		return r.createPublished(p, id)
	}
	if err := p.checkExport(); err != nil {
		return nil, err
	}
	if err := p.resolveRepo(ctx); err != nil {
		return nil, err
	}
	if err := r.credentials(&p); err != nil {
		return nil, err
	}
	if err := p.resolveTo(); err != nil {
		return nil, err
	}
	s, err := newExportSession(id, p)
	if err != nil {
		return nil, err
	}
	if err := r.j.Put(s); err != nil {
		return nil, err
	}
	if p.Target == "" {
		if err := r.makeTo(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// makeTo makes the local To of session s, just journaled, once the request
// holds up: a To that cannot be made leaves no session either, unless a
// part of it was made (then the session is failed, for cancel to remove).
func (r *Runner) makeTo(s *Session) error {
	x := &sessionRun{r: r, s: s}
	err := x.makeTo()
	if err == nil {
		return nil
	}
	if m := s.Resources.MadeTo; m == nil || (m.Temp == "" && len(m.Dirs) == 0) {
		return errors.Join(err, r.j.Delete(s.ID))
	}
	s.State, s.Error = StateFailed, err.Error()
	return errors.Join(fmt.Errorf("session %s: %w", s.ID, err), r.j.Put(s))
}

// checkAuth checks p.Auth, the empty default standing for AuthPassword.
func (p *Plan) checkAuth() error {
	switch p.Auth {
	case "", AuthPassword:
		p.Auth = ""
	case AuthBackupHBA:
		if p.Published != "" {
			return fmt.Errorf("%w: --auth %s does not apply to --published: the publication's own --auth decides how it logs in", ErrBadPlan, AuthBackupHBA)
		}
	default:
		return fmt.Errorf("%w: --auth %q is neither %s nor %s", ErrBadPlan, p.Auth, AuthPassword, AuthBackupHBA)
	}
	return nil
}

// checkExport checks an export's plan (not one from a publication) as it
// was asked for, and fills in its defaults.
func (p *Plan) checkExport() error {
	if err := checkDatabases(p.Databases); err != nil {
		return err
	}
	if p.To == "" {
		return fmt.Errorf("%w: --to is required", ErrBadPlan)
	}
	if p.PGUser == "" {
		p.PGUser = "postgres"
	}
	if p.Staging != "" && (p.StagingDir != "" || p.OSUser != "") {
		// The staging host decides where it writes and who runs PostgreSQL.
		return fmt.Errorf("%w: with --staging, the staging directory and the OS user are set by the staging mover ('mover serve --staging-dir, --os-user'), not by the orchestrator", ErrBadPlan)
	}
	if p.OSUser == "" && p.Staging == "" {
		p.OSUser = defaultOSUser
	}
	if p.Jobs <= 0 {
		p.Jobs = 2
	}
	if p.StagingDir == "" && p.Staging == "" {
		p.StagingDir = DefaultStagingDir
	}
	if err := p.checkMovers(); err != nil {
		return err
	}
	if p.Filter.IsZero() {
		p.Filter = nil
	} else if err := p.Filter.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadPlan, err)
	}
	if p.At != nil {
		if err := p.At.recovery("-").Validate(); err != nil {
			return fmt.Errorf("%w: %w", ErrBadPlan, err)
		}
	}
	return nil
}

// checkDatabases refuses an empty list, an empty name and a name given
// twice (or two names that map to one directory).
func checkDatabases(dbs []string) error {
	if len(dbs) == 0 {
		return fmt.Errorf("%w: name at least one database with --db", ErrBadPlan)
	}
	seen := map[string]bool{}
	for _, db := range dbs {
		if db == "" {
			return fmt.Errorf("%w: empty database name", ErrBadPlan)
		}
		if seen[dbDirName(db)] {
			return fmt.Errorf("%w: database %q named twice (or two names map to one directory)", ErrBadPlan, db)
		}
		seen[dbDirName(db)] = true
	}
	return nil
}

// checkMovers checks the movers' addresses and that the plan names the
// ones it needs.
func (p *Plan) checkMovers() error {
	for _, m := range []struct{ flag, v string }{{"--repo-peer", p.RepoPeer}, {"--staging", p.Staging}, {"--target", p.Target}} {
		if m.v != "" {
			if _, _, err := mover.ParsePeerAddr(m.v); err != nil {
				return fmt.Errorf("%w: %s: %v", ErrBadPlan, m.flag, err)
			}
		}
	}
	switch {
	case p.Staging != "" && (p.RepoPeer == "" || p.Target == ""):
		return fmt.Errorf("%w: with --staging, name the repository with --repo-peer and the target with --target (as the staging host reaches them)", ErrBadPlan)
	case p.RepoPeer == "" && p.Repo == "":
		return fmt.Errorf("%w: name the repository with --repo or --repo-peer", ErrBadPlan)
	case p.Target != "" && p.Overwrite:
		return fmt.Errorf("%w: --overwrite works only for a local --to in this version", ErrBadPlan)
	}
	return nil
}

// resolveRepo makes the staging directory and a local repository's path
// absolute, and chooses the restore point in a local repository (a
// repository mover's is chosen when the session runs).
func (p *Plan) resolveRepo(ctx context.Context) error {
	var err error
	if p.StagingDir != "" {
		if p.StagingDir, err = filepath.Abs(p.StagingDir); err != nil {
			return err
		}
	}
	if p.RepoPeer != "" {
		return nil
	}
	if p.Repo, err = chunkstore.AbsRepo(p.Repo); err != nil {
		return err
	}
	// The repository is read, never created: a typo must not make one.
	rps, err := chunkstore.ListRepo(ctx, p.Repo)
	if err != nil {
		return fmt.Errorf("%w: repository %s: %w", ErrBadPlan, p.Repo, err)
	}
	if p.At != nil && p.RestorePoint == "latest" {
		if rps, err = takenBefore(rps, p.At, p.Repo); err != nil {
			return marked{fmt.Errorf("%w: %w", ErrBadPlan, err), chunkstore.ErrNoRestorePoint}
		}
	}
	switch i := slices.IndexFunc(rps, func(rp chunkstore.RestorePoint) bool { return rp.ID == p.RestorePoint }); {
	case p.RestorePoint == "latest" && len(rps) > 0:
		p.RestorePoint = rps[len(rps)-1].ID
	case i < 0:
		return marked{fmt.Errorf("%w: no restore point %q in %s (see 'pgporter restore-points --repo %s')", ErrBadPlan, p.RestorePoint, p.Repo, p.Repo), chunkstore.ErrNoRestorePoint}
	}
	return nil
}

// resolveTo checks a --to on the target host, or makes a local one and
// resolves it.
func (p *Plan) resolveTo() error {
	if p.Target != "" {
		// A path on the target host: checked there.
		if !filepath.IsAbs(p.To) || filepath.Clean(p.To) != p.To {
			return fmt.Errorf("%w: --to %q must be a clean absolute path on the target", ErrBadPlan, p.To)
		}
		return nil
	}
	// Made once the session that records it is journaled (makeTo).
	var err error
	p.To, err = planTo(p.To)
	return err
}

// newExportSession is the session of plan p in state planned, with its
// steps. It refuses a local target directory that exists, unless the plan
// allows overwriting it.
func newExportSession(id string, p Plan) (*Session, error) {
	now := time.Now().UTC()
	s := &Session{ID: id, State: StatePlanned, Created: now, Plan: p}
	if p.Target == "" {
		for _, db := range p.Databases {
			if _, err := os.Lstat(s.TargetDir(db)); err == nil && !p.Overwrite {
				return nil, fmt.Errorf("%w: %s %w; pass --overwrite to replace it", ErrBadPlan, s.TargetDir(db), ErrExists)
			}
		}
	}
	s.Step(StepCheck)
	if p.Globals {
		s.Step(StepGlobals)
	}
	for _, db := range p.Databases {
		s.Step(DumpStep(db))
		s.Step(TransferStep(db))
	}
	s.Step(StepCleanup)
	return s, nil
}

// Run runs session id from its first unfinished step: a finished dump is
// not redone, a transfer sends only the chunks the target lacks. It is both
// the second half of an export and 'pgporter retry'.
func (r *Runner) Run(ctx context.Context, id string) (*Session, error) {
	lock, err := r.j.Lock(id)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	s, err := r.j.Get(id)
	if err != nil {
		return nil, err
	}
	switch s.State {
	case StateDone:
		r.emit(Event{Kind: protocol.EventSkip, Text: "session " + id + " is done already"})
		return s, nil
	case StateCancelled:
		return s, fmt.Errorf("session %s was cancelled; start a new export", id)
	}
	x := &sessionRun{r: r, s: s}
	if err := x.update(func(s *Session) { s.PID, s.Error = os.Getpid(), "" }); err != nil {
		return s, err
	}
	var runErr error
	switch {
	case s.Plan.Staging != "":
		runErr = x.runRemote(ctx)
	case s.Plan.Published != "":
		runErr = x.runPublished(ctx)
	default:
		runErr = x.run(ctx)
	}
	if err := x.update(func(s *Session) {
		s.PID = 0
		if runErr != nil {
			s.State, s.Error = StateFailed, runErr.Error()
			if ctx.Err() != nil {
				s.Error = "interrupted: " + s.Error
			}
		} else {
			s.State = StateDone
		}
	}); err != nil && runErr == nil {
		runErr = err
	}
	return s, runErr
}

// sessionRun is one run of a session. Dumps and transfers run in two
// goroutines; every change to the session goes through update.
type sessionRun struct {
	r       *Runner
	mu      sync.Mutex // guards s, and serializes journal writes
	s       *Session
	corrupt corruptWatch // corrupt chunks the mount read, for the error
}

// update applies fn to the session and journals it.
func (x *sessionRun) update(fn func(*Session)) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	fn(x.s)
	return x.r.j.Put(x.s)
}

// plan is immutable during a run: read it without the lock.
func (x *sessionRun) plan() *Plan { return &x.s.Plan }

func (x *sessionRun) setState(st State) error {
	return x.update(func(s *Session) { s.State = st })
}

// stepOutcome is what a step's function reports, applied to the journal
// when it returns.
type stepOutcome struct {
	Bytes, WireBytes int64
	Detail           string
}

// stepDone reports whether the journaled step name is done.
func (x *sessionRun) stepDone(name string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.s.Step(name).State == StepDone
}

// step runs fn as the journaled step name, unless it is done already.
func (x *sessionRun) step(ctx context.Context, name string, fn func(*stepOutcome) error) error {
	if x.stepDone(name) {
		x.r.emit(Event{Step: name, Kind: protocol.EventSkip, Text: "done in an earlier run"})
		return nil
	}
	if err := x.update(func(s *Session) {
		st := s.Step(name)
		st.State, st.Started, st.Ended, st.Error = StepRunning, time.Now().UTC(), time.Time{}, ""
		st.Attempts++
	}); err != nil {
		return err
	}
	x.r.emit(Event{Step: name, Kind: protocol.EventStart})
	var out stepOutcome
	err := fn(&out)
	if err != nil {
		err = contextErr(ctx, err)
	}
	if perr := x.update(func(s *Session) {
		st := s.Step(name)
		st.Ended = time.Now().UTC()
		st.Bytes, st.WireBytes, st.Detail = out.Bytes, out.WireBytes, out.Detail
		if err != nil {
			st.State, st.Error = StepFailed, err.Error()
		} else {
			st.State = StepDone
		}
	}); perr != nil && err == nil {
		err = perr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	x.r.emit(Event{Step: name, Kind: protocol.EventDone, Done: out.Bytes, Total: out.Bytes, WireBytes: out.WireBytes, Text: out.Detail})
	return nil
}

func (x *sessionRun) run(ctx context.Context) error {
	r, p := x.r, x.plan()
	if err := r.reclaim(ctx, x.s); err != nil {
		return err
	}
	var tgt *targetMover
	var err error
	if p.Target != "" {
		tgt, err = openRemoteTarget(r.o.Home, p.Target, r.o.Log)
	} else {
		// A retry makes (and records) a To that a crash in Create left
		// unmade, or that was removed since.
		if err := x.makeTo(); err != nil {
			return err
		}
		tgt, err = startEmbedded(r.o.Home, p.To, r.o.Log)
	}
	if err != nil {
		return err
	}
	defer tgt.close()

	// A database's transfer starts with its dump: files are sent as
	// pg_dump closes them (growing), and the transfer commits when the
	// dump is done. A dump done in an earlier run is sent as it is.
	dumped := map[string]chan struct{}{}
	growing := map[string]chan growingDump{}
	pending := false
	for _, db := range p.Databases {
		dumped[db] = make(chan struct{})
		growing[db] = make(chan growingDump, 1)
		if x.s.Step(DumpStep(db)).State == StepDone {
			close(dumped[db])
		} else {
			pending = true
		}
	}
	markDumped := func(db string) {
		select {
		case <-dumped[db]:
		default:
			close(dumped[db]) // only stage's goroutine gets here
		}
	}
	if !pending {
		if err := x.setState(StateTransferring); err != nil {
			return err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	if pending {
		g.Go(func() error {
			return x.stage(gctx, tgt, markDumped, func(db string, g growingDump) { growing[db] <- g })
		})
	}
	g.Go(func() error {
		for _, db := range p.Databases {
			var g *growingDump
			select {
			case gd := <-growing[db]:
				g = &gd
			case <-dumped[db]:
				select { // both ready: the dump is complete anyway
				case gd := <-growing[db]:
					gd.root.Close()
				default:
				}
			case <-gctx.Done():
				return gctx.Err()
			}
			err := x.step(gctx, TransferStep(db), func(out *stepOutcome) error { return x.transfer(gctx, tgt, db, g, out) })
			if g != nil {
				g.root.Close()
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return x.corrupt.explain(contextErr(ctx, err))
	}
	if err := x.setState(StateCleaning); err != nil {
		return err
	}
	return x.step(ctx, StepCleanup, func(*stepOutcome) error { return x.cleanup() })
}

// stage mounts the restore point, starts an instance on it, checks, and
// dumps every database not dumped yet, calling dumped after each. It stops
// the instance and unmounts before it returns, whatever happened: only the
// dumps outlive it.
func (x *sessionRun) stage(ctx context.Context, tgt *targetMover, dumped func(db string), started func(db string, g growingDump)) (err error) {
	p := x.plan()
	if err := x.setState(StateChecking); err != nil {
		return err
	}
	st, err := x.prepareStaging(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := st.close(ctx); err == nil {
			err = cerr
		}
	}()
	if err := x.step(ctx, StepMount, func(out *stepOutcome) error { return x.mount(ctx, st, out) }); err != nil {
		return err
	}
	if err := x.step(ctx, StepStart, func(out *stepOutcome) error { return x.startInstance(ctx, st, out) }); err != nil {
		return err
	}
	check := checkSpec{in: st.staged.Instance(), password: st.password, dumpDir: st.dir, mount: st.staged.Mounted(), filter: p.Filter, tgt: tgt, warn: true}
	if err := x.step(ctx, StepCheck, func(out *stepOutcome) error { return x.check(ctx, check, out) }); err != nil {
		return err
	}
	if err := x.setState(StateDumping); err != nil {
		return err
	}
	if p.Globals {
		if err := x.step(ctx, StepGlobals, func(out *stepOutcome) error { return x.dumpGlobals(ctx, st, out) }); err != nil {
			return err
		}
	}
	for _, db := range p.Databases {
		name := DumpStep(db)
		if err := x.step(ctx, name, func(out *stepOutcome) error { return x.dump(ctx, st, db, started, out) }); err != nil {
			return err
		}
		if x.stepDone(name) {
			dumped(db)
		}
	}
	return x.setState(StateTransferring)
}

// stagedRun is what stage brings up for one run, in its session's staging
// directory: the restore point's mount and the instance on it (staged),
// and what the steps need to bring them up and use them.
type stagedRun struct {
	staged   *staging.Staged  // what is up, and its teardown
	mounted  *staging.Mounted // the mount once up, kept past the unmount for its stats
	tree     []chunkstore.Node
	chunks   staging.ChunkReader // the restore point's source, watched for corrupt chunks
	src      Source
	dir      string // the session's staging directory
	cowDir   string // the mount's copy-on-write layer
	mnt      string
	password string // PostgreSQL's for the checks and dumps; none with --auth backup-hba
}

// close stops the instance and unmounts, within a minute even when the run
// was interrupted, then closes the restore point's source.
func (st *stagedRun) close(ctx context.Context) error {
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	err := st.staged.Close(stopCtx)
	st.src.Close()
	return err
}

// prepareStaging opens the restore point, makes the session's staging
// directory and the mountpoint, and journals the mountpoint before anything
// is mounted there. The caller closes the stagedRun.
func (x *sessionRun) prepareStaging(ctx context.Context) (_ *stagedRun, err error) {
	p, id := x.plan(), x.s.ID
	tree, src, err := x.openRepo(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			src.Close()
		}
	}()
	st := &stagedRun{tree: tree, src: src, chunks: x.corrupt.wrap(src), password: x.r.o.Password}
	st.dir = x.s.SessionDir()
	if err := makeOwnedDir(st.dir, id); err != nil {
		return nil, fmt.Errorf("the staging directory of session %s: %w", id, err)
	}
	_ = os.Chmod(p.StagingDir, 0o755) // postgres must reach its run directory
	if err := reachable(st.dir); err != nil {
		return nil, fmt.Errorf("the %s OS user must reach the staging directory: %w", p.OSUser, err)
	}
	st.cowDir = filepath.Join(st.dir, "cow")
	_ = os.RemoveAll(st.cowDir) // a fresh layer: crash recovery simply runs again
	st.mnt = filepath.Join(os.TempDir(), "pgporter-"+id)
	if err := os.MkdirAll(st.mnt, 0o755); err != nil {
		return nil, err
	}
	if err := x.update(func(s *Session) {
		s.Resources.Mountpoint = st.mnt
		// A mount and an instance never outlive a run: a retry makes new ones.
		s.Step(StepMount).State = StepPending
		s.Step(StepStart).State = StepPending
	}); err != nil {
		return nil, err
	}
	// Each layer's teardown is journaled as it is done: reclaim trusts
	// these records after a crash.
	st.staged = staging.NewStaged(staging.StagedOptions{
		Stopped:   x.stopped,
		Unmounted: func(err error) error { return x.unmounted(st, err) },
		Log:       x.r.o.Log,
	})
	return st, nil
}

// mount is the mount step: the restore point at st.mnt.
func (x *sessionRun) mount(ctx context.Context, st *stagedRun, out *stepOutcome) error {
	// The instance is throwaway: a page write that only sets hint bits
	// need not be kept (a publication's mount keeps every write).
	m, err := st.staged.Mount(ctx, st.mnt, st.tree, st.chunks, staging.MountOptions{CowDir: st.cowDir, Owner: x.plan().OSUser, Log: x.r.o.Log, DropHintWrites: true})
	st.mounted = m
	out.Detail = st.mnt
	return err
}

// unmounted follows the mount step's undoing, whose error is err: it
// removes the layer and the mountpoint, and journals that the mount is gone.
func (x *sessionRun) unmounted(st *stagedRun, err error) error {
	if err != nil {
		err = fmt.Errorf("unmounting %s: %w", st.mnt, err)
	}
	var stats staging.MountStats
	if st.mounted != nil {
		stats = st.mounted.Stats()
	}
	cow := diskUsage(st.cowDir)
	_ = os.RemoveAll(st.cowDir)
	_ = os.Remove(st.mnt)
	_ = x.update(func(s *Session) {
		s.Resources.Mountpoint = ""
		// What the instance wrote through the mount, for the record.
		if m := s.Step(StepMount); m.State == StepDone {
			m.Bytes = cow
			m.Detail = fmt.Sprintf("%s; copy-on-write layer %d bytes, %d hint-bit-only page writes (%d bytes) dropped", st.mnt, cow, stats.HintWritesDropped, stats.HintBytesDropped)
		}
	})
	return err
}

// startInstance is the start step: PostgreSQL on the mount, recovered to
// the plan's point in time if it has one, its PID journaled.
func (x *sessionRun) startInstance(ctx context.Context, st *stagedRun, out *stepOutcome) error {
	r, p := x.r, x.plan()
	opts := staging.InstanceOptions{DataDir: st.staged.Mounted().Dir(), RunDir: filepath.Join(st.dir, "run"), OSUser: p.OSUser, Log: r.o.Log, Throwaway: true, Standby: true, AllowMissingPreload: p.AllowMissingPreload}
	if p.At != nil {
		proxy, err := x.recovery(ctx, st.src, &opts)
		if proxy != nil {
			defer proxy.Close()
		}
		if err != nil {
			return err
		}
	}
	if p.Auth == AuthBackupHBA {
		h, err := backupHBA(st.staged.Mounted().Dir(), p)
		if err != nil {
			return err
		}
		opts.LocalHBA, st.password = h, ""
	}
	// Journaled as soon as the postmaster runs: a run killed while it
	// starts leaves it for the retry's reclaim to stop.
	opts.Started = func(pid int) error {
		err := x.update(func(s *Session) { s.Resources.InstancePID = pid })
		if err == nil && instanceJournaled != nil {
			instanceJournaled(x.s.ID, pid)
		}
		return err
	}
	in, err := st.staged.Start(ctx, opts)
	if err != nil {
		// Start stopped the server it started.
		_ = x.update(func(s *Session) { s.Resources.InstancePID = 0 })
		return err
	}
	out.Detail = fmt.Sprintf("PostgreSQL %s, pid %d", in.Version, in.PID())
	if in.Recovered != nil {
		out.Detail += fmt.Sprintf("; recovered to %s (target: %s)", in.Recovered, opts.Recovery.Target())
		if err := x.update(func(s *Session) { s.Reached = in.Recovered }); err != nil {
			return err
		}
	}
	if len(in.Dropped) > 0 {
		out.Detail += "; started without the missing preload libraries " + strings.Join(in.Dropped, ", ")
		r.emit(Event{Step: StepStart, Kind: protocol.EventWarning, Text: out.Detail})
	}
	if len(in.Neutralised) > 0 {
		text := "removed role and database settings that load code or run programs; the dump does not carry them: " + strings.Join(in.Neutralised, "; ")
		out.Detail += "; " + text
		r.emit(Event{Step: StepStart, Kind: protocol.EventWarning, Text: text})
	}
	return x.update(func(s *Session) { s.Resources.InstancePID = in.PID() })
}

// instanceJournaled, if set, is called once the starting instance's PID
// is journaled, before it accepts connections (tests look at the journal
// a kill there would leave).
var instanceJournaled func(id string, pid int)

// recovery sets opts to replay the WAL to the plan's point in time. With a
// repository mover, it returns the proxy that serves the WAL to the
// instance from src, which the caller closes once the instance is up.
func (x *sessionRun) recovery(ctx context.Context, src Source, opts *staging.InstanceOptions) (*walproxy.Server, error) {
	r, p := x.r, x.plan()
	if fetchesDirectly(p.Repo, p.RepoPeer, src) {
		var err error
		opts.Recovery, err = walRecovery(ctx, p.At, r.o.Self, p.Repo, p.OSUser)
		return nil, err
	}
	// This process fetches for the instance, through a socket only its
	// OS user can use, while the instance recovers.
	proxy, err := startWALProxy(ctx, src, p.OSUser, r.o.Log)
	if err != nil {
		return nil, err
	}
	opts.Recovery, err = walRecoveryFrom(ctx, p.At, r.o.Self, "--proxy "+shellQuote(proxy.Socket()), p.OSUser)
	return proxy, err
}

// stopped follows the start step's undoing, whose error is err: it
// journals that the instance is gone.
func (x *sessionRun) stopped(err error) error {
	if err != nil {
		err = fmt.Errorf("stopping the instance: %w", err)
	}
	_ = x.update(func(s *Session) { s.Resources.InstancePID = 0 })
	return err
}

// dumpGlobals is the globals step: the roles and tablespaces, into the
// session's staging directory, from where each dump links them.
func (x *sessionRun) dumpGlobals(ctx context.Context, st *stagedRun, out *stepOutcome) error {
	p := x.plan()
	res, err := st.staged.Instance().DumpGlobals(ctx, staging.GlobalsOptions{User: p.PGUser, Password: st.password, Dir: st.dir})
	if err == nil {
		err = mountReadErr(st.staged.Mounted())
	}
	if err != nil {
		return err
	}
	out.Bytes, out.Detail = res.Bytes, "roles and tablespaces: "+staging.GlobalsFile+" in each dump"
	return nil
}

// dump is db's dump step. Once pg_dump has made the dump's directory,
// started gets it with the feed of its files, so that the transfer sends
// them while the dump goes on; the feed is closed with the dump's outcome.
func (x *sessionRun) dump(ctx context.Context, st *stagedRun, db string, started func(db string, g growingDump), out *stepOutcome) error {
	var feed *mover.FileFeed
	var writes *staging.WriteWatcher // data files sent while pg_dump appends to them
	defer func() {
		if writes != nil {
			writes.Close()
		}
	}()
	res, err := x.dumpDB(ctx, st.staged.Instance(), db, st.password, staging.DumpOptions{
		Dir: x.s.DumpDir(db), Filter: x.plan().Filter,
		Started: func(dir string) {
			root, err := os.OpenRoot(dir)
			if err != nil {
				return // the transfer waits for the finished dump instead
			}
			feed = mover.NewFileFeed()
			if w, err := staging.WatchWrites(dir, feed.AddGrowing); err == nil {
				writes = w
			} // else files are sent once closed
			started(db, growingDump{root: root, feed: feed})
		},
		OnFile: func(name string) {
			if feed != nil {
				feed.Add(name)
			}
		},
	})
	if writes != nil {
		writes.Close()
		writes = nil
	}
	if err == nil {
		err = x.completeDump(st, db, res, feed)
	}
	if feed != nil {
		feed.Close(err)
	}
	if err != nil {
		return err
	}
	out.dumped(res) // with the files completeDump added
	if len(res.Split) > 0 {
		out.Detail += fmt.Sprintf(", the data of %d in parallel page ranges", len(res.Split))
	}
	return nil
}

// completeDump checks that nothing failed to read through the mount during
// db's dump, and adds the files that go beside pg_dump's to the dump and
// to feed (if there is one), counting them in res.Bytes.
//
// A dump reused by a retry keeps those that the run which made it wrote
// (res.Bytes counts them already): a target may hold that dump committed,
// and pgporter-source.json written again (another time of dump, so other
// bytes) would make the retried transfer's source differ from what the
// target holds, which it refuses as a conflict.
func (x *sessionRun) completeDump(st *stagedRun, db string, res *staging.DumpResult, feed *mover.FileFeed) error {
	if err := mountReadErr(st.staged.Mounted()); err != nil {
		_ = os.RemoveAll(res.Dir) // complete, so a retry would reuse it
		return err
	}
	if res.Reused {
		// A temporary file of a writeSource killed midway is not the
		// dump's: it would be sent and counted with it.
		if tmp, err := filepath.Glob(filepath.Join(res.Dir, sourceTempPrefix+"*")); err == nil {
			for _, name := range tmp {
				if err := os.Remove(name); err != nil {
					return err
				}
			}
		}
	}
	missing := func(name string) bool {
		if !res.Reused {
			return true
		}
		_, err := os.Lstat(filepath.Join(res.Dir, name))
		return err != nil
	}
	var added []string
	if x.plan().Globals {
		// Beside pg_dump's files: pg_restore ignores it, the
		// manifest covers it.
		if missing(staging.GlobalsFile) {
			if err := linkGlobals(filepath.Join(st.dir, staging.GlobalsFile), filepath.Join(res.Dir, staging.GlobalsFile)); err != nil {
				return err
			}
			added = append(added, staging.GlobalsFile)
		}
		if feed != nil {
			feed.Add(staging.GlobalsFile)
		}
	}
	// What the dump is of: beside pg_dump's files, as globals.sql.
	if missing(SourceFile) {
		if err := x.writeSource(res.Dir, db, st.staged.Instance().Version); err != nil {
			return err
		}
		added = append(added, SourceFile)
	}
	if feed != nil {
		feed.Add(SourceFile)
	}
	// The step's bytes are the dump's as it is sent: the files beside
	// pg_dump's included.
	for _, name := range added {
		if fi, err := os.Stat(filepath.Join(res.Dir, name)); err == nil {
			res.Bytes += fi.Size()
		}
	}
	return nil
}

// mountReadErr fails a step after which a read through the mount had
// failed: what the instance made of the restore point may lack data.
func mountReadErr(m *staging.Mounted) error {
	if err := m.ReadErr(); err != nil {
		return fmt.Errorf("the restore point could not be read whole (%w); PostgreSQL may have gone on without the data, so no dump is made from it", err)
	}
	return nil
}

// openRepo reads the restore point's tree from the local repository or the
// repository mover, and returns where the mount reads its chunks. A
// restore point named "latest" is resolved once and kept in the plan, so a
// retry mounts the same one.
func (x *sessionRun) openRepo(ctx context.Context) ([]chunkstore.Node, Source, error) {
	r, p := x.r, x.plan()
	// With --at and a repository mover, "latest" is the newest restore
	// point taken before the target (a local repository's was chosen with
	// the plan); kept in the plan below, as any "latest".
	if p.RepoPasswordFile != "" {
		ctx = chunkstore.WithPasswordFile(ctx, p.RepoPasswordFile)
	}
	src, rp, tree, err := openPointAt(ctx, SourceOptions{Repo: p.Repo, RepoPeer: p.RepoPeer, Home: r.o.Home,
		Remote: mover.RemoteRepoOptions{Log: r.o.Log}, Log: r.o.Log}, p.RestorePoint, p.At)
	if err != nil {
		return nil, nil, err
	}
	// Before the mount: without the server of the backup's major version
	// there is nothing to mount it for (the error names the package).
	if major := pgMajor(rp.PGVersion); major != "" {
		bin, err := pgtool.ServerBinDir(major, "")
		if err != nil {
			src.Close()
			return nil, nil, fmt.Errorf("restore point %s: %w", rp.ID, err)
		}
		// And without the databases' locales (recorded by a backup from a
		// server) the instance would refuse connections to them; without
		// the libraries of their columns' types, pg_dump could not read them.
		var locs []staging.DatabaseLocale
		rep := &staging.CheckReport{}
		for _, db := range rp.Databases {
			if slices.Contains(p.Databases, db.Name) {
				locs = append(locs, staging.DatabaseLocale{Name: db.Name, Collate: db.Collate, Ctype: db.Ctype, Provider: db.Provider, ICULocale: db.ICULocale})
				rep.Problems = append(rep.Problems, staging.CheckLibrariesBefore(db.Name, db.Libraries, bin, major).Problems...)
			}
		}
		rep.Problems = append(staging.CheckLocalesBefore(locs, bin, major).Problems, rep.Problems...)
		if err := rep.Err(); err != nil {
			src.Close()
			return nil, nil, fmt.Errorf("restore point %s: %w", rp.ID, err)
		}
	}
	if rp.ID != p.RestorePoint {
		if err := x.update(func(s *Session) { s.Plan.RestorePoint = rp.ID }); err != nil {
			src.Close()
			return nil, nil, fmt.Errorf("restore point %s: %w", p.RestorePoint, err)
		}
	}
	return tree, src, nil
}

// pgMajor is the major version of a PostgreSQL version: "15" of "15.8",
// "9.6" of "9.6.24".
func pgMajor(v string) string {
	parts := strings.SplitN(v, ".", 3)
	if n, err := strconv.Atoi(parts[0]); err == nil && n < 10 && len(parts) > 1 {
		return parts[0] + "." + parts[1]
	}
	return parts[0]
}

// exportReadAhead is the sender's read-ahead in an export (SendOptions.ReadAhead).
const exportReadAhead = 16 << 20

// transfer sends db's dump to the target. With --overwrite, an existing
// target directory is moved aside first and removed after the commit.
func (x *sessionRun) transfer(ctx context.Context, tgt *targetMover, db string, g *growingDump, out *stepOutcome) error {
	dest := x.s.TargetDir(db)
	if err := x.moveAside(db, dest); err != nil {
		return err
	}
	o := mover.SendOptions{
		Src: x.s.DumpDir(db), Dest: dest, TransferID: x.s.ID + "-" + transferIDPart(db),
		// Over loopback the CPU, not the link, is the limit: the cheapest
		// zstd level, not one that adapts to a link that only seems slow.
		// Across hosts the level adapts to the link.
		Compression: "auto", // adapts to the CPU (shared with pg_dump) and the link
		BWLimit:     x.plan().BWLimit,
		// Half the sender's default: the export's process also holds the
		// mount's chunk cache, and with 32 MiB its live heap reached the
		// 128M --memory-limit on large dumps, where the collector then
		// ran every few milliseconds (docs/BENCHMARKS.md, "The export's
		// peak RSS at 1x and 10x"). A chunk that does not fit is read
		// again from the page cache.
		ReadAhead: exportReadAhead,
		Progress: func(p mover.SendProgress) {
			x.r.emit(Event{Step: TransferStep(db), Kind: protocol.EventProgress, Done: p.Durable, Total: p.Total})
		},
	}
	if g != nil {
		o.SrcRoot, o.Feed = g.root, g.feed
	}
	res, err := tgt.sender.Send(ctx, tgt.addr, tgt.peer, o)
	if err != nil {
		return err
	}
	if err := x.update(func(s *Session) { s.Step(TransferStep(db)).Manifest = res.ManifestBLAKE3 }); err != nil {
		return err
	}
	out.Bytes, out.WireBytes = res.Bytes, res.WireBytes
	out.Detail = fmt.Sprintf("%d files, %d chunks sent, %d skipped", res.Files, res.ChunksSent, res.ChunksSkipped)
	if lv := res.LevelsText(); lv != "" {
		out.Detail += "; " + lv
	}
	return nil
}

// moveAside moves an existing dest (from before this session) out of the
// way when the plan allows overwriting. The move is journaled first, so a
// crash leaves it findable; a move journaled by a run killed before it
// moved dest is made now.
func (x *sessionRun) moveAside(db, dest string) error {
	if x.plan().Target != "" {
		return nil // the target refuses an existing destination itself
	}
	x.mu.Lock()
	aside, journaled := x.s.Resources.Aside[db]
	x.mu.Unlock()
	if _, err := os.Lstat(dest); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if man, err := mover.ReadManifest(dest); err == nil && man.Transfer == x.s.ID+"-"+transferIDPart(db) {
		return nil // ours, committed before a crash
	}
	if journaled {
		_, err := mover.MoveAside(mover.HostFS, dest, aside)
		return err
	}
	if !x.plan().Overwrite {
		return fmt.Errorf("%s %w; pass --overwrite to replace it", dest, ErrExists)
	}
	aside = mover.AsideName(dest, x.s.ID)
	if err := x.update(func(s *Session) {
		if s.Resources.Aside == nil {
			s.Resources.Aside = map[string]string{}
		}
		s.Resources.Aside[db] = aside
	}); err != nil {
		return err
	}
	_, err := mover.MoveAside(mover.HostFS, dest, aside)
	return err
}

// growingDump is a dump being written: its directory, opened before pg_dump
// starts (the directory is renamed when the dump is done), and the feed of
// its completed files.
type growingDump struct {
	root *os.Root
	feed *mover.FileFeed
}

// transferIDPart makes a database name usable in a transfer ID.
func transferIDPart(db string) string {
	out := make([]byte, 0, len(db))
	for i := 0; i < len(db) && len(out) < 60; i++ {
		c := db[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' {
			out = append(out, c)
		} else {
			out = append(out, '_')
		}
	}
	sum := chunk.Sum([]byte(db))
	return fmt.Sprintf("%s-%x", out, sum[:4])
}

// cleanup removes the staging dumps and the target directories moved aside.
func (x *sessionRun) cleanup() error {
	if err := removeOwned(x.s.SessionDir(), x.s.ID); err != nil {
		return fmt.Errorf("removing the staging files: %w", err)
	}
	x.mu.Lock()
	aside := maps.Clone(x.s.Resources.Aside)
	x.mu.Unlock()
	for db, dir := range aside {
		if err := mover.RemoveAside(mover.HostFS, dir); err != nil {
			return err
		}
		if err := x.update(func(s *Session) { delete(s.Resources.Aside, db) }); err != nil {
			return err
		}
	}
	return nil
}

// reachable checks that every directory from / down to dir lets others
// search it: the instance runs as another OS user and keeps its socket in
// dir.
func reachable(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s has mode %04o (needs o+x); choose another --staging-dir or chmod it", d, fi.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// SourceFile is the file beside pg_dump's in each exported dump that says
// what the dump is of: the session, the restore point and its repository,
// for a point-in-time export the target and the point the recovery reached,
// and the filter. pg_restore ignores it; the transfer's manifest covers it.
const SourceFile = "pgporter-source.json"

// DumpSource is the content of SourceFile.
type DumpSource struct {
	Format       int                 `json:"format"` // 1
	Session      string              `json:"session"`
	Database     string              `json:"database"`
	RestorePoint string              `json:"restore_point"`
	Repository   string              `json:"repository"` // a directory, or a repository mover's ADDR#PEER_ID
	PGVersion    string              `json:"pg_version"`
	At           *PointInTime        `json:"at,omitempty"`
	Reached      *staging.Reached    `json:"reached,omitempty"`
	Filter       *staging.DumpFilter `json:"filter,omitempty"`
	Dumped       time.Time           `json:"dumped"`
}

// writeSource writes db's SourceFile into its dump directory dir, through
// a synced temporary file.
func (x *sessionRun) writeSource(dir, db, version string) error {
	p := x.plan()
	x.mu.Lock()
	reached := x.s.Reached
	x.mu.Unlock()
	src := DumpSource{Format: 1, Session: x.s.ID, Database: db, RestorePoint: p.RestorePoint, Repository: cmp.Or(p.Repo, p.RepoPeer),
		PGVersion: version, At: p.At, Reached: reached, Filter: p.Filter, Dumped: time.Now().UTC()}
	b, err := json.MarshalIndent(src, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, sourceTempPrefix)
	if err != nil {
		return fmt.Errorf("writing %s: %w", SourceFile, err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, SourceFile))
	}
	if err == nil {
		// A dump reused after a power loss must find the file as the
		// target may hold it committed, not write it again.
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", SourceFile, err)
	}
	return nil
}

// sourceTempPrefix names writeSource's temporary files, which a run killed
// while writing one leaves in the dump directory.
const sourceTempPrefix = ".pgporter-source-"

// syncDir makes the entries of dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// linkGlobals puts the session's globals.sql (written and synced once by
// DumpGlobals) into a dump directory: a hard link, as both live in the
// session directory. A link left by an interrupted run is replaced.
func linkGlobals(src, dst string) error {
	if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Link(src, dst); err != nil {
		return fmt.Errorf("adding %s to the dump: %w", staging.GlobalsFile, err)
	}
	return nil
}

// backupHBA reads the local lines of the backup's pg_hba.conf in dataDir
// and checks that they let p.PGUser in without a password over the socket,
// from this process's OS user, to every database the export connects to
// (postgres for the checks and the globals, and each one dumped).
func backupHBA(dataDir string, p *Plan) (*staging.LocalHBA, error) {
	h, err := staging.ReadLocalHBA(dataDir)
	if err != nil {
		return nil, err
	}
	osUser := strconv.Itoa(os.Geteuid())
	if u, err := user.LookupId(osUser); err == nil {
		osUser = u.Username
	}
	for _, db := range append([]string{"postgres"}, p.Databases...) {
		if err := h.Allows(db, p.PGUser, osUser); err != nil {
			if osUser == "root" && errors.Is(err, staging.ErrPeerUser) {
				err = fmt.Errorf("%w (pgporter runs as root and connects as root: peer authentication as the instance's OS user %s cannot work from here)", err, p.OSUser)
			}
			return nil, fmt.Errorf("--auth %s: %w", AuthBackupHBA, err)
		}
	}
	return h, nil
}

// credentials calls Options.Credentials, if set, for p.
func (r *Runner) credentials(p *Plan) error {
	if r.o.Credentials == nil {
		return nil
	}
	pw, err := r.o.Credentials(p)
	if err != nil {
		return err
	}
	r.o.Password = pw
	return nil
}
