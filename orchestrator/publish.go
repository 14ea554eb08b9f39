package orchestrator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/pebbledb"
	"github.com/pgporter/pgporter/internal/walproxy"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/protocol"
	"github.com/pgporter/pgporter/staging"
)

// ErrPortInUse is returned by Publish when the port cannot be bound.
var ErrPortInUse = errors.New("port is already in use")

// PublishOptions configure Publish. A publish job carries them as a
// protocol.PublishSpec (jobwire.go), without the serve command.
type PublishOptions struct {
	Repo string // repository directory; this or RepoPeer
	// RepoPeer is a repository mover, ADDR#PEER_ID ('mover serve --repo'),
	// instead of Repo: the restore point's chunks are fetched from it as
	// they are read. It must trust the publishing home's mover ID with
	// read.
	RepoPeer string
	// RetryFor is how long a read from RepoPeer blocks and retries through
	// a lost connection before it fails (default 2m, as a mount's).
	RetryFor     time.Duration
	RestorePoint string // ID or "latest" (the default)
	// PasswordFile holds the passphrase of an encrypted Repo (an absolute
	// path): the publication's serve process, started anew after a crash
	// or a reboot, reads it each time it opens the repository. "": the
	// environment's (chunkstore.WithPasswordFile).
	PasswordFile string
	// Listen is the one address the instance listens on: an IP address, or
	// "*" for all. Default 127.0.0.1.
	Listen string
	Port   int // required
	// Auth is how clients authenticate. AuthPassword (the default):
	// pgporter's own pg_hba.conf allows only password logins (SCRAM or
	// MD5) from the listen address's network and the private socket.
	// AuthBackupHBA: the backup's pg_hba.conf and pg_ident.conf, as the
	// backed-up server had them (a "trust" line there lets anyone in).
	Auth string
	// StrictHBA is deprecated: passwords are the default. It may not be
	// combined with AuthBackupHBA.
	StrictHBA bool
	OSUser    string // OS user that runs postgres; default "postgres"
	// OnRestart is OnRestartRestart (the default) or OnRestartCleanup.
	OnRestart string
	// Serve is the command line that serves a publication in the
	// background, the publication ID appended: pgporter's hidden
	// 'publish-serve', which calls ServePublication. Required.
	Serve []string
	// ServeEnv is added to this process's environment for Serve.
	ServeEnv []string
	// At makes the publication point-in-time: its instance first replays
	// the repository's WAL archive to it (a local Repo only).
	At *PointInTime
	// Self is as Options.Self, for At's restore_command; empty means the
	// serve process's executable.
	Self string
}

// How a publication's clients authenticate (PublishOptions.Auth).
const (
	AuthPassword  = "password"
	AuthBackupHBA = "backup-hba"
)

func (o PublishOptions) withDefaults() PublishOptions {
	if o.Auth == "" {
		o.Auth = AuthPassword
	}
	if o.RestorePoint == "" {
		o.RestorePoint = "latest"
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1"
	}
	if o.OSUser == "" {
		o.OSUser = "postgres"
	}
	if o.OnRestart == "" {
		o.OnRestart = OnRestartRestart
	}
	if o.RepoPeer != "" && o.RetryFor == 0 {
		o.RetryFor = defaultPubRetryFor
	}
	return o
}

// Validate reports options that cannot work.
func (o PublishOptions) Validate() error {
	o = o.withDefaults()
	switch {
	case o.Auth != AuthPassword && o.Auth != AuthBackupHBA:
		return fmt.Errorf("auth %q is neither %s nor %s", o.Auth, AuthPassword, AuthBackupHBA)
	case o.StrictHBA && o.Auth == AuthBackupHBA:
		return fmt.Errorf("--strict-hba and --auth %s exclude each other", AuthBackupHBA)
	case o.Repo == "" && o.RepoPeer == "":
		return errors.New("publish needs a repository: --repo DIR or --repo-peer ADDR#PEER_ID")
	case o.Repo != "" && o.RepoPeer != "":
		return errors.New("publish takes --repo or --repo-peer, not both")
	case o.RetryFor < 0:
		return fmt.Errorf("retry-for %v is negative", o.RetryFor)
	case o.Port < 1 || o.Port > 65535:
		return fmt.Errorf("port %d is not a TCP port (1-65535)", o.Port)
	case o.Listen != "*" && net.ParseIP(o.Listen) == nil:
		return fmt.Errorf("listen address %q is not an IP address or *", o.Listen)
	case len(o.Serve) == 0:
		return errors.New("publish needs the serve command")
	case o.OnRestart != OnRestartRestart && o.OnRestart != OnRestartCleanup:
		return fmt.Errorf("on-restart %q is neither %s nor %s", o.OnRestart, OnRestartRestart, OnRestartCleanup)
	}
	if o.At != nil {
		if err := o.At.recovery("-").Validate(); err != nil {
			return err
		}
	}
	if o.RepoPeer != "" {
		if _, _, err := mover.ParsePeerAddr(o.RepoPeer); err != nil {
			return fmt.Errorf("--repo-peer: %w", err)
		}
	}
	return nil
}

// defaultPubRetryFor is how long a publication's read from its repository
// mover retries through a lost connection, by default: as long as a
// mount's.
const defaultPubRetryFor = 2 * time.Minute

// Publisher publishes restore points and ends publications, journaling
// them under HOME/orchestrator.
type Publisher struct {
	home string
	j    *Journal
	log  *slog.Logger
}

// NewPublisher returns a publisher keeping its state under home. log may be
// nil.
func NewPublisher(home string, log *slog.Logger) (*Publisher, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	j, err := OpenJournal(home)
	if err != nil {
		return nil, err
	}
	return &Publisher{home: home, j: j, log: log}, nil
}

// Journal returns the journal holding the publications.
func (pb *Publisher) Journal() *Journal { return pb.j }

// Dir is the directory of publication id under home: its CoW layer and the
// serve process's log.
func (pb *Publisher) Dir(id string) string { return filepath.Join(pb.home, "publications", id) }

// LogFile is the serve process's log of publication id.
func (pb *Publisher) LogFile(id string) string { return filepath.Join(pb.Dir(id), "serve.log") }

func newPubID(now time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("p-%s-%s", now.UTC().Format("20060102-150405"), hex.EncodeToString(b[:]))
}

// Publish checks the port, journals a new publication and starts its serve
// process (detached, in a session of its own), returning once the instance
// accepts connections, or with the reason it could not start. The serve
// process is not waited for: it outlives this one.
func (pb *Publisher) Publish(ctx context.Context, o PublishOptions) (*Publication, error) {
	o = o.withDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if err := checkPort(o.Listen, o.Port); err != nil {
		return nil, err
	}
	var rp, repo string
	if o.RepoPeer != "" {
		// Here, to report a mover that does not trust us (or lacks the
		// restore point) at once; the serve process connects again.
		src, err := OpenSource(ctx, SourceOptions{RepoPeer: o.RepoPeer, Home: pb.home, Remote: mover.RemoteRepoOptions{RetryFor: -1, Log: pb.log}})
		if err != nil {
			return nil, err
		}
		id := o.RestorePoint
		if o.At != nil && id == "latest" {
			id, err = pointBefore(ctx, src, o.At, o.RepoPeer)
		}
		var p *chunkstore.RestorePoint
		if err == nil {
			p, err = src.Resolve(ctx, id)
		}
		src.Close()
		if err != nil {
			return nil, fmt.Errorf("restore point %s on %s: %w", o.RestorePoint, o.RepoPeer, err)
		}
		rp = p.ID
	} else {
		// The serve process opens the repository; here only its points
		// directory is read.
		rps, err := chunkstore.ListRepo(ctx, o.Repo)
		if err != nil {
			return nil, fmt.Errorf("repository %s: %w", o.Repo, err)
		}
		if o.At != nil && o.RestorePoint == "latest" {
			if rps, err = takenBefore(rps, o.At, o.Repo); err != nil {
				return nil, err
			}
		}
		if rp, err = resolvePoint(rps, o.RestorePoint); err != nil {
			return nil, err
		}
		if repo, err = chunkstore.AbsRepo(o.Repo); err != nil {
			return nil, err
		}
	}
	now := time.Now().UTC()
	id := newPubID(now)
	dir := pb.Dir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	p := &Publication{
		ID: id, Repo: repo, RepoPeer: o.RepoPeer, RetryFor: o.RetryFor, RestorePoint: rp, Listen: o.Listen, Port: o.Port, Auth: o.Auth, OSUser: o.OSUser,
		OnRestart: o.OnRestart, State: PubStarting, Created: now, At: o.At, Self: o.Self, PasswordFile: o.PasswordFile,
		BaseDir: filepath.Join(os.TempDir(), "pgporter-"+id), CowDir: filepath.Join(dir, "cow"),
	}
	// The lock is handed to the serve process as descriptor 3: it holds it
	// for its life, so that 'published' and 'unpublish' can tell a live
	// publication from one whose process died, without trusting PIDs.
	lock, err := pb.j.Lock(id)
	if err != nil {
		return nil, err
	}
	if err := pb.j.PutPublication(p); err != nil {
		lock.Unlock()
		return nil, err
	}
	return pb.spawn(ctx, id, lock, o.Serve, o.ServeEnv)
}

// spawn starts the serve process of publication id, which is journaled
// as starting, and waits for it to report the instance up or the reason it
// could not start. It hands lock over to the serve process and closes its
// own descriptor of it.
func (pb *Publisher) spawn(ctx context.Context, id string, lock *Lock, serve, env []string) (*Publication, error) {
	defer lock.f.Close() // not Unlock: that would release the child's lock too
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	logf, err := os.OpenFile(pb.LogFile(id), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		wr.Close()
		return nil, err
	}
	cmd := exec.Command(serve[0], append(serve[1:], id)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{lock.f, wr}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	wr.Close()
	logf.Close()
	if err != nil {
		_ = pb.j.UpdatePublication(id, func(p *Publication) { p.State, p.Error = PubFailed, err.Error() })
		return nil, fmt.Errorf("starting the serve process: %w", err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	if err := pb.j.UpdatePublication(id, func(p *Publication) { p.ServePID = pid }); err != nil {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		return nil, err
	}
	pb.log.Info("publication starting", "publication", id, "pid", pid)

	// An interrupt unblocks the read and stops the serve process, which
	// cleans up after itself.
	stop := context.AfterFunc(ctx, func() {
		_ = rd.SetReadDeadline(time.Now())
		_ = syscall.Kill(pid, syscall.SIGTERM)
	})
	defer stop()
	b, rerr := io.ReadAll(rd) // until the serve process closes the pipe or exits
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	switch msg := string(b); {
	case msg == "ready\n":
		return pb.j.GetPublication(id)
	case strings.HasPrefix(msg, "error"):
		return nil, parseServeError(strings.TrimSuffix(msg, "\n"))
	}
	if rerr != nil {
		return nil, fmt.Errorf("waiting for the serve process: %w", rerr)
	}
	msg := "the serve process exited before the instance was up"
	if t := staging.LogTail(pb.LogFile(id), 10); t != "" {
		msg += ":\n" + t
	}
	_ = pb.j.UpdatePublication(id, func(p *Publication) {
		if p.State == PubStarting {
			p.State, p.Error = PubFailed, msg
		}
	})
	return nil, errors.New(msg)
}

// checkPort refuses a port that is in use on the listen address. The port
// is free again when it returns; PostgreSQL binding it an instant later
// fails the start if someone took it meanwhile.
func checkPort(listen string, port int) error {
	host := listen
	if host == "*" {
		host = ""
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("%w: %s:%d", ErrPortInUse, listen, port)
		}
		return fmt.Errorf("cannot listen on %s:%d: %w", listen, port, err)
	}
	return l.Close()
}

func resolvePoint(rps []chunkstore.RestorePoint, id string) (string, error) {
	if id == "latest" {
		if len(rps) == 0 {
			return "", fmt.Errorf("%w: the repository has no restore points", chunkstore.ErrNoRestorePoint)
		}
		return rps[len(rps)-1].ID, nil
	}
	for _, rp := range rps {
		if rp.ID == id {
			return id, nil
		}
	}
	return "", fmt.Errorf("%w: %q", chunkstore.ErrNoRestorePoint, id)
}

// errorKinds are the errors whose identity crosses a process or a host
// along with their text, so that the other side matches them as values
// (and the CLI gives them their exit code): the serve process reports them
// to Publish ("error(KIND): TEXT" on the ready pipe, "error: TEXT" for
// others), and a staging mover's jobs to the orchestrator (the job's end
// event's reason, jobReason and fromJob).
var errorKinds = []struct {
	name string
	err  error
}{
	{"target-left", ErrTargetLeft}, // before what kept the target from being asked
	{"backup-hba", staging.ErrHBA}, // before permission, which it is marked with too
	{"locked", pebbledb.ErrLocked},
	{"port-in-use", ErrPortInUse},
	{"no-publication", ErrNoPublication},
	{"not-repo", chunkstore.ErrNotRepo},
	{"no-restore-point", chunkstore.ErrNoRestorePoint},
	{"not-found", protocol.ErrNotFound},
	{"permission", protocol.ErrPermission},
	{"untrusted", mover.ErrUntrusted},
	{"wrong-peer", mover.ErrWrongPeer},
	{"no-answer", mover.ErrNoAnswer},
	{"not-dead", ErrNotDead},
}

// jobReason gives err its kind for the job's end event, if it has one.
func jobReason(err error) error {
	for _, k := range errorKinds {
		if errors.Is(err, k.err) {
			return reasoned{err, k.name}
		}
	}
	return err
}

type reasoned struct {
	error
	reason string
}

func (r reasoned) Unwrap() error     { return r.error }
func (r reasoned) JobReason() string { return r.reason }

// fromJob marks a job's failure with the error of its kind, if the staging
// mover named one.
func fromJob(err error) error {
	if je, ok := errors.AsType[*mover.JobError](err); ok && je.Reason != "" {
		for _, k := range errorKinds {
			if k.name == je.Reason {
				return marked{err, k.err}
			}
		}
	}
	return err
}

func formatServeError(err error) string {
	for _, k := range errorKinds {
		if errors.Is(err, k.err) {
			return "error(" + k.name + "): " + err.Error()
		}
	}
	return "error: " + err.Error()
}

// parseServeError is the error of a line formatServeError wrote.
func parseServeError(line string) error {
	if msg, ok := strings.CutPrefix(line, "error: "); ok {
		return errors.New(msg)
	}
	kind, msg, _ := strings.Cut(strings.TrimPrefix(line, "error("), "): ")
	for _, k := range errorKinds {
		if k.name == kind {
			return marked{errors.New(msg), k.err}
		}
	}
	return errors.New(msg)
}

// ServePublication runs publication id in this process until ctx is done:
// it mounts the restore point, starts the instance, writes "ready\n" (or
// "error: REASON", see formatServeError) to ready and closes it, then waits. On the way out it
// stops the instance, unmounts, drops the CoW layer and journals the
// publication gone (or failed, if the instance or the mount ended on their
// own); stopped by a signal that Unpublish did not send (a shutdown), it
// keeps the layer and leaves the publication dead, to be resumed. lock is the publication's lock that Publish handed over; it stays
// open until the process exits.
func (pb *Publisher) ServePublication(ctx context.Context, id string, lock, ready *os.File) (err error) {
	// Neither postgres nor anything else this process starts may inherit
	// the lock (it would look alive after we die) or the ready pipe.
	syscall.CloseOnExec(int(lock.Fd()))
	syscall.CloseOnExec(int(ready.Fd()))
	// The lock is held while its descriptor is open: a finalizer must not
	// close it while the publication lives.
	defer runtime.KeepAlive(lock)
	reported := false
	report := func(line string) {
		if !reported {
			reported = true
			_, _ = io.WriteString(ready, line)
			ready.Close()
		}
	}
	defer func() {
		if err != nil {
			report(formatServeError(err))
		}
	}()
	p, err := pb.j.GetPublication(id)
	if err != nil {
		return err
	}
	if p.State != PubStarting {
		return fmt.Errorf("publication %s is %s, not starting", id, p.State)
	}
	s := newServing(pb, p)
	if err := pb.j.UpdatePublication(id, func(p *Publication) { p.ServePID = os.Getpid() }); err != nil {
		return err
	}
	defer s.closeSource()
	if err := s.bringUp(ctx); err != nil {
		return err
	}
	in := s.st.Instance()
	s.log.Info("publication up", "listen", p.Listen, "port", p.Port, "pid", in.PID(), "version", in.Version)
	s.up = true
	report("ready\n")
	return s.serve(ctx)
}

// serving is a publication that ServePublication brings up, serves and
// takes down. What is set of it says what is up, and down takes it down
// in reverse.
type serving struct {
	pb      *Publisher
	p       *Publication // as journaled when the serve process started
	log     *slog.Logger
	keepCow bool // a resumed publication keeps its layer when it cannot come up
	up      bool // journaled up: a failure from here on leaves it failed

	src       Source
	journaled bool            // Mounted is journaled: release cleans up from here on
	st        *staging.Staged // the mount, the overlay and the instance
	// While the publication is up: the wait for the instance to exit,
	// and its outcome.
	cancelWait context.CancelFunc
	exited     chan error
}

// newServing is publication p, nothing of it up yet. Its teardown unmounts
// as a process about to exit does: retrying a busy mount for 5 s, then
// detaching it.
func newServing(pb *Publisher, p *Publication) *serving {
	// A resumed publication keeps its layer when it cannot come up: it
	// holds the writes of its earlier life, which only unpublish drops.
	s := &serving{pb: pb, p: p, log: pb.log.With("publication", p.ID), keepCow: p.Restarts > 0}
	s.st = staging.NewStaged(staging.StagedOptions{UnmountWait: 5 * time.Second, JoinErrors: true, Stopped: s.stopped, Log: s.log})
	return s
}

// stopped follows the stop of the instance, whose error is err: it waits
// for the wait on the instance to end, and journals a clean stop.
func (s *serving) stopped(err error) error {
	if s.exited != nil {
		s.cancelWait()
		<-s.exited
		if err == nil {
			_ = s.pb.j.UpdatePublication(s.p.ID, func(p *Publication) { p.InstancePID = 0 })
		}
	}
	return err
}

func (s *serving) closeSource() {
	if s.src != nil {
		s.src.Close()
	}
}

// bringUp mounts the restore point with the publication's layer over it,
// starts the instance and journals the publication up. When a step fails,
// it takes down what came up and journals the publication failed, or gone.
func (s *serving) bringUp(ctx context.Context) error {
	if err := s.mount(ctx); err != nil {
		s.abort(ctx)
		return s.fail(ctx, err)
	}
	if err := s.startInstance(ctx); err != nil {
		s.abort(ctx)
		if ctx.Err() != nil && !s.keepCow {
			_ = s.pb.j.UpdatePublication(s.p.ID, func(p *Publication) { p.State = PubGone })
			return ctx.Err()
		}
		return s.fail(ctx, err)
	}
	in := s.st.Instance()
	if err := s.pb.j.UpdatePublication(s.p.ID, func(p *Publication) {
		p.InstancePID, p.Version, p.State, p.UpSince = in.PID(), in.Version, PubUp, time.Now().UTC()
		if in.Recovered != nil {
			p.Reached = in.Recovered
		}
	}); err != nil {
		s.abort(ctx)
		return s.fail(ctx, err)
	}
	return nil
}

// mount opens the repository, mounts the restore point at Lower and puts
// the publication's layer over it at Mountpoint. It journals the
// publication mounted before it mounts anything, so that a dead serve
// process's mounts are found.
func (s *serving) mount(ctx context.Context) error {
	p := s.p
	tree, src, err := s.pb.openPubRepo(ctx, p, s.log)
	if err != nil {
		return err
	}
	s.src = src
	if err := os.MkdirAll(p.BaseDir, 0o755); err != nil {
		return err
	}
	_ = os.Chmod(p.BaseDir, 0o755) // postgres must reach its data and run directories
	if err := os.MkdirAll(p.Lower(), 0o755); err != nil {
		return err
	}
	if err := os.RemoveAll(p.fuseCowDir()); err != nil {
		return err
	}
	if err := s.pb.j.UpdatePublication(p.ID, func(p *Publication) { p.Mounted = true }); err != nil {
		return err
	}
	s.journaled = true
	if _, err := s.st.Mount(ctx, p.Lower(), tree, src, staging.MountOptions{CowDir: p.fuseCowDir(), Owner: p.OSUser, Log: s.log}); err != nil {
		return err
	}
	return s.st.Overlay(p.Mountpoint(), p.overlay())
}

// startInstance starts PostgreSQL on the overlay, replaying the WAL to the
// publication's point in time at its first start.
func (s *serving) startInstance(ctx context.Context) error {
	p := s.p
	opts := staging.InstanceOptions{
		DataDir: p.Mountpoint(), RunDir: p.RunDir(), OSUser: p.OSUser, Listen: p.Listen, Port: p.Port,
		KeepHBA: p.Auth == AuthBackupHBA, AllowMissingPreload: true, Log: s.log,
	}
	var err error
	if !opts.KeepHBA {
		opts.HBAFile, err = writeStrictHBA(p.RunDir(), p.Listen)
	}
	var proxy *walproxy.Server
	if err == nil && p.At != nil && p.Reached == nil {
		if fetchesDirectly(p.Repo, p.RepoPeer, s.src) {
			opts.Recovery, err = walRecovery(ctx, p.At, p.Self, p.Repo, p.OSUser)
		} else if proxy, err = startWALProxy(ctx, s.src, p.OSUser, s.log); err == nil {
			// This process fetches the WAL for the instance, as an
			// export's does (export.go).
			opts.Recovery, err = walRecoveryFrom(ctx, p.At, p.Self, "--proxy "+shellQuote(proxy.Socket()), p.OSUser)
		}
	}
	// Journaled as soon as the postmaster runs: a server killed while it
	// starts leaves it for the restart's reclaim to stop.
	opts.Started = func(pid int) error {
		return s.pb.j.UpdatePublication(p.ID, func(p *Publication) { p.InstancePID = pid })
	}
	if err == nil {
		if _, err = s.st.Start(ctx, opts); err != nil {
			// Start stopped the server it started.
			_ = s.pb.j.UpdatePublication(p.ID, func(p *Publication) { p.InstancePID = 0 })
		}
	}
	if proxy != nil {
		proxy.Close()
	}
	return err
}

// serve waits until ctx is done, postgres exits or the mount ends from
// outside, then takes the publication down and journals how it ended.
// Stopped by a signal that Unpublish did not send, it keeps the layer.
func (s *serving) serve(ctx context.Context) error {
	cause, suspend := s.wait(ctx)
	_ = s.pb.j.UpdatePublication(s.p.ID, func(p *Publication) { p.State = PubStopping })
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	serr := s.down(stopCtx, func(serr error) bool { return !suspend || serr != nil })
	if err := errors.Join(cause, serr); err != nil {
		s.log.Error("publication ended", "err", err)
		return s.fail(ctx, err)
	}
	if suspend {
		s.log.Info("publication stopped by a signal; its layer is kept for 'publish --resume' or a restarting mover")
		return s.pb.j.UpdatePublication(s.p.ID, func(p *Publication) {
			p.Error = "stopped by a signal, not by unpublish: resumable on its layer"
		})
	}
	s.log.Info("publication ended")
	return s.pb.j.UpdatePublication(s.p.ID, func(p *Publication) { p.State, p.Error = PubGone, "" })
}

// wait waits for the end of the publication: ctx done (suspend if
// Unpublish did not ask for it: a shutdown, say), or the instance or the
// mount ending on their own (cause).
func (s *serving) wait(ctx context.Context) (cause error, suspend bool) {
	waitCtx, cancelWait := context.WithCancel(context.WithoutCancel(ctx))
	exited := make(chan error, 1)
	go func() { exited <- s.st.Instance().Wait(waitCtx) }()
	s.cancelWait, s.exited = cancelWait, exited
	select {
	case <-ctx.Done():
		// Not asked by unpublish (a shutdown, say): stop, but keep the
		// layer, and leave the publication dead, to be resumed.
		if q, err := s.pb.j.GetPublication(s.p.ID); err == nil && !q.Unpublishing {
			suspend = true
		}
		s.log.Info("publication stopping", "keep_layer", suspend)
	case err := <-exited:
		exited <- err // for the wait in down
		cause = fmt.Errorf("postgres exited on its own (%v); see %s", err, filepath.Join(s.p.RunDir(), "postgres.log"))
	case <-s.st.Unmounted():
		cause = fmt.Errorf("%s was unmounted from outside pgporter", s.p.Mountpoint())
	}
	return cause, suspend
}

// down takes down what is up, the last first: it stops the instance,
// unmounts the overlay, then the restore point, and releases the
// publication's files, its layer too if dropCow says so given the errors
// so far. It returns those errors.
func (s *serving) down(ctx context.Context, dropCow func(error) bool) error {
	err := s.st.Close(ctx)
	if s.journaled {
		s.pb.release(ctx, s.p, dropCow(err))
	}
	return err
}

// abort takes down what came up of a publication that cannot come up: its
// layer too, unless it is resumed.
func (s *serving) abort(ctx context.Context) {
	_ = s.down(context.WithoutCancel(ctx), func(error) bool { return !s.keepCow })
}

// fail journals the publication failed with err and returns err. One that
// never came up is released first, and is gone if it left nothing behind
// (its reason kept for 'published --all'); one that failed later, or left
// something, is failed until unpublish.
func (s *serving) fail(ctx context.Context, err error) error {
	state := PubFailed
	if !s.up {
		s.pb.release(context.WithoutCancel(ctx), s.p, !s.keepCow)
		if !exists(s.p.BaseDir) && !exists(s.p.CowDir) {
			state = PubGone
		}
	}
	_ = s.pb.j.UpdatePublication(s.p.ID, func(p *Publication) { p.State, p.Error = state, err.Error() })
	return err
}

// openPubRepo reads the tree of p's restore point and returns where its
// mount reads chunks: the local repository, held open until close, or the
// repository mover, whose reads block and retry through a lost connection
// for p.RetryFor rather than failing, so that an outage of the repository
// host stalls the instance's reads instead of ending the publication.
func (pb *Publisher) openPubRepo(ctx context.Context, p *Publication, log *slog.Logger) ([]chunkstore.Node, Source, error) {
	retry := p.RetryFor
	if retry <= 0 {
		retry = defaultPubRetryFor
	}
	if p.PasswordFile != "" {
		ctx = chunkstore.WithPasswordFile(ctx, p.PasswordFile)
	}
	src, _, tree, err := OpenRestorePoint(ctx, SourceOptions{Repo: p.Repo, RepoPeer: p.RepoPeer, Home: pb.home,
		Remote: mover.RemoteRepoOptions{RetryFor: retry, Log: log}, Log: log}, p.RestorePoint)
	if err != nil {
		return nil, nil, err
	}
	return tree, src, nil
}

// release removes what a publication leaves on disk once its instance is
// stopped and its mount gone: the overlay, a dead mount, the mountpoints
// and run directory, and with dropCow the CoW layer. It logs what it cannot
// remove.
func (pb *Publisher) release(ctx context.Context, p *Publication, dropCow bool) {
	if err := pb.releaseMounts(ctx, p); err != nil {
		pb.log.Warn("releasing the mounts", "publication", p.ID, "err", err)
		return // never remove what may still be mounted
	}
	errs := []error{
		os.Remove(p.Mountpoint()),
		os.Remove(p.Lower()),
		os.RemoveAll(p.RunDir()),
		os.Remove(p.BaseDir),
	}
	if dropCow {
		errs = append(errs, os.RemoveAll(p.CowDir))
	}
	for _, err := range errs {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			pb.log.Warn("removing a publication's files", "publication", p.ID, "err", err)
		}
	}
	_ = pb.j.UpdatePublication(p.ID, func(p *Publication) { p.Mounted, p.InstancePID = false, 0 })
}

// releaseMounts stops an orphaned instance of p and removes the mounts a
// dead serve process left: the overlay, then the dead FUSE mount under it.
func (pb *Publisher) releaseMounts(ctx context.Context, p *Publication) error {
	if p.InstancePID > 0 {
		if err := stopOrphan(ctx, p.InstancePID); err != nil {
			return fmt.Errorf("stopping the instance (pid %d): %w", p.InstancePID, err)
		}
	}
	if err := staging.UnmountOverlay(p.Mountpoint(), 5*time.Second); err != nil {
		return err
	}
	if _, err := staging.CleanStaleMount(p.Lower()); err != nil {
		return fmt.Errorf("cleaning the mount %s: %w", p.Lower(), err)
	}
	return nil
}

// writeStrictHBA writes an hba file into runDir that allows password logins
// only (md5, which also accepts SCRAM-stored passwords), over the private
// socket and from the listen address's network.
func writeStrictHBA(runDir, listen string) (string, error) {
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("# generated by pgporter publish (--auth password)\nlocal all all md5\n")
	for _, n := range listenNetworks(listen) {
		fmt.Fprintf(&b, "host all all %s md5\n", n)
	}
	name := filepath.Join(runDir, "pg_hba_strict.conf")
	return name, os.WriteFile(name, []byte(b.String()), 0o644)
}

// listenNetworks returns the networks of the listen address: that of the
// interface carrying it, else the address alone; everything for "*".
func listenNetworks(listen string) []string {
	ip := net.ParseIP(listen)
	if listen == "*" || ip == nil || ip.IsUnspecified() {
		return []string{"0.0.0.0/0", "::/0"}
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return []string{(&net.IPNet{IP: ip.Mask(n.Mask), Mask: n.Mask}).String()}
			}
		}
	}
	bits := 128
	if ip.To4() != nil {
		bits = 32
	}
	return []string{fmt.Sprintf("%s/%d", ip, bits)}
}

// List returns the publications not gone (every one with all), newest
// first, reporting as dead those whose serve process is gone.
func (pb *Publisher) List(all bool) ([]*Publication, error) {
	ps, err := pb.j.ListPublications()
	if err != nil {
		return nil, err
	}
	out := ps[:0]
	for _, p := range ps {
		if p.State == PubGone && !all {
			continue
		}
		if p.On == "" && (p.State == PubStarting || p.State == PubUp || p.State == PubStopping) && !pb.j.lockHeld(p) {
			p.State = PubDead
		}
		out = append(out, p)
	}
	return out, nil
}

// CowBytes is the disk space the CoW layer of p uses, as du counts it.
func CowBytes(p *Publication) int64 {
	if p.On != "" {
		return p.CowSize
	}
	return diskUsage(p.CowDir)
}

// diskUsage is the disk space the files under dir use, as du counts it.
func diskUsage(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// unpublishTimeout bounds how long Unpublish waits for a serve process to
// stop its instance and unmount.
const unpublishTimeout = 3 * time.Minute

// Unpublish ends publication id: it asks the serve process to stop (SIGTERM)
// and waits for it to finish; when that process is dead it cleans up itself
// (stops the orphaned instance, detaches the dead mount, removes the CoW
// layer). Ending a publication that is gone already does nothing.
func (pb *Publisher) Unpublish(ctx context.Context, id string) (*Publication, error) {
	p, err := pb.j.GetPublication(id)
	if err != nil {
		return nil, err
	}
	if p.State == PubGone {
		return p, nil
	}
	if p.On != "" {
		return pb.unpublishOn(ctx, p)
	}
	deadline := time.Now().Add(unpublishTimeout)
	tick := time.NewTicker(20 * time.Millisecond) // polling another process's lock
	defer tick.Stop()
	signalled := 0
	for {
		lock, err := pb.j.Lock(id)
		if err == nil {
			defer lock.Unlock()
			break
		}
		if !errors.Is(err, ErrRunning) {
			return p, err
		}
		if p, err = pb.j.GetPublication(id); err != nil {
			return nil, err
		}
		// The PID is the lock holder's: the lock is close-on-exec in it.
		if p.ServePID > 0 && signalled != p.ServePID {
			if err := pb.j.UpdatePublication(id, func(p *Publication) { p.Unpublishing = true }); err != nil {
				return p, err
			}
			if err := syscall.Kill(p.ServePID, syscall.SIGTERM); err == nil {
				signalled = p.ServePID
				pb.log.Info("asked the serve process to stop", "publication", id, "pid", p.ServePID)
			}
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("publication %s did not stop within %v; see %s", id, unpublishTimeout, pb.LogFile(id))
		}
		select {
		case <-ctx.Done():
			return p, ctx.Err()
		case <-tick.C:
		}
	}
	if p, err = pb.j.GetPublication(id); err != nil {
		return nil, err
	}
	if p.State == PubGone {
		return p, nil
	}
	// The serve process died without cleaning up, or ended with a failure.
	if err := pb.releaseMounts(ctx, p); err != nil {
		return p, err
	}
	p.InstancePID = 0
	pb.release(ctx, p, true)
	for _, d := range []string{p.BaseDir, p.CowDir} {
		if _, err := os.Lstat(d); err == nil {
			return p, fmt.Errorf("could not remove %s; see the log above", d)
		}
	}
	err = pb.j.UpdatePublication(id, func(q *Publication) { q.State, q.InstancePID, q.Mounted = PubGone, 0, false })
	if err != nil {
		return p, err
	}
	return pb.j.GetPublication(id)
}

func exists(name string) bool {
	_, err := os.Lstat(name)
	return err == nil
}
