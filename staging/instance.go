package staging

import (
	"bufio"
	"context"
	hexpkg "encoding/hex"
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
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgporter/pgporter/internal/pgtool"
)

// ErrMissingPreload is returned when a data directory asks for preload
// libraries that are not installed here and the caller did not allow
// starting without them.
var ErrMissingPreload = errors.New("staging: shared_preload_libraries names libraries that are not installed")

// ErrHostLacks is matched by the error of StartInstance when this host
// lacks what the backed-up server's configuration needs to start (a locale
// of its lc_* settings).
var ErrHostLacks = errors.New("staging: this host lacks what the backup needs")

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

// InstanceOptions configure a throwaway instance. DataDir and RunDir are
// required.
type InstanceOptions struct {
	DataDir string // the restore point's data directory (a writable CoW mount)
	RunDir  string // private directory for the socket, hba file and log
	BinDir  string // default: pgtool.ServerBinDir for the data directory's version
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
	// LocalHBA authenticates socket connections by the local lines of the
	// backup's pg_hba.conf (ReadLocalHBA), written into RunDir with an
	// empty pg_ident.conf (user name maps are not used), instead of the
	// generated password-only file.
	LocalHBA *LocalHBA
	// Throwaway is for an instance whose writes are discarded (staging:
	// the CoW layer is dropped after the dumps): no fsync, no full-page
	// writes, and Stop shuts down immediately instead of writing a
	// checkpoint (reading a table sets hint bits, so a dump can dirty
	// every page it reads, and a shutdown checkpoint would write them all
	// through the mount).
	Throwaway bool
	// Recovery, if set, replays archived WAL to a target before the
	// instance opens (point-in-time); Instance.Recovered says where it
	// stopped.
	Recovery *Recovery
	// Standby opens the instance read-only, as a hot standby with no WAL
	// left to replay (standby.signal, once the crash recovery, the replay
	// of Recovery and the scrub of role settings are done), with
	// wal_log_hints=on. In recovery, PostgreSQL sets the hint bits that
	// reading a never-vacuumed table needs in its buffers without marking
	// the pages dirty when hints would need WAL (MarkBufferDirtyHint), so
	// a dump writes nothing back through the mount: each page that a seq
	// scan hinted was otherwise one synchronous FUSE write
	// (docs/BENCHMARKS.md, "Where the never-vacuumed export's time goes").
	// For instances that only read: an export's. ReadWriteInstanceEnv=1
	// in the environment turns it off.
	Standby bool
	// Started, if set, is called with the postmaster's PID as soon as it
	// runs, before the wait for it to accept connections (seconds, with a
	// crash recovery), so that the caller journals it: a caller killed in
	// that wait then leaves a server its retry can find and stop. An error
	// it returns stops the server and fails the start.
	Started func(pid int) error
}

// ReadWriteInstanceEnv, set to 1, turns InstanceOptions.Standby off: the
// instance opens read-write after its crash recovery, as before Standby
// existed, should a backup's settings keep a standby from opening.
const ReadWriteInstanceEnv = "PGPORTER_READ_WRITE_INSTANCE"

// standby reports whether the instance opens as a hot standby.
func (o InstanceOptions) standby() bool {
	return o.Standby && os.Getenv(ReadWriteInstanceEnv) != "1"
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
	// Neutralised lists the role and database settings (ALTER ROLE/DATABASE
	// … SET) that loaded code or ran programs and were removed from the
	// instance's catalog before it started, as "role/database: name=value"
	// ("*" for all). The instance's dumps do not carry them.
	Neutralised []string
	// Recovered is where the replay of InstanceOptions.Recovery stopped.
	Recovered *Reached

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
	// Messages in English: the checks read the locale a database lacks
	// out of the error that refuses a connection to it.
	"lc_messages=C",
}

// StartInstance prepares the data directory (drops a stale postmaster.pid
// and the backed-up server's recovery/standby signal files, so the server
// does crash recovery and comes up read-write, or with o.Standby a hot
// standby of its own making) and starts postgres, returning once it accepts
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
	if o.Recovery != nil {
		if err := o.Recovery.Validate(); err != nil {
			return nil, err
		}
	}
	ver, err := ReadPGVersion(o.DataDir)
	if err != nil {
		return nil, err
	}
	bin, err := pgtool.ServerBinDir(ver, o.BinDir)
	if err != nil {
		return nil, err
	}
	if err := checkConfLocales(o.DataDir); err != nil {
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
	if inPlaceTablespaces(o.DataDir) {
		// A backup of a server with tablespaces holds each one as a
		// directory where the server had a link (chunkstore's
		// Tablespaces); recovery refuses those unless allowed.
		args = append(args, "-c", "allow_in_place_tablespaces=on")
	}
	// A postgresql.conf may point data_directory elsewhere, and
	// external_pid_file at any file the postgres OS user may write.
	args = append(args, "-c", "data_directory="+o.DataDir, "-c", "external_pid_file="+filepath.Join(o.RunDir, "postgres.pid"))
	codeArgs, err := codeSettingArgs(bin)
	if err != nil {
		return nil, err
	}
	args = append(args, codeArgs...)
	preload, missing := preloadLibraries(bin, o.DataDir)
	if len(missing) > 0 {
		if !o.AllowMissingPreload {
			return nil, fmt.Errorf("%w: %s", ErrMissingPreload, missingPreloadHint(missing, ver))
		}
		in.Dropped = missing
		o.Log.Warn("starting without missing preload libraries", "missing", strings.Join(missing, ","))
	}
	// Always set: the backup's value never reaches the server, only the
	// installed libraries it names.
	args = append(args, "-c", "shared_preload_libraries="+strings.Join(preload, ","))
	if o.Recovery != nil {
		if err := o.Recovery.signal(o.DataDir, cred); err != nil {
			return nil, err
		}
		o.Log.Info("replaying the WAL archive", "target", o.Recovery.Target())
		r, err := recoverSingle(ctx, bin, in.LogFile, cred, append(slices.Clone(args), o.Recovery.settings()...))
		if err != nil {
			return nil, err
		}
		in.Recovered = &r
		o.Log.Info("recovered", "reached", r.String())
	}
	if in.Neutralised, err = scrubRoleSettings(ctx, bin, o.DataDir, in.LogFile, cred, args); err != nil {
		return nil, err
	}
	if len(in.Neutralised) > 0 {
		o.Log.Warn("removed role and database settings that load code or run programs", "settings", strings.Join(in.Neutralised, "; "))
	}
	if o.standby() {
		// After the single-user runs above, which must write.
		if err := writeSignal(o.DataDir, "standby.signal", cred); err != nil {
			return nil, err
		}
		args = append(args, "-c", "wal_log_hints=on")
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
	if o.Started != nil {
		if err := o.Started(cmd.Process.Pid); err != nil {
			_ = in.Stop(context.Background())
			return nil, err
		}
	}
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
	case o.KeepHBA && o.HBAFile != "", o.LocalHBA != nil && (o.KeepHBA || o.HBAFile != ""):
		return nil, errors.New("staging: KeepHBA, HBAFile and LocalHBA exclude each other")
	case o.LocalHBA != nil:
		hba, ident := filepath.Join(o.RunDir, "pg_hba.conf"), filepath.Join(o.RunDir, "pg_ident.conf")
		if err := os.WriteFile(hba, []byte(o.LocalHBA.Contents()), 0o644); err != nil {
			return nil, err
		}
		if err := os.WriteFile(ident, nil, 0o644); err != nil {
			return nil, err
		}
		return []string{"-c", "hba_file=" + hba, "-c", "ident_file=" + ident}, nil
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
	return fmt.Sprintf("host=%s port=%d dbname=%s user=%s sslmode=disable", in.SocketDir, in.Port, pgtool.Quote(db), pgtool.Quote(user))
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

var plainLibName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

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
	libdir := pkgLibDir(bin)
	keep = []string{}
	for _, lib := range strings.Split(val, ",") {
		lib = strings.Trim(strings.TrimSpace(lib), `"`)
		if lib == "" {
			continue
		}
		name := strings.TrimPrefix(lib, "$libdir/")
		// Only an installed library by its plain name: a path ("../x", "/x")
		// would load whatever file it points at.
		if !plainLibName.MatchString(name) {
			missing = append(missing, lib)
			continue
		}
		if _, err := os.Stat(filepath.Join(libdir, name+".so")); err == nil {
			keep = append(keep, name)
		} else {
			missing = append(missing, lib)
		}
	}
	return keep, missing
}

// pkgLibDir is $libdir of the server binaries in bin: where its
// extensions' libraries are.
func pkgLibDir(bin string) string {
	if out, err := exec.Command(filepath.Join(bin, "pg_config"), "--pkglibdir").Output(); err == nil {
		return strings.TrimSpace(string(out))
	}
	return filepath.Join(filepath.Dir(bin), "lib")
}

// missingPreloadHint lists the missing preload libraries, each with what
// installs it, and the way around.
func missingPreloadHint(missing []string, major string) string {
	parts := make([]string, len(missing))
	for i, lib := range missing {
		parts[i] = lib
		if p := DebianPackage(lib, major); p != "" {
			parts[i] += " (Debian package " + p + ")"
		}
	}
	return strings.Join(parts, ", ") + "; install them, or start without them (export --allow-missing-preload; what needs them then fails)"
}

// checkConfLocales fails with ErrHostLacks when an lc_* setting of
// dataDir's configuration names a locale this host lacks: the server
// would refuse to start ("invalid value for parameter lc_messages").
func checkConfLocales(dataDir string) error {
	conf := ConfLocales(dataDir)
	if len(conf) == 0 {
		return nil
	}
	installed, err := InstalledLocales()
	if err != nil {
		return nil // no 'locale' program: the server's own error says it
	}
	var lines []string
	for _, name := range []string{"lc_messages", "lc_monetary", "lc_numeric", "lc_time"} {
		if v, ok := conf[name]; ok && len(MissingLocales([]string{v}, installed)) > 0 {
			lines = append(lines, fmt.Sprintf("locale %q (%s in the backup's postgresql.conf) is not installed here: %s", v, name, MissingLocaleHint(v)))
		}
	}
	if len(lines) == 0 {
		return nil
	}
	return fmt.Errorf("%w:\n  - %s", ErrHostLacks, strings.Join(lines, "\n  - "))
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

// codeSettings are the server settings that load code or run programs,
// with the value that makes each do nothing. A backup may set any of them
// in its configuration files (overridden by the command line) or, for those
// a superuser may set, in pg_db_role_setting (which overrides the command
// line, so scrubRoleSettings removes them there). shared_preload_libraries
// is set apart: to the installed libraries the backup names.
var codeSettings = []struct{ name, value string }{
	{"session_preload_libraries", ""},
	{"local_preload_libraries", ""},
	{"dynamic_library_path", "$libdir"},
	{"extension_destdir", ""}, // prefixed to $libdir when loading a function's library
	{"jit_provider", "llvmjit"},
	{"jit", "off"},
	{"archive_command", ""},
	{"archive_library", ""},
	{"restore_command", ""},
	{"recovery_end_command", ""},
	{"archive_cleanup_command", ""},
	{"ssl_passphrase_command", ""},
	// Placeholders of procedural languages: code run when the language
	// starts in a session.
	{"plperl.on_init", ""},
	{"plperl.on_plperl_init", ""},
	{"plperl.on_plperlu_init", ""},
	{"pltcl.start_proc", ""},
	{"pltclu.start_proc", ""},
	{"plv8.start_proc", ""},
}

// codeSettingArgs returns the -c options that neutralise codeSettings,
// leaving out the core settings this server version does not know (an
// unknown one would stop it); placeholders (with a dot) are always known.
func codeSettingArgs(bin string) ([]string, error) {
	out, err := exec.Command(filepath.Join(bin, "postgres"), "--describe-config").Output()
	if err != nil {
		return nil, fmt.Errorf("listing the settings of %s: %w", filepath.Join(bin, "postgres"), err)
	}
	known := map[string]bool{}
	for line := range strings.Lines(string(out)) {
		name, _, _ := strings.Cut(line, "\t")
		known[name] = true
	}
	var args []string
	for _, s := range codeSettings {
		if known[s.name] || strings.Contains(s.name, ".") {
			args = append(args, "-c", s.name+"="+s.value)
		}
	}
	return args, nil
}

// scrubMarker prefixes the lines of the single-user run that scrubRoleSettings reads.
const scrubMarker = "pgporter-scrub:"

// scrubRoleSettings removes every codeSettings entry from the role and
// database settings (pg_db_role_setting) of the data directory's catalog,
// before any connection can apply them: PostgreSQL applies them at the
// start of every session, over the command line, and loads
// session_preload_libraries right after. It runs postgres in single-user
// mode, which ignores pg_db_role_setting, with the instance's own
// command-line settings. It returns what it removed.
func scrubRoleSettings(ctx context.Context, bin, dataDir, logFile string, cred *syscall.Credential, args []string) ([]string, error) {
	var names []string
	for _, s := range codeSettings {
		names = append(names, "'"+s.name+"'")
	}
	// A name matches as PostgreSQL reads it: case-insensitive, "-" as "_".
	bad := "lower(translate(split_part(s, '=', 1), '-', '_')) = ANY (ARRAY[" + strings.Join(names, ",") + "])"
	hex := func(sql string) string { return "encode(convert_to(" + sql + ", 'UTF8'), 'hex')" }
	// One statement a line; the hex keeps hostile names and values to one
	// line of output each. The last line proves the result, whatever came
	// before it (an aborted transaction prints no error on stdout).
	script := strings.Join([]string{
		"BEGIN",
		"SELECT '" + scrubMarker + "removed:' || " + hex("coalesce((SELECT rolname FROM pg_authid WHERE oid = r.setrole), '*') || '/' || coalesce((SELECT datname FROM pg_database WHERE oid = r.setdatabase), '*') || ': ' || s") + " FROM pg_db_role_setting r, unnest(r.setconfig) s WHERE " + bad,
		"UPDATE pg_db_role_setting SET setconfig = ARRAY(SELECT s FROM unnest(setconfig) s WHERE NOT " + bad + ") WHERE EXISTS (SELECT FROM unnest(setconfig) s WHERE " + bad + ")",
		"DELETE FROM pg_db_role_setting WHERE cardinality(setconfig) = 0",
		"COMMIT",
		"SELECT '" + scrubMarker + "left:' || count(*) FROM pg_db_role_setting r, unnest(r.setconfig) s WHERE " + bad,
		"",
	}, "\n")
	// pg_db_role_setting is shared by every database; any one will do.
	values, stderr, err := singleUser(ctx, bin, logFile, "removing role and database settings that load code", cred, args, script, scrubMarker)
	removed, left := []string(nil), ""
	for _, v := range values {
		switch {
		case strings.HasPrefix(v, "removed:"):
			b, derr := hexDecode(strings.TrimPrefix(v, "removed:"))
			if derr == nil {
				removed = append(removed, b)
			}
		case strings.HasPrefix(v, "left:"):
			left = strings.TrimPrefix(v, "left:")
		}
	}
	if err == nil && left == "0" {
		return removed, nil
	}
	lastErr := fmt.Sprintf("%v: %s", err, lastLines(stderr, 10))
	if err == nil {
		lastErr = fmt.Sprintf("%q settings are left: %s", left, lastLines(stderr, 10))
	}
	return nil, fmt.Errorf("removing role and database settings that load code, in single-user mode: %s", lastErr)
}

// singleUser runs script through a single-user postgres (with args, as
// cred) connected to template1, or to postgres or template0 when the one
// before does not exist, logging its stderr under what. It returns the
// values of its output lines that carry marker (the text after it, to a
// closing quote, as single-user mode prints a column), its stderr, and
// how it exited.
func singleUser(ctx context.Context, bin, logFile, what string, cred *syscall.Credential, args []string, script, marker string) (values []string, stderr string, err error) {
	for _, db := range []string{"template1", "postgres", "template0"} {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "postgres"), append(append([]string{"--single"}, args...), db)...)
		cmd.Stdin = strings.NewReader(script)
		cmd.Env = []string{"LANG=C.UTF-8", "PATH=/usr/bin:/bin"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if cred != nil {
			cmd.SysProcAttr.Credential = cred
		}
		var errOut strings.Builder
		cmd.Stderr = &errOut
		out, runErr := cmd.Output()
		appendLog(logFile, "single-user run "+what+":\n"+errOut.String())
		values, stderr, err = nil, errOut.String(), runErr
		for line := range strings.Lines(string(out)) {
			if _, v, ok := strings.Cut(line, marker); ok {
				v, _, _ = strings.Cut(v, "\"")
				values = append(values, strings.TrimRight(v, "\n"))
			}
		}
		if err == nil || !strings.Contains(stderr, "does not exist") {
			break
		}
	}
	return values, stderr, err
}

func hexDecode(s string) (string, error) {
	b, err := hexpkg.DecodeString(strings.TrimSpace(s))
	return string(b), err
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// appendLog adds text to the instance's log file, best effort.
func appendLog(name, text string) {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = f.WriteString(text)
}

// inPlaceTablespaces reports whether the data directory's pg_tblspc holds
// a directory rather than only links.
func inPlaceTablespaces(dataDir string) bool {
	ents, err := os.ReadDir(filepath.Join(dataDir, "pg_tblspc"))
	if err != nil {
		return false
	}
	return slices.ContainsFunc(ents, func(e os.DirEntry) bool { return e.IsDir() })
}
