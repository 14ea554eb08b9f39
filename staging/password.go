package staging

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/jackc/pgpassfile"
)

// ErrNoPassword is returned by ResolvePassword when no source has a password
// for the connection. The throwaway instance always asks for one.
var ErrNoPassword = errors.New("staging: no password given")

// maxPasswordFile bounds what is read of a password file or .pgpass, so a
// wrong path (a log, a device) is not read whole into memory.
const maxPasswordFile = 1 << 20

// PasswordOptions say where to look for the password of User, and which
// connection it is for (to pick the .pgpass line). The zero value of every
// field but User is usable.
type PasswordOptions struct {
	File     string // --password-file: the first line is the password
	User     string // PostgreSQL user; required
	Database string // database the password is looked up for; default "postgres"
	// Host and Port are matched against .pgpass lines; default "localhost"
	// (libpq's name for a local socket) and 5432. The instance's own port
	// is chosen at random, so a line can only name it with "*"; passing the
	// source server's port lets a user's existing line for it match.
	Host string
	Port int
	// Service is the connection service named by PGSERVICE
	// (LookupService); its password and passfile count. Zero: none.
	Service Service
	// Getenv reads PGPASSWORD and PGPASSFILE; default os.Getenv.
	Getenv func(string) string
	// Home holds .pgpass when PGPASSFILE is not set; default the user's home.
	Home string
	Log  *slog.Logger
}

func (o PasswordOptions) withDefaults() PasswordOptions {
	if o.Database == "" {
		o.Database = "postgres"
	}
	if o.Host == "" {
		o.Host = "localhost"
	}
	if o.Port == 0 {
		o.Port = 5432
	}
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.Home == "" {
		o.Home, _ = os.UserHomeDir()
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// ResolvePassword finds the password of o.User the way the PostgreSQL
// tools do, in this order: the password file given (o.File), the password
// of the service (o.Service, from PGSERVICE: libpq lets a service's
// settings win over the environment), PGPASSWORD, then the password file of
// libpq (the service's passfile, else PGPASSFILE, else ~/.pgpass) with
// libpq's permission rule. source says where the password came from, for
// the log; it never contains the password. When nothing has one, the error
// is ErrNoPassword.
func ResolvePassword(o PasswordOptions) (password, source string, err error) {
	if o.User == "" {
		return "", "", errors.New("staging: resolving a password needs the user name")
	}
	o = o.withDefaults()
	if o.File != "" {
		pw, err := readPasswordFile(o.File, o.Log)
		if err != nil {
			return "", "", err
		}
		return pw, "password file " + o.File, nil
	}
	if pw := o.Service.Settings["password"]; pw != "" {
		return pw, "service " + o.Service.Name + " in " + o.Service.File, nil
	}
	if pw := o.Getenv("PGPASSWORD"); pw != "" {
		return pw, "PGPASSWORD", nil
	}
	pass := o.Service.Settings["passfile"]
	if pass == "" {
		pass = o.Getenv("PGPASSFILE")
	}
	if pass == "" && o.Home != "" {
		pass = filepath.Join(o.Home, ".pgpass")
	}
	if pass != "" {
		pw, err := lookupPgpass(pass, o)
		if err != nil {
			return "", "", err
		}
		if pw != "" {
			return pw, "password file " + pass, nil
		}
	}
	where := "PGPASSWORD is not set"
	if o.Service.Name != "" {
		where = fmt.Sprintf("service %s has no password, %s", o.Service.Name, where)
	}
	if pass != "" {
		where += fmt.Sprintf(", and %s has no line for %s:%d:%s:%s", pass, o.Host, o.Port, o.Database, o.User)
	}
	return "", "", fmt.Errorf("%w for PostgreSQL user %q: %s (give --password-file, PGPASSWORD or a .pgpass line)", ErrNoPassword, o.User, where)
}

// readPasswordFile returns the first line of name. A file others can read
// is used, with a warning: secrets mounted by container runtimes are often
// 0644 and the user named the file explicitly.
func readPasswordFile(name string, log *slog.Logger) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", fmt.Errorf("reading the password file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("reading the password file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("password file %s is not a regular file", name)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		log.Warn("password file is accessible by group or others; it should be mode 0600 or less", "file", name, "mode", fi.Mode().Perm().String())
	}
	line, err := bufio.NewReader(io.LimitReader(f, maxPasswordFile)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("reading the password file: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", fmt.Errorf("password file %s: the first line is empty", name)
	}
	return pw, nil
}

// lookupPgpass reads a libpq password file with jackc/pgpassfile (the
// parser pgx uses) and returns the password of the first entry matching o
// ("": none). Like libpq, it ignores a missing file, and ignores with a
// warning one that is not a plain file or that group or others can access;
// pgpassfile itself checks no permission. At most maxPasswordFile bytes are
// read.
func lookupPgpass(name string, o PasswordOptions) (string, error) {
	f, err := os.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("password file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("password file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		o.Log.Warn("password file is not a plain file; ignored", "file", name)
		return "", nil
	}
	if fi.Mode().Perm()&0o077 != 0 {
		o.Log.Warn("password file has group or world access; ignored, as libpq does (permissions should be u=rw (0600) or less)", "file", name, "mode", fi.Mode().Perm().String())
		return "", nil
	}
	pf, err := pgpassfile.ParsePassfile(io.LimitReader(f, maxPasswordFile))
	if err != nil {
		return "", fmt.Errorf("password file %s: %w", name, err)
	}
	return pf.FindPassword(o.Host, strconv.Itoa(o.Port), o.Database, o.User), nil
}

// clientEnv returns the environment of a client program (pg_dump,
// pg_dumpall) that connects to an instance with password: this process's
// without any PG* variable that names a password or a connection service,
// plus PGPASSFILE naming a password file that only this OS user can read,
// in a directory made for it. The password is not in the environment, which other processes of the
// same user (and /proc/PID/environ) show. done removes the file and its
// directory; call it once the program has exited.
func clientEnv(password string) (env []string, done func(), err error) {
	if strings.ContainsAny(password, "\r\n") {
		return nil, nil, errors.New("staging: a password with a line break cannot be passed in a password file")
	}
	sweepPassDirs()
	// Mode 0700, a fresh random name, and this process's PID, so that a
	// later process removes it if this one is killed before done.
	dir, err := os.MkdirTemp("", passDirPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return nil, nil, fmt.Errorf("creating a private directory for the password file: %w", err)
	}
	done = func() { _ = os.RemoveAll(dir) }
	name := filepath.Join(dir, "pgpass")
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		done()
		return nil, nil, fmt.Errorf("creating the password file: %w", err)
	}
	esc := strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(password)
	_, err = f.WriteString("*:*:*:*:" + esc + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		done()
		return nil, nil, fmt.Errorf("writing the password file: %w", err)
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "PGPASSWORD", "PGPASSFILE":
			continue
		case "PGSERVICE", "PGSERVICEFILE", "PGSYSCONFDIR":
			// The service gave pgporter the user's credentials; its other
			// settings (sslmode, options, ...) are not for the instance.
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PGPASSFILE="+name, "PGCONNECT_TIMEOUT=30"), done, nil
}

// passDirPrefix begins the name of clientEnv's directories in os.TempDir,
// followed by the PID of the process that made it.
const passDirPrefix = "pgporter-pass-"

var sweepPassOnce sync.Once

// sweepPassDirs removes, once per process, the password files that
// processes killed before their done left in os.TempDir: a directory of
// this user's named for a PID that is no longer running.
func sweepPassDirs() {
	sweepPassOnce.Do(func() {
		tmp := os.TempDir()
		ents, _ := os.ReadDir(tmp)
		for _, e := range ents {
			rest, ok := strings.CutPrefix(e.Name(), passDirPrefix)
			if !ok || !e.IsDir() {
				continue // a link is not ours either
			}
			pidText, _, _ := strings.Cut(rest, "-")
			pid, err := strconv.Atoi(pidText)
			if err != nil || pid <= 0 || processExists(pid) {
				continue
			}
			dir := filepath.Join(tmp, e.Name())
			if fi, err := os.Lstat(dir); err == nil && fi.IsDir() {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == os.Geteuid() {
					_ = os.RemoveAll(dir)
				}
			}
		}
	})
}

// processExists reports whether a process pid exists (zombies included).
func processExists(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
