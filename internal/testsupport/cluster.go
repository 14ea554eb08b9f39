package testsupport

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
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgporter/pgporter/internal/pgtool"
)

// pgOSUser is the OS user that owns and runs test clusters when the tests run
// as root; PostgreSQL refuses to run as root.
const pgOSUser = "postgres"

// superUser is the bootstrap superuser of every test cluster.
const superUser = "postgres"

// How long Stop waits after a fast shutdown request before an immediate one,
// and after that before SIGKILL.
const (
	fastStopTimeout      = 15 * time.Second
	immediateStopTimeout = 5 * time.Second
	startTimeout         = 30 * time.Second
)

// ClusterOptions configure NewCluster. The zero value is a trust-auth cluster
// on a free port with the C.UTF-8 locale.
type ClusterOptions struct {
	// BinDir selects the PostgreSQL binaries; empty means RequirePG's choice.
	BinDir string
	// Port is the server port; 0 picks a free TCP port on loopback, so a test
	// that turns on listen_addresses through Settings does not collide.
	Port int
	// Settings are extra postgresql.conf parameters, applied after (and so
	// overriding) the fixture's own.
	Settings map[string]string
	// Locale for initdb; empty means C.UTF-8 when installed, else C.
	Locale string
	// Auth is initdb's -A method: "trust" (default) or a password method such
	// as "scram-sha-256", which needs SuperPassword.
	Auth string
	// SuperPassword is the password of the postgres superuser.
	SuperPassword string
	// FreshInitdb runs initdb for this cluster alone instead of copying the
	// data directory that this test process's first initdb with the same
	// options produced: slower, but with a system identifier of its own.
	FreshInitdb bool
}

// Cluster is a throwaway PostgreSQL server for one test: its own data
// directory, a private Unix socket directory, no TCP listener unless Settings
// ask for one. Tests reach it through ConnString or the helpers below; client
// programs (pg_dump, pgbench, psql) run as the test's own user, the server as
// the postgres OS user when the test runs as root.
type Cluster struct {
	BinDir    string
	DataDir   string
	SocketDir string
	Port      int
	User      string // superuser name
	Password  string // superuser password; empty with trust auth
	LogFile   string // server stderr

	base string   // owns DataDir, SocketDir and LogFile
	cred *osCred  // nil when processes run as the current user
	env  []string // environment for server processes, PG* removed

	mu   sync.Mutex // guards proc, done
	proc *exec.Cmd  // the running postmaster, nil when stopped
	done chan error // receives proc's exit, then is closed
}

// osCred is the identity server processes run as.
type osCred struct{ uid, gid uint32 }

var (
	localeOnce sync.Once
	cUTF8      bool // whether the C.UTF-8 locale is installed
)

func defaultLocale() string {
	localeOnce.Do(func() {
		out, err := exec.Command("locale", "-a").Output()
		if err != nil {
			return
		}
		for l := range strings.FieldsSeq(string(out)) {
			if strings.EqualFold(l, "C.UTF-8") || strings.EqualFold(l, "C.utf8") {
				cUTF8 = true
			}
		}
	})
	if cUTF8 {
		return "C.UTF-8"
	}
	return "C"
}

// NewCluster creates and starts a cluster, and registers its stop and removal
// with t.Cleanup. It skips the test (or fails it in CI) when PostgreSQL is
// not installed. On failure to start it fails the test with the server log.
func NewCluster(t testing.TB, o ClusterOptions) *Cluster {
	t.Helper()
	if o.BinDir == "" {
		o.BinDir = RequirePG(t)
	}
	if o.Auth == "" {
		o.Auth = "trust"
	}
	if o.Auth != "trust" && o.SuperPassword == "" {
		t.Fatalf("testsupport: auth %q needs SuperPassword", o.Auth)
	}
	if o.Locale == "" {
		o.Locale = defaultLocale()
	}
	if o.Port == 0 {
		o.Port = freePort(t)
	}

	c := &Cluster{BinDir: o.BinDir, Port: o.Port, User: superUser, env: serverEnv()}
	if o.Auth != "trust" {
		c.Password = o.SuperPassword
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup(pgOSUser)
		if err != nil {
			t.Fatalf("testsupport: running as root needs the %s OS user: %v", pgOSUser, err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		c.cred = &osCred{uint32(uid), uint32(gid)}
	}

	// Not t.TempDir: that is root-owned 0700 under /tmp, which the postgres
	// user can neither enter nor write.
	sweepStaleClusters()
	base, err := os.MkdirTemp(clusterRoot, clusterDirPrefix)
	if err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	c.base = base
	t.Cleanup(func() { c.cleanup(t) })
	if err := os.WriteFile(filepath.Join(base, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	c.DataDir = filepath.Join(base, "data")
	c.SocketDir = filepath.Join(base, "sock")
	c.LogFile = filepath.Join(base, "postgres.log")
	if err := os.Mkdir(c.SocketDir, 0o700); err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	for _, p := range []string{base, c.SocketDir} {
		if err := c.chown(p); err != nil {
			t.Fatalf("testsupport: %v", err)
		}
	}

	args := []string{"-U", superUser, "-A", o.Auth, "-E", "UTF8", "--locale=" + o.Locale, "--no-sync"}
	if c.Password != "" {
		pw := filepath.Join(base, "pwfile")
		if err := os.WriteFile(pw, []byte(c.Password+"\n"), 0o600); err != nil {
			t.Fatalf("testsupport: %v", err)
		}
		if err := c.chown(pw); err != nil {
			t.Fatalf("testsupport: %v", err)
		}
		args = append(args, "--pwfile="+pw)
		defer os.Remove(pw)
	}
	if o.FreshInitdb {
		if out, err := c.RunAsPostgres(opContext(), "initdb", append([]string{"-D", c.DataDir}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("testsupport: initdb: %v\n%s", err, out)
		}
	} else {
		files, err := c.initdbTemplate(templateKey{c.BinDir, o.Locale, o.Auth, c.Password}, args)
		if err != nil {
			t.Fatalf("testsupport: %v", err)
		}
		if err := c.writeTemplate(c.DataDir, files); err != nil {
			t.Fatalf("testsupport: writing data directory: %v", err)
		}
	}

	conf := []string{
		"listen_addresses", "",
		"unix_socket_directories", c.SocketDir,
		"port", strconv.Itoa(c.Port),
		"fsync", "off",
	}
	for _, k := range slices.Sorted(maps.Keys(o.Settings)) {
		conf = append(conf, k, o.Settings[k])
	}
	var b strings.Builder
	b.WriteString("\n# testsupport.NewCluster\n")
	for i := 0; i < len(conf); i += 2 {
		fmt.Fprintf(&b, "%s = '%s'\n", conf[i], strings.ReplaceAll(conf[i+1], "'", "''"))
	}
	f, err := os.OpenFile(filepath.Join(c.DataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err == nil {
		_, err = f.WriteString(b.String())
		err = errors.Join(err, f.Close())
	}
	if err != nil {
		t.Fatalf("testsupport: writing postgresql.conf: %v", err)
	}

	c.Start(t)
	return c
}

// freePort returns a TCP port on loopback that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testsupport: finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// serverEnv is the environment without PG* variables, which would otherwise
// leak the caller's connection settings into the fixture.
func serverEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "PG") })
}

func (c *Cluster) chown(path string) error {
	if c.cred == nil {
		return nil
	}
	return os.Chown(path, int(c.cred.uid), int(c.cred.gid))
}

// RunAsPostgres returns a command running name (looked up in BinDir first,
// then in PATH) as the OS user that owns the cluster, in the cluster's base
// directory, without the caller's PG* variables. Use it for server-side
// programs (postgres, pg_ctl, pg_controldata); client programs can use
// ClientCmd.
func (c *Cluster) RunAsPostgres(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.binPath(name), args...)
	cmd.Dir = c.base
	cmd.Env = slices.Clone(c.env)
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: c.cred.uid, Gid: c.cred.gid},
		}
	}
	return cmd
}

// ClientCmd returns a command running the client program name (looked up in
// BinDir first, then in PATH) as the current user, with PGHOST, PGPORT,
// PGUSER, PGDATABASE (and PGPASSWORD) pointing at db on this cluster.
func (c *Cluster) ClientCmd(ctx context.Context, db, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.binPath(name), args...)
	cmd.Env = append(serverEnv(), c.Env(db)...)
	return cmd
}

// Env returns the libpq environment variables that connect to db.
func (c *Cluster) Env(db string) []string {
	env := []string{
		"PGHOST=" + c.SocketDir,
		"PGPORT=" + strconv.Itoa(c.Port),
		"PGUSER=" + c.User,
		"PGDATABASE=" + db,
		"PGCONNECT_TIMEOUT=10",
	}
	if c.Password != "" {
		env = append(env, "PGPASSWORD="+c.Password)
	}
	return env
}

func (c *Cluster) binPath(name string) string {
	if strings.ContainsRune(name, '/') {
		return name
	}
	if p := filepath.Join(c.BinDir, name); fileExists(p) {
		return p
	}
	return name
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// ConnString returns a libpq keyword/value connection string for db as the
// superuser over the private socket, with the password when there is one.
func (c *Cluster) ConnString(db string) string {
	return c.ConnStringAs(db, c.User, c.Password)
}

// ConnStringAs returns a connection string for db as user; password may be
// empty.
func (c *Cluster) ConnStringAs(db, user, password string) string {
	s := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable connect_timeout=10",
		pgtool.Quote(c.SocketDir), c.Port, pgtool.Quote(user), pgtool.Quote(db))
	if password != "" {
		s += " password=" + pgtool.Quote(password)
	}
	return s
}

// opContext is the context of the fixture's operations. Not t.Context: that
// ends before t.Cleanup functions run, and tests call these helpers from
// their cleanups too. go test -timeout bounds a hang.
func opContext() context.Context { return context.Background() }

// Conn opens a connection to db that is closed when the test ends.
func (c *Cluster) Conn(t testing.TB, db string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(opContext(), c.ConnString(db))
	if err != nil {
		t.Fatalf("testsupport: connecting to %q: %v", db, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn.Close(ctx)
	})
	return conn
}

// withConn runs f on a fresh connection to db and closes it.
func (c *Cluster) withConn(t testing.TB, db string, f func(*pgx.Conn) error) {
	t.Helper()
	conn, err := pgx.Connect(opContext(), c.ConnString(db))
	if err != nil {
		t.Fatalf("testsupport: connecting to %q: %v", db, err)
	}
	err = f(conn)
	closeCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn.Close(closeCtx)
	if err != nil {
		t.Fatal(err)
	}
}

// Exec runs sql in db; sql may hold several statements, which then run in one
// implicit transaction (the simple query protocol).
func (c *Cluster) Exec(t testing.TB, db, sql string) {
	t.Helper()
	c.withConn(t, db, func(conn *pgx.Conn) error {
		if _, err := conn.PgConn().Exec(opContext(), sql).ReadAll(); err != nil {
			return fmt.Errorf("testsupport: exec in %q: %w\n%s", db, err, sql)
		}
		return nil
	})
}

// Query runs sql in db and returns the first column of the first row as
// PostgreSQL renders it in text ("" for NULL). No rows fails the test.
func (c *Cluster) Query(t testing.TB, db, sql string) string {
	t.Helper()
	var out string
	c.withConn(t, db, func(conn *pgx.Conn) error {
		res, err := conn.PgConn().Exec(opContext(), sql).ReadAll()
		if err != nil {
			return fmt.Errorf("testsupport: query in %q: %w\n%s", db, err, sql)
		}
		for i := len(res) - 1; i >= 0; i-- { // the last statement's rows
			if len(res[i].FieldDescriptions) == 0 {
				continue
			}
			if len(res[i].Rows) == 0 || len(res[i].Rows[0]) == 0 {
				break
			}
			out = string(res[i].Rows[0][0])
			return nil
		}
		return fmt.Errorf("testsupport: query in %q returned no rows: %s", db, sql)
	})
	return out
}

// CreateDB creates database name, quoting it, so any name works.
func (c *Cluster) CreateDB(t testing.TB, name string) {
	t.Helper()
	c.Exec(t, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
}

// PgBench fills db with pgbench's tables at scale (pgbench -i -s scale -q).
func (c *Cluster) PgBench(t testing.TB, db string, scale int) {
	t.Helper()
	cmd := c.ClientCmd(opContext(), db, "pgbench", "-i", "-s", strconv.Itoa(scale), "-q")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("testsupport: pgbench -i -s %d %q: %v\n%s", scale, db, err, out)
	}
}

// Dump runs pg_dump -Fd -Z0 -j jobs --no-sync on db into dir, which must not
// exist. pg_dump runs as the test's user, so the dump belongs to the test and
// can be changed or removed freely.
func (c *Cluster) Dump(t testing.TB, db, dir string, jobs int) {
	t.Helper()
	if _, err := os.Lstat(dir); err == nil {
		t.Fatalf("testsupport: dump directory %s already exists", dir)
	}
	jobs = max(jobs, 1)
	cmd := c.ClientCmd(opContext(), db, "pg_dump", "-Fd", "-Z0", "-j", strconv.Itoa(jobs), "--no-sync", "-f", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("testsupport: pg_dump %q: %v\n%s", db, err, out)
	}
}

// PID returns the postmaster's process ID, or 0 when the cluster is stopped.
func (c *Cluster) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return 0
	}
	return c.proc.Process.Pid
}

// Start starts the stopped cluster and returns once it accepts connections.
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	if err := c.start(opContext()); err != nil {
		t.Fatalf("testsupport: starting PostgreSQL: %v\n%s", err, c.logTail())
	}
}

func (c *Cluster) start(ctx context.Context) error {
	c.mu.Lock()
	if c.proc != nil {
		c.mu.Unlock()
		return errors.New("already running")
	}
	logf, err := os.OpenFile(c.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	// Not CommandContext: the server outlives the context of the call that
	// starts it; Stop and the cleanup end it.
	cmd := c.RunAsPostgres(context.Background(), "postgres", "-D", c.DataDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// If the test binary dies without cleanup (a timeout panic), the server
	// shuts down immediately instead of lingering.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	err = cmd.Start()
	logf.Close()
	if err != nil {
		c.mu.Unlock()
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); close(done) }()
	c.proc, c.done = cmd, done
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := c.waitReady(ctx, done); err != nil {
		c.stop()
		return err
	}
	return nil
}

// waitReady polls with connection attempts until one succeeds, the server
// exits or ctx ends. A refused connection costs microseconds, so the poll
// interval is short.
func (c *Cluster) waitReady(ctx context.Context, exited <-chan error) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	cfg, err := pgx.ParseConfig(c.ConnString("postgres"))
	if err != nil {
		return err
	}
	for {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.ConnectConfig(attempt, cfg)
		cancel()
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case err := <-exited:
			return fmt.Errorf("postgres exited during startup: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last attempt: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// Stop shuts the server down (fast, then immediate, then SIGKILL) and waits
// for it to exit. The data directory stays; Start starts it again.
func (c *Cluster) Stop(t testing.TB) {
	t.Helper()
	if err := c.stop(); err != nil {
		t.Fatalf("testsupport: stopping PostgreSQL: %v", err)
	}
}

// stop is Stop without a test; a stopped cluster is a no-op.
func (c *Cluster) stop() error {
	c.mu.Lock()
	proc, done := c.proc, c.done
	c.mu.Unlock()
	if proc == nil {
		return nil
	}
	// The signals of pg_ctl stop -m fast and -m immediate, sent directly: the
	// postmaster is our child, so we also reap it.
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

func (c *Cluster) cleanup(t testing.TB) {
	if err := c.stop(); err != nil {
		t.Errorf("testsupport: %v", err)
	}
	if t.Failed() {
		if tail := c.logTail(); tail != "" {
			t.Logf("PostgreSQL log (%s):\n%s", c.LogFile, tail)
		}
	}
	if err := os.RemoveAll(c.base); err != nil {
		t.Errorf("testsupport: removing cluster: %v", err)
	}
}

// logTail returns the end of the server log.
func (c *Cluster) logTail() string {
	b, err := os.ReadFile(c.LogFile)
	if err != nil {
		return ""
	}
	const max = 4 << 10
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}
