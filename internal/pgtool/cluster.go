package pgtool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ClusterOptions configure NewCluster.
type ClusterOptions struct {
	// BinDir holds the server binaries; "" means NewestServerBinDir.
	BinDir string
	// Base is the directory that holds the data directory (data), the
	// socket directory (sock) and the log (postgres.log). It is made if
	// missing and given to the OS user.
	Base string
	// Port names the socket (and the TCP port, should Settings turn a
	// listener on); 0 picks a free loopback port.
	Port int
	// Password is the superuser's: initdb then sets password (scram)
	// authentication. "" means trust.
	Password string
	// Locale for initdb; "" means C.
	Locale string
	// OSUser runs the server programs when this process is root, which
	// PostgreSQL refuses to be; "" means postgres.
	OSUser string
	// Settings are given to postgres with -c at every start, after (and so
	// over) the cluster's own: no TCP listener, the private socket, Port.
	Settings map[string]string
	// DieWithParent makes the server shut down at once should this process
	// die without stopping it (tests).
	DieWithParent bool
}

// SuperUser is the bootstrap superuser of every Cluster.
const SuperUser = "postgres"

// Cluster is a PostgreSQL server that pgporter makes for itself (the demo's
// sample, the tests' fixtures, the benchmarks' sources): its data
// directory, a private socket directory and its log under one base
// directory, the server run as an OS user other than root.
type Cluster struct {
	BinDir, Base, DataDir, SocketDir, LogFile string
	Port                                      int
	User, Password                            string
	Locale                                    string
	Settings                                  map[string]string

	cred          *syscall.Credential // nil: server programs run as this process
	dieWithParent bool

	mu   sync.Mutex // guards proc, done
	proc *exec.Cmd  // the running postmaster, nil when stopped
	done chan error // receives proc's exit, then is closed
}

// How long Stop waits after a fast shutdown request before an immediate
// one, after that before SIGKILL, and how long Start waits for connections.
const (
	fastStopTimeout      = 30 * time.Second
	immediateStopTimeout = 10 * time.Second
	startTimeout         = time.Minute
)

// NewCluster prepares a cluster's directories under o.Base. It runs no
// program: Initdb makes the data directory, Start starts the server.
func NewCluster(o ClusterOptions) (*Cluster, error) {
	if o.Base == "" {
		return nil, errors.New("pgtool: a cluster needs a base directory")
	}
	c := &Cluster{BinDir: o.BinDir, Base: o.Base, DataDir: filepath.Join(o.Base, "data"), SocketDir: filepath.Join(o.Base, "sock"),
		LogFile: filepath.Join(o.Base, "postgres.log"), Port: o.Port, User: SuperUser, Password: o.Password, Locale: o.Locale,
		Settings: maps.Clone(o.Settings), dieWithParent: o.DieWithParent}
	if c.BinDir == "" {
		d, err := NewestServerBinDir()
		if err != nil {
			return nil, err
		}
		c.BinDir = d
	}
	if c.Locale == "" {
		c.Locale = "C"
	}
	if c.Port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		c.Port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	cred, err := ServerCredential(o.OSUser)
	if err != nil {
		return nil, err
	}
	c.cred = cred
	if err := os.MkdirAll(c.Base, 0o755); err != nil {
		return nil, err
	}
	if err := os.Mkdir(c.SocketDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	for _, p := range []string{c.Base, c.SocketDir} {
		if err := c.Chown(p); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// ServerCredential returns the identity that PostgreSQL's server programs
// run with: nil (this process's) unless this process is root, which
// PostgreSQL refuses to be; then osUser's ("" means postgres).
func ServerCredential(osUser string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	if osUser == "" {
		osUser = "postgres"
	}
	u, err := user.Lookup(osUser)
	if err != nil {
		return nil, fmt.Errorf("the %s OS user runs PostgreSQL, which refuses root: %w", osUser, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// Chown gives path to the OS user that runs the server, if it is not this
// process's.
func (c *Cluster) Chown(path string) error {
	if c.cred == nil {
		return nil
	}
	return os.Chown(path, int(c.cred.Uid), int(c.cred.Gid))
}

// Initdb makes a data directory for the cluster in dir (c.DataDir, or
// elsewhere to copy from): UTF8, c.Locale, SuperUser with c.Password (scram)
// or trust, no sync.
func (c *Cluster) Initdb(ctx context.Context, dir string) error {
	args := []string{"-D", dir, "-U", c.User, "-E", "UTF8", "--locale=" + c.Locale, "--no-sync"}
	if c.Password == "" {
		args = append(args, "--auth=trust")
	} else {
		pw := filepath.Join(c.Base, "pwfile")
		if err := os.WriteFile(pw, []byte(c.Password+"\n"), 0o600); err != nil {
			return err
		}
		defer os.Remove(pw)
		if err := c.Chown(pw); err != nil {
			return err
		}
		args = append(args, "--auth=scram-sha-256", "--pwfile="+pw)
	}
	if out, err := c.ServerCmd(ctx, "initdb", args...).CombinedOutput(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("initdb: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ServerCmd returns a command running the server-side program name (of
// BinDir, or a path) as the cluster's OS user, in Base, with none of this
// process's PG* variables.
func (c *Cluster) ServerCmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.binPath(name), args...)
	cmd.Dir = c.Base
	cmd.Env = cleanEnv()
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd
}

// ClientCmd returns a command running the client program name (of BinDir,
// else PATH, or a path) as this process's user, connected to db through
// the libpq environment (Env).
func (c *Cluster) ClientCmd(ctx context.Context, db, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.binPath(name), args...)
	cmd.Env = c.ClientEnv(db)
	return cmd
}

// ClientEnv is this process's environment, PG* variables replaced by Env's.
func (c *Cluster) ClientEnv(db string) []string { return append(cleanEnv(), c.Env(db)...) }

// Env returns the libpq environment variables that connect to db as the
// superuser.
func (c *Cluster) Env(db string) []string {
	env := []string{"PGHOST=" + c.SocketDir, "PGPORT=" + strconv.Itoa(c.Port), "PGUSER=" + c.User, "PGDATABASE=" + db, "PGCONNECT_TIMEOUT=10"}
	if c.Password != "" {
		env = append(env, "PGPASSWORD="+c.Password)
	}
	return env
}

// cleanEnv is this process's environment without PG* variables, which
// would point programs elsewhere.
func cleanEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "PG") })
}

func (c *Cluster) binPath(name string) string {
	if strings.ContainsRune(name, '/') {
		return name
	}
	if p := filepath.Join(c.BinDir, name); executable(p) {
		return p
	}
	return name
}

// ConnString returns a keyword/value connection string for db as the
// superuser over the private socket.
func (c *Cluster) ConnString(db string) string { return c.ConnStringAs(db, c.User, c.Password) }

// ConnStringAs returns a connection string for db as user; password may
// be empty.
func (c *Cluster) ConnStringAs(db, user, password string) string {
	s := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=10", Quote(c.SocketDir), c.Port, Quote(user), Quote(db))
	if password != "" {
		s += " password=" + Quote(password)
	}
	return s
}

// PID returns the postmaster's process ID, 0 when stopped.
func (c *Cluster) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return 0
	}
	return c.proc.Process.Pid
}

// Start starts the server and returns once it accepts connections. The
// server runs in a process group of its own: a Ctrl-C at the terminal
// reaches its owner, which stops it in order.
func (c *Cluster) Start(ctx context.Context) error {
	c.mu.Lock()
	if c.proc != nil {
		c.mu.Unlock()
		return errors.New("postgres is running already")
	}
	logf, err := os.OpenFile(c.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	set := map[string]string{"listen_addresses": "", "unix_socket_directories": c.SocketDir, "port": strconv.Itoa(c.Port)}
	maps.Copy(set, c.Settings)
	args := []string{"-D", c.DataDir}
	for _, k := range slices.Sorted(maps.Keys(set)) {
		args = append(args, "-c", k+"="+set[k])
	}
	// Not bound to ctx: the server outlives the call that starts it; Stop
	// ends it.
	cmd := c.ServerCmd(context.Background(), "postgres", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if c.dieWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		c.mu.Unlock()
		return fmt.Errorf("starting postgres: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); close(done) }()
	c.proc, c.done = cmd, done
	c.mu.Unlock()

	if err := c.waitReady(ctx, done); err != nil {
		return errors.Join(err, c.Stop())
	}
	return nil
}

// waitReady connects until the server accepts, answers with an error other
// than "starting up" (an error, returned), exits, or a minute passes. A
// refused connection costs microseconds, so the poll is short.
func (c *Cluster) waitReady(ctx context.Context, exited <-chan error) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	cfg, err := pgx.ParseConfig(c.ConnString("postgres"))
	if err != nil {
		return err
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.ConnectConfig(attempt, cfg)
		cancelAttempt()
		if err == nil {
			return conn.Close(ctx)
		}
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code != "57P03" { // anything but "starting up" is an answer
			return fmt.Errorf("connecting to the new server: %w", err)
		}
		select {
		case err := <-exited:
			return fmt.Errorf("postgres exited during startup (%v); log %s:\n%s", err, c.LogFile, c.LogTail(4<<10))
		case <-ctx.Done():
			return fmt.Errorf("postgres did not accept connections: %w (last attempt: %v); log %s:\n%s", ctx.Err(), err, c.LogFile, c.LogTail(4<<10))
		case <-tick.C:
		}
	}
}

// Stop shuts the server down by its PID (fast, then immediate, then
// SIGKILL) and waits for it. The data directory stays; Start starts it
// again. A stopped cluster is left as it is.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	proc, done := c.proc, c.done
	c.mu.Unlock()
	if proc == nil {
		return nil
	}
	var err error
	for _, s := range []struct {
		sig     syscall.Signal
		timeout time.Duration
	}{{syscall.SIGINT, fastStopTimeout}, {syscall.SIGQUIT, immediateStopTimeout}, {syscall.SIGKILL, time.Minute}} {
		if e := proc.Process.Signal(s.sig); e != nil && !errors.Is(e, os.ErrProcessDone) {
			err = e
		}
		timer := time.NewTimer(s.timeout)
		select {
		case <-done:
			timer.Stop()
			c.mu.Lock()
			c.proc, c.done = nil, nil
			c.mu.Unlock()
			return nil
		case <-timer.C:
		}
	}
	return fmt.Errorf("postgres (pid %d) did not exit: %v", proc.Process.Pid, err)
}

// LogTail returns at most max bytes of the end of the server log, from a
// line start.
func (c *Cluster) LogTail(max int) string {
	b, err := os.ReadFile(c.LogFile)
	if err != nil {
		return ""
	}
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}
