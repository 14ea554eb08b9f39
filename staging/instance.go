package staging

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrMissingPreload is returned when a data directory asks for preload
// libraries that are not installed here and the caller did not allow
// starting without them.
var ErrMissingPreload = errors.New("staging: shared_preload_libraries names libraries that are not installed")

// ReadPGVersion returns the major version in dataDir/PG_VERSION ("15").
func ReadPGVersion(dataDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION"))
	if err != nil {
		return "", fmt.Errorf("reading PG_VERSION: %w (is %s a PostgreSQL data directory?)", err, dataDir)
	}
	v := strings.TrimSpace(string(b))
	if _, err := strconv.Atoi(v); err != nil {
		return "", fmt.Errorf("PG_VERSION of %s says %q, not a major version", dataDir, v)
	}
	return v, nil
}

// FindBinDir returns the directory of the PostgreSQL server binaries of a
// major version: configured (if set), /usr/lib/postgresql/MAJOR/bin, or
// pg_config --bindir when that is the same major version.
func FindBinDir(major, configured string) (string, error) {
	has := func(d string) bool {
		fi, err := os.Stat(filepath.Join(d, "postgres"))
		return err == nil && fi.Mode()&0o111 != 0
	}
	if configured != "" {
		if has(configured) {
			return configured, nil
		}
		return "", fmt.Errorf("no postgres binary in %s", configured)
	}
	if d := filepath.Join("/usr/lib/postgresql", major, "bin"); has(d) {
		return d, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if v, err := exec.Command(filepath.Join(d, "postgres"), "--version").Output(); err == nil && has(d) {
			if m := regexp.MustCompile(`(\d+)`).FindString(string(v)); m == major {
				return d, nil
			}
		}
	}
	return "", fmt.Errorf("PostgreSQL %s server binaries are not installed here: install the Debian package postgresql-%s (or pass the binaries' directory)", major, major)
}

// InstanceOptions configure a throwaway instance. DataDir and RunDir are
// required.
type InstanceOptions struct {
	DataDir string // the restore point's data directory (a writable CoW mount)
	RunDir  string // private directory for the socket, hba file and log
	BinDir  string // default: FindBinDir for the data directory's version
	OSUser  string // OS user that runs postgres; default "postgres"
	// AllowMissingPreload starts without preload libraries that are not
	// installed here instead of failing.
	AllowMissingPreload bool
	Log                 *slog.Logger

	// Listen is the server's listen_addresses. Empty (the staging default)
	// means no TCP listener: only the private socket.
	Listen string
	// Port is the server's port; 0 picks a free one.
	Port int
	// KeepHBA makes the server authenticate with the data directory's own
	// pg_hba.conf (and pg_ident.conf), as the backed-up server did.
	KeepHBA bool
	// HBAFile is a client authentication file to use instead of the
	// generated one. Neither it nor KeepHBA set (the staging default): a
	// password over the private socket only.
	HBAFile string
	// Throwaway is for an instance whose writes are discarded (staging:
	// the CoW layer is dropped after the dumps): no fsync, no full-page
	// writes, and Stop shuts down immediately instead of writing a
	// checkpoint (reading a table sets hint bits, so a dump can dirty
	// every page it reads, and a shutdown checkpoint would write them all
	// through the mount).
	Throwaway bool
}

// Instance is a PostgreSQL server started on a restore point: a private
// socket directory, no archiving or replication, and by default no TCP
// listener.
type Instance struct {
	BinDir    string
	DataDir   string
	SocketDir string
	Port      int
	Version   string
	LogFile   string
	// Dropped lists preload libraries left out because they are missing.
	Dropped []string

	cmd  *exec.Cmd
	done chan error // receives the exit of the server process once

	throwaway bool
	log       *slog.Logger
}

// Settings a crash-consistent image may carry that would break, or leak out
// of, a throwaway start; each is overridden on the command line (which wins
// over postgresql.conf and postgresql.auto.conf).
// throwawaySettings make an instance whose data is discarded cheaper.
var throwawaySettings = []string{"fsync=off", "full_page_writes=off", "synchronous_commit=off"}

var safeSettings = []string{
	"listen_addresses=",
	"archive_mode=off",
	"archive_command=",
	"restore_command=",
	"primary_conninfo=",
	"primary_slot_name=",
	"recovery_target=",
	"recovery_target_name=",
	"recovery_target_time=",
	"recovery_target_xid=",
	"recovery_target_lsn=",
	"max_wal_senders=0",
	"max_replication_slots=0",
	"autovacuum=off",
	"shared_buffers=128MB",
	"logging_collector=off",
	"log_destination=stderr",
	"ssl=off",
	"hot_standby=on",
	"synchronous_standby_names=",
}

// StartInstance prepares the data directory (drops a stale postmaster.pid
// and the recovery/standby signal files, so the server does crash recovery
// and comes up read-write) and starts postgres, returning once it accepts
// connections.
func StartInstance(ctx context.Context, o InstanceOptions) (*Instance, error) {
	if o.DataDir == "" || o.RunDir == "" {
		return nil, errors.New("staging: an instance needs a data directory and a run directory")
	}
	if o.OSUser == "" {
		o.OSUser = "postgres"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	ver, err := ReadPGVersion(o.DataDir)
	if err != nil {
		return nil, err
	}
	bin, err := FindBinDir(ver, o.BinDir)
	if err != nil {
		return nil, err
	}
	cred, err := osCredential(o.OSUser)
	if err != nil {
		return nil, err
	}
	in := &Instance{BinDir: bin, DataDir: o.DataDir, Version: ver, SocketDir: filepath.Join(o.RunDir, "sock"), LogFile: filepath.Join(o.RunDir, "postgres.log"), log: o.Log}
	if err := os.MkdirAll(in.SocketDir, 0o700); err != nil {
		return nil, err
	}
	for _, d := range []string{o.RunDir, in.SocketDir} {
		if cred != nil {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				return nil, err
			}
		}
	}
	for _, name := range []string{"postmaster.pid", "recovery.signal", "standby.signal"} {
		if err := os.Remove(filepath.Join(o.DataDir, name)); err == nil {
			o.Log.Info("removed leftover of the backed-up server", "file", name)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("removing %s: %w", name, err)
		}
	}
	hbaArgs, err := hbaSettings(o)
	if err != nil {
		return nil, err
	}
	args := append([]string{"-D", o.DataDir, "-c", "unix_socket_directories=" + in.SocketDir}, hbaArgs...)
	if in.Port = o.Port; in.Port == 0 {
		if in.Port, err = freePort(); err != nil {
			return nil, err
		}
	}
	args = append(args, "-c", "port="+strconv.Itoa(in.Port))
	for _, s := range safeSettings {
		if o.Listen != "" && strings.HasPrefix(s, "listen_addresses=") {
			s = "listen_addresses=" + o.Listen
		}
		args = append(args, "-c", s)
	}
	if o.Throwaway {
		in.throwaway = true
		for _, s := range throwawaySettings {
			args = append(args, "-c", s)
		}
	}
	args = append(args, minimumSettings(bin, o.DataDir)...)
	preload, missing := preloadLibraries(bin, o.DataDir)
	if len(missing) > 0 {
		if !o.AllowMissingPreload {
			return nil, fmt.Errorf("%w: %s (install them, or allow starting without them)", ErrMissingPreload, strings.Join(missing, ", "))
		}
		in.Dropped = missing
		o.Log.Warn("starting without missing preload libraries", "missing", strings.Join(missing, ","))
	}
	if preload != nil {
		args = append(args, "-c", "shared_preload_libraries="+strings.Join(preload, ","))
	}
	logf, err := os.OpenFile(in.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = []string{"LANG=C.UTF-8", "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if cred != nil {
		cmd.SysProcAttr.Credential = cred
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting postgres: %w", err)
	}
	in.cmd, in.done = cmd, make(chan error, 1)
	go func() { in.done <- cmd.Wait() }()
	o.Log.Info("instance starting", "pid", cmd.Process.Pid, "version", ver, "socket", in.SocketDir, "port", in.Port)
	if err := in.waitReady(ctx); err != nil {
		_ = in.Stop(context.Background())
		return nil, err
	}
	return in, nil
}

// hbaSettings returns the command-line settings that choose the client
// authentication files, writing the generated one into o.RunDir if needed.
func hbaSettings(o InstanceOptions) ([]string, error) {
	switch {
	case o.KeepHBA && o.HBAFile != "":
		return nil, errors.New("staging: KeepHBA and HBAFile exclude each other")
	case o.KeepHBA:
		// Set explicitly: a packaged postgresql.conf often points hba_file
		// at /etc, which is not in the backup.
		hba := filepath.Join(o.DataDir, "pg_hba.conf")
		if _, err := os.Stat(hba); err != nil {
			return nil, fmt.Errorf("the restore point has no pg_hba.conf of its own (%w); use a generated one instead", err)
		}
		args := []string{"-c", "hba_file=" + hba}
		if ident := filepath.Join(o.DataDir, "pg_ident.conf"); fileExists(ident) {
			args = append(args, "-c", "ident_file="+ident)
		}
		return args, nil
	case o.HBAFile != "":
		return []string{"-c", "hba_file=" + o.HBAFile}, nil
	}
	hba := filepath.Join(o.RunDir, "pg_hba.conf")
	// Local socket only, and a password: the credentials checked are the
	// user's as of the backup. md5 also accepts SCRAM-stored passwords.
	if err := os.WriteFile(hba, []byte("local all all md5\n"), 0o644); err != nil {
		return nil, err
	}
	return []string{"-c", "hba_file=" + hba}, nil
}

func fileExists(name string) bool {
	_, err := os.Stat(name)
	return err == nil
}

// Wait blocks until the server exits, returning its exit status, or until
// ctx is done. It may be called with Stop and more than once.
func (in *Instance) Wait(ctx context.Context) error {
	select {
	case err := <-in.done:
		in.done <- err
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PID is the postmaster's process ID.
func (in *Instance) PID() int { return in.cmd.Process.Pid }

// ConnConfig returns connection parameters for user on database db.
func (in *Instance) ConnString(db, user string) string {
	return fmt.Sprintf("host=%s port=%d dbname=%s user=%s sslmode=disable", in.SocketDir, in.Port, quoteConn(db), quoteConn(user))
}

func quoteConn(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// waitReady tries to connect until the server answers. Any answer from the
// server (even a refused password) means it is up; only "starting up" and
// connection failures mean wait. It never sleeps longer than a poll tick.
func (in *Instance) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute) // WAL replay of a busy image can take long
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := pgx.Connect(ctx, in.ConnString("postgres", "pgporter_probe")+" connect_timeout=2")
		if err == nil {
			c.Close(ctx)
			return nil
		}
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code != "57P03" { // 57P03: cannot_connect_now (starting up, recovering)
			return nil
		}
		select {
		case err := <-in.done:
			in.done <- err
			return fmt.Errorf("postgres exited during startup (%v): %s", err, LogTail(in.LogFile, 15))
		case <-ctx.Done():
			return fmt.Errorf("waiting for postgres to accept connections: %w; log: %s", ctx.Err(), LogTail(in.LogFile, 15))
		case <-tick.C:
		}
	}
}

// Stop shuts the server down: fast (SIGINT), then immediate (SIGQUIT) if it
// has not exited after a while, then SIGKILL. It is safe to call twice.
// firstStop skips the fast shutdown of a throwaway instance: its
// checkpoint would write pages nobody will read.
func (in *Instance) firstStop() int {
	if in.throwaway {
		return 1
	}
	return 0
}

func (in *Instance) Stop(ctx context.Context) error {
	if in.cmd == nil {
		return nil
	}
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGINT, 30 * time.Second}, {syscall.SIGQUIT, 10 * time.Second}, {syscall.SIGKILL, time.Minute}}[in.firstStop():] {
		if err := in.cmd.Process.Signal(step.sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("signalling postgres: %w", err)
		}
		t := time.NewTimer(step.wait)
		select {
		case err := <-in.done:
			t.Stop()
			in.done <- err
			in.log.Info("instance stopped", "pid", in.cmd.Process.Pid, "signal", step.sig.String())
			return nil
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return errors.New("postgres did not exit after SIGKILL")
}

func osCredential(name string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil // run as ourselves: PostgreSQL refuses only root
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("OS user %s for PostgreSQL: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func freePort() (int, error) {
	// The instance has no TCP listener; the port only names the socket file.
	// A free TCP port keeps it unique among instances here anyway.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// minimumSettings raises the settings that a server replaying WAL must not
// set lower than the server that wrote it, to the values in pg_control.
func minimumSettings(bin, dataDir string) []string {
	out, err := exec.Command(filepath.Join(bin, "pg_controldata"), dataDir).Output()
	if err != nil {
		return nil
	}
	keys := map[string]string{
		"max_connections setting":      "max_connections",
		"max_worker_processes setting": "max_worker_processes",
		"max_prepared_xacts setting":   "max_prepared_transactions",
		"max_locks_per_xact setting":   "max_locks_per_transaction",
	}
	var args []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		if name, ok := keys[strings.TrimSpace(k)]; ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				if name == "max_connections" {
					n = max(n, 20)
				}
				args = append(args, "-c", fmt.Sprintf("%s=%d", name, n))
			}
		}
	}
	return args
}

var preloadRe = regexp.MustCompile(`(?m)^\s*shared_preload_libraries\s*=?\s*'([^']*)'`)

// preloadLibraries reads shared_preload_libraries from the configuration
// files (the last setting wins, postgresql.auto.conf last) and splits it
// into the libraries installed here and those missing. A nil keep means
// the setting need not be overridden.
func preloadLibraries(bin, dataDir string) (keep, missing []string) {
	var val string
	found := false
	for _, f := range []string{"postgresql.conf", "postgresql.auto.conf"} {
		b, err := os.ReadFile(filepath.Join(dataDir, f))
		if err != nil {
			continue
		}
		for _, m := range preloadRe.FindAllStringSubmatch(string(b), -1) {
			val, found = m[1], true
		}
	}
	if !found || strings.TrimSpace(val) == "" {
		return nil, nil
	}
	libdir := ""
	if out, err := exec.Command(filepath.Join(bin, "pg_config"), "--pkglibdir").Output(); err == nil {
		libdir = strings.TrimSpace(string(out))
	} else {
		libdir = filepath.Join(filepath.Dir(bin), "lib")
	}
	keep = []string{}
	for _, lib := range strings.Split(val, ",") {
		lib = strings.Trim(strings.TrimSpace(lib), `"`)
		if lib == "" {
			continue
		}
		name := strings.TrimPrefix(lib, "$libdir/")
		if _, err := os.Stat(filepath.Join(libdir, name+".so")); err == nil {
			keep = append(keep, lib)
		} else {
			missing = append(missing, lib)
		}
	}
	return keep, missing
}

// LogTail returns the last n lines of a file, for error messages.
func LogTail(name string, n int) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
