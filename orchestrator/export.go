package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/staging"
)

// Event reports progress of a running session to the CLI.
type Event struct {
	Step  string // a step name
	Kind  string // "start", "progress", "done", "skip", "warning"
	Done  int64  // bytes (transfer) or tables (dump) so far
	Total int64
	Text  string
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

// Create checks p, resolves its restore point and journals a new session in
// state planned. Nothing heavy happens here.
func (r *Runner) Create(p Plan) (*Session, error) {
	if len(p.Databases) == 0 {
		return nil, fmt.Errorf("%w: name at least one database with --db", ErrBadPlan)
	}
	seen := map[string]bool{}
	for _, db := range p.Databases {
		if db == "" {
			return nil, fmt.Errorf("%w: empty database name", ErrBadPlan)
		}
		if seen[dbDirName(db)] {
			return nil, fmt.Errorf("%w: database %q named twice (or two names map to one directory)", ErrBadPlan, db)
		}
		seen[dbDirName(db)] = true
	}
	if p.To == "" {
		return nil, fmt.Errorf("%w: --to is required", ErrBadPlan)
	}
	if p.PGUser == "" {
		p.PGUser = "postgres"
	}
	if p.OSUser == "" {
		p.OSUser = "postgres"
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
	if p.Repo, err = filepath.Abs(p.Repo); err != nil {
		return nil, err
	}
	to, err := filepath.Abs(p.To)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(to, 0o755); err != nil {
		return nil, fmt.Errorf("%w: creating --to %s: %v", ErrBadPlan, to, err)
	}
	if p.To, err = filepath.EvalSymlinks(to); err != nil {
		return nil, err
	}
	repo, err := chunkstore.OpenRepo(p.Repo, r.o.Log)
	if err != nil {
		return nil, fmt.Errorf("%w: repository %s: %v", ErrBadPlan, p.Repo, err)
	}
	rp, err := repo.Resolve(p.RestorePoint)
	repo.Close()
	if err != nil {
		return nil, fmt.Errorf("%w: %v (see 'pgporter restore-points --repo %s')", ErrBadPlan, err, p.Repo)
	}
	p.RestorePoint = rp.ID
	now := time.Now().UTC()
	s := &Session{ID: newSessionID(now), State: StatePlanned, Created: now, Plan: p}
	for _, db := range p.Databases {
		if _, err := os.Lstat(s.TargetDir(db)); err == nil && !p.Overwrite {
			return nil, fmt.Errorf("%w: %s exists; pass --overwrite to replace it", ErrBadPlan, s.TargetDir(db))
		}
	}
	s.Step(StepCheck)
	for _, db := range p.Databases {
		s.Step(dumpStep(db))
		s.Step(transferStep(db))
	}
	s.Step(StepCleanup)
	if err := r.j.Put(s); err != nil {
		return nil, err
	}
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
		r.emit(Event{Kind: "skip", Text: "session " + id + " is done already"})
		return s, nil
	case StateCancelled:
		return s, fmt.Errorf("session %s was cancelled; start a new export", id)
	}
	s.PID, s.Error = os.Getpid(), ""
	if err := r.j.Put(s); err != nil {
		return s, err
	}
	runErr := r.run(ctx, s)
	s.PID = 0
	if runErr != nil {
		s.State, s.Error = StateFailed, runErr.Error()
		if ctx.Err() != nil {
			s.Error = "interrupted: " + s.Error
		}
	} else {
		s.State = StateDone
	}
	if err := r.j.Put(s); err != nil && runErr == nil {
		runErr = err
	}
	return s, runErr
}

// setState journals a state change.
func (r *Runner) setState(s *Session, st State) error {
	s.State = st
	return r.j.Put(s)
}

// step runs fn as the journaled step name, unless it is done already.
func (r *Runner) step(ctx context.Context, s *Session, name string, fn func(*Step) error) error {
	st := s.Step(name)
	if st.State == StepDone {
		r.emit(Event{Step: name, Kind: "skip", Text: "done in an earlier run"})
		return nil
	}
	st.State, st.Started, st.Ended, st.Error = StepRunning, time.Now().UTC(), time.Time{}, ""
	st.Attempts++
	if err := r.j.Put(s); err != nil {
		return err
	}
	r.emit(Event{Step: name, Kind: "start"})
	err := fn(st)
	st.Ended = time.Now().UTC()
	if err != nil {
		err = contextErr(ctx, err)
		st.State, st.Error = StepFailed, err.Error()
	} else {
		st.State = StepDone
	}
	if perr := r.j.Put(s); perr != nil && err == nil {
		err = perr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	r.emit(Event{Step: name, Kind: "done", Done: st.Bytes, Total: st.Bytes, Text: st.Detail})
	return nil
}

func (r *Runner) run(ctx context.Context, s *Session) error {
	if err := r.reclaim(ctx, s); err != nil {
		return err
	}
	emb, err := startEmbedded(r.o.Home, s.Plan.To, r.o.Log)
	if err != nil {
		return err
	}
	defer emb.close()

	pendingDump := slices.ContainsFunc(s.Plan.Databases, func(db string) bool { return s.Step(dumpStep(db)).State != StepDone })
	if pendingDump {
		if err := r.stage(ctx, s, emb); err != nil {
			return err
		}
	}
	if err := r.setState(s, StateTransferring); err != nil {
		return err
	}
	for _, db := range s.Plan.Databases {
		if err := r.step(ctx, s, transferStep(db), func(st *Step) error { return r.transfer(ctx, s, emb, db, st) }); err != nil {
			return err
		}
	}
	if err := r.setState(s, StateCleaning); err != nil {
		return err
	}
	return r.step(ctx, s, StepCleanup, func(st *Step) error { return r.cleanup(s) })
}

// stage mounts the restore point, starts an instance on it, checks, and
// dumps every database not dumped yet. It stops the instance and unmounts
// before it returns, whatever happened: only the dumps outlive it.
func (r *Runner) stage(ctx context.Context, s *Session, emb *embedded) (err error) {
	if err := r.setState(s, StateChecking); err != nil {
		return err
	}
	repo, err := chunkstore.OpenRepo(s.Plan.Repo, r.o.Log)
	if err != nil {
		return fmt.Errorf("opening repository: %w", err)
	}
	defer repo.Close()
	rp, err := repo.Resolve(s.Plan.RestorePoint)
	if err != nil {
		return err
	}
	tree, err := repo.Tree(ctx, rp)
	if err != nil {
		return fmt.Errorf("reading restore point %s: %w", rp.ID, err)
	}
	dir := s.SessionDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	_ = os.Chmod(s.Plan.StagingDir, 0o755) // postgres must reach its run directory
	if err := reachable(dir); err != nil {
		return fmt.Errorf("the %s OS user must reach the staging directory: %w", s.Plan.OSUser, err)
	}
	cowDir := filepath.Join(dir, "cow")
	_ = os.RemoveAll(cowDir) // a fresh layer: crash recovery simply runs again
	mnt := filepath.Join(os.TempDir(), "pgporter-"+s.ID)
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return err
	}
	s.Resources.Mountpoint = mnt
	// A mount and an instance never outlive a run: a retry makes new ones.
	s.Step(StepMount).State = StepPending
	s.Step(StepStart).State = StepPending
	var m *staging.Mounted
	err = r.step(ctx, s, StepMount, func(st *Step) error {
		var err error
		m, err = staging.Mount(ctx, mnt, tree, repo.Store(), staging.MountOptions{CowDir: cowDir, Owner: s.Plan.OSUser, Log: r.o.Log})
		st.Detail = mnt
		return err
	})
	if err != nil {
		return err
	}
	defer func() {
		if uerr := m.Unmount(); uerr != nil && err == nil {
			err = fmt.Errorf("unmounting %s: %w", mnt, uerr)
		}
		_ = os.RemoveAll(cowDir)
		_ = os.Remove(mnt)
		s.Resources.Mountpoint = ""
		_ = r.j.Put(s)
	}()
	var in *staging.Instance
	err = r.step(ctx, s, StepStart, func(st *Step) error {
		var err error
		in, err = staging.StartInstance(ctx, staging.InstanceOptions{DataDir: m.Dir(), RunDir: filepath.Join(dir, "run"), OSUser: s.Plan.OSUser, Log: r.o.Log})
		if err != nil {
			return err
		}
		s.Resources.InstancePID = in.PID()
		st.Detail = fmt.Sprintf("PostgreSQL %s, pid %d", in.Version, in.PID())
		return nil
	})
	if err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if serr := in.Stop(stopCtx); serr != nil && err == nil {
			err = fmt.Errorf("stopping the instance: %w", serr)
		}
		s.Resources.InstancePID = 0
		_ = r.j.Put(s)
	}()

	err = r.step(ctx, s, StepCheck, func(st *Step) error {
		rep, err := in.Check(ctx, staging.CheckOptions{
			Databases: s.Plan.Databases, User: s.Plan.PGUser, Password: r.o.Password, DumpDir: dir,
			TargetFree: func(ctx context.Context) (int64, error) {
				free, _, err := emb.sender.Space(ctx, emb.addr, emb.peer, s.Plan.To)
				return int64(free), err
			},
		})
		if err != nil {
			return err
		}
		var total int64
		for _, n := range rep.Estimate {
			total += n
		}
		st.Bytes = total
		st.Detail = "estimated dump size " + mover.HumanBytes(total)
		for _, p := range rep.Problems {
			if p.Warning {
				r.emit(Event{Step: StepCheck, Kind: "warning", Text: p.String()})
			}
		}
		return rep.Err()
	})
	if err != nil {
		return err
	}
	if err := r.setState(s, StateDumping); err != nil {
		return err
	}
	for _, db := range s.Plan.Databases {
		name := dumpStep(db)
		err := r.step(ctx, s, name, func(st *Step) error {
			res, err := in.Dump(ctx, staging.DumpOptions{
				DB: db, User: s.Plan.PGUser, Password: r.o.Password, Dir: s.DumpDir(db), Jobs: s.Plan.Jobs,
				Progress: func(done, total int) {
					r.emit(Event{Step: name, Kind: "progress", Done: int64(done), Total: int64(total)})
				},
			})
			if err != nil {
				return err
			}
			st.Bytes = res.Bytes
			st.Detail = fmt.Sprintf("%d tables", res.Tables)
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// transfer sends db's dump to the target. With --overwrite, an existing
// target directory is moved aside first and removed after the commit.
func (r *Runner) transfer(ctx context.Context, s *Session, emb *embedded, db string, st *Step) error {
	dest := s.TargetDir(db)
	if err := r.moveAside(s, db, dest); err != nil {
		return err
	}
	res, err := emb.sender.Send(ctx, emb.addr, emb.peer, mover.SendOptions{
		Src: s.DumpDir(db), Dest: dest, TransferID: s.ID + "-" + transferIDPart(db),
		Progress: func(p mover.SendProgress) {
			r.emit(Event{Step: transferStep(db), Kind: "progress", Done: p.Durable, Total: p.Total})
		},
	})
	if err != nil {
		return err
	}
	st.Bytes, st.WireBytes = res.Bytes, res.WireBytes
	st.Detail = fmt.Sprintf("%d files, %d chunks sent, %d skipped", res.Files, res.ChunksSent, res.ChunksSkipped)
	return nil
}

// moveAside moves an existing dest (from before this session) out of the
// way when the plan allows overwriting. The move is journaled first, so a
// crash leaves it findable.
func (r *Runner) moveAside(s *Session, db, dest string) error {
	if _, ok := s.Resources.Aside[db]; ok {
		return nil
	}
	if _, err := os.Lstat(dest); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if man, err := mover.ReadManifest(dest); err == nil && man.Transfer == s.ID+"-"+transferIDPart(db) {
		return nil // ours, committed before a crash
	}
	if !s.Plan.Overwrite {
		return fmt.Errorf("%s exists; pass --overwrite to replace it", dest)
	}
	aside := filepath.Join(filepath.Dir(dest), ".pgporter-replaced-"+s.ID+"-"+filepath.Base(dest))
	if s.Resources.Aside == nil {
		s.Resources.Aside = map[string]string{}
	}
	s.Resources.Aside[db] = aside
	if err := r.j.Put(s); err != nil {
		return err
	}
	if err := os.Rename(dest, aside); err != nil {
		return fmt.Errorf("moving the old %s aside: %w", dest, err)
	}
	return nil
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
	sum := chunkstore.Sum([]byte(db))
	return fmt.Sprintf("%s-%x", out, sum[:4])
}

// cleanup removes the staging dumps and the target directories moved aside.
func (r *Runner) cleanup(s *Session) error {
	if err := os.RemoveAll(s.SessionDir()); err != nil {
		return fmt.Errorf("removing the staging files: %w", err)
	}
	for db, aside := range s.Resources.Aside {
		if err := os.RemoveAll(aside); err != nil {
			return fmt.Errorf("removing the replaced %s: %w", aside, err)
		}
		delete(s.Resources.Aside, db)
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
