package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/internal/pgtool"
	"github.com/pgporter/pgporter/mover"
	"github.com/spf13/cobra"
)

// restoreOptions configure one 'pgporter restore'.
type restoreOptions struct {
	Dir        string   // the dump directory, with pgporter-manifest.json
	DBName     string   // the database the dump is restored into
	Jobs       int      // pg_restore -j; default min(NumCPU, 4)
	Create     bool     // create DBName (from template0) before restoring
	Host       string   // overrides PGHOST
	Port       int      // overrides PGPORT
	User       string   // overrides PGUSER
	ConnString string   // libpq connection string for the server; its dbname is replaced by DBName
	BinDir     string   // where pg_restore and createdb are; default: PATH, else the newest under /usr/lib/postgresql
	Extra      []string // more pg_restore arguments (after "--")
	Env        []string // the environment pg_restore sees; default os.Environ()
}

func (o restoreOptions) withDefaults() restoreOptions {
	if o.Jobs == 0 {
		o.Jobs = min(runtime.NumCPU(), 4)
	}
	if o.Env == nil {
		o.Env = os.Environ()
	}
	return o
}

// Validate reports the first mistake in how restore was called.
func (o restoreOptions) Validate() error {
	switch {
	case o.Dir == "":
		return usagef("restore takes one DUMP_DIR")
	case o.DBName == "":
		return usagef("--dbname is required: the database to restore into")
	case o.Jobs < 1:
		return usagef("--jobs must be at least 1, not %d", o.Jobs)
	case o.Port < 0 || o.Port > 65535:
		return usagef("--pg-port %d is not a port", o.Port)
	case o.ConnString != "" && (o.Host != "" || o.Port != 0 || o.User != ""):
		return usagef("--connstring and --pg-host/--pg-port/--pg-user exclude each other: put host, port and user in the connection string")
	}
	if o.ConnString != "" {
		if _, err := connStringWithDB(o.ConnString, o.DBName); err != nil {
			return usageError{err}
		}
	}
	return nil
}

// errRestoreRefused marks a dump that restore will not hand to pg_restore.
var errRestoreRefused = errors.New("refusing to restore")

func newRestoreCmd(g *globals) *cobra.Command {
	var o restoreOptions
	c := &cobra.Command{
		Use:   "restore DUMP_DIR --dbname NAME [--jobs N] [--create] [-- PG_RESTORE_ARGS...]",
		Short: "Verify a dump against its manifest, then restore it with pg_restore",
		Long: `Check DUMP_DIR against its pgporter-manifest.json exactly as 'pgporter verify'
does, and only if every file is there with its size and BLAKE3 hash (and no
file is extra), run

    pg_restore --dbname NAME --jobs N [PG_RESTORE_ARGS...] DUMP_DIR

with pg_restore's output streamed to this command's stderr. A dump that fails
verification is refused: the problems are listed, the bad file named, and
nothing is created or written in any database.

Why verify first: pg_restore does not notice a damaged directory dump. A
table's .dat file cut short at a row boundary (a full disk, an interrupted
copy) is restored as the rows it still holds, and pg_restore exits 0; a file
with a changed byte may load the changed value. The manifest, written by the
receiving mover after it checked every chunk, is what says the dump is whole.
A dump without a manifest is refused too; use pg_restore directly for dumps
that pgporter did not deliver.

Connection: pg_restore follows the libpq environment (PGHOST, PGPORT, PGUSER,
PGPASSWORD, PGSSLMODE, PGSERVICE, ~/.pgpass, ...), which this command passes
through. --pg-host, --pg-port and --pg-user override PGHOST, PGPORT and PGUSER.
Or give --connstring with a libpq connection string ('host=... user=...' or
'postgresql://...'); its database, if any, is replaced by --dbname. The
password is best left to PGPASSWORD or ~/.pgpass, which command lines do not
show to other users.

--create creates the database NAME (from template0, owned by the connecting
user) before restoring into it, and fails if it exists. Unlike pg_restore's own
--create, the name is --dbname, not the one in the dump, and the dump's
database-level properties (ALTER DATABASE ... SET, its comment and grants) are
not restored.

pg_restore and createdb are taken from --pg-bindir, else from PATH, else from
the newest /usr/lib/postgresql/*/bin. A pg_restore reads dumps of its own and
older PostgreSQL versions.

Arguments after '--' go to pg_restore as they are (say --no-owner when the
dump's roles do not exist on this server).

Exit code 0 only when verification passed and pg_restore exited 0; 1 for a
refused dump or a failed pg_restore (its exit status is in the message); 2
for a usage mistake.`,
		Example: `  PGHOST=/var/run/postgresql pgporter restore /srv/dumps/sales --dbname sales --create
  pgporter restore /srv/dumps/sales --dbname sales_copy --create --jobs 8 --pg-user admin
  pgporter restore /srv/dumps/sales --dbname sales --connstring 'host=db1 user=admin sslmode=require' -- --no-owner`,
		Args: func(cmd *cobra.Command, args []string) error {
			n := len(args)
			if d := cmd.ArgsLenAtDash(); d >= 0 {
				n = d
			}
			if n != 1 {
				return usagef("restore takes one DUMP_DIR")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Dir = args[0]
			if d := cmd.ArgsLenAtDash(); d >= 0 {
				o.Extra = args[d:]
			}
			return runRestore(cmd.Context(), o, g.stdout, g.stderr)
		},
	}
	f := c.Flags()
	f.StringVarP(&o.DBName, "dbname", "d", "", "database to restore into (required)")
	f.IntVarP(&o.Jobs, "jobs", "j", 0, "parallel pg_restore jobs (default: number of CPUs, at most 4)")
	f.BoolVar(&o.Create, "create", false, "create the database NAME first; fail if it exists")
	f.StringVar(&o.Host, "pg-host", "", "server host or socket directory (overrides PGHOST)")
	f.IntVar(&o.Port, "pg-port", 0, "server port (overrides PGPORT)")
	f.StringVar(&o.User, "pg-user", "", "user to connect as (overrides PGUSER)")
	f.StringVar(&o.ConnString, "connstring", "", "libpq connection string for the server; its dbname is replaced by --dbname")
	f.StringVar(&o.BinDir, "pg-bindir", "", "directory holding pg_restore and createdb")
	return c
}

// runRestore verifies o.Dir against its manifest and, only if it is whole,
// restores it with pg_restore. pg_restore's and createdb's output goes to
// stderr; a one-line summary to stdout.
func runRestore(ctx context.Context, o restoreOptions, stdout, stderr io.Writer) error {
	o = o.withDefaults()
	if err := o.Validate(); err != nil {
		return err
	}
	start := time.Now()
	// pg_restore in --pg-bindir, else on PATH, else the newest installed:
	// the newest reads every older dump format.
	pgRestore, err := pgtool.Tool("pg_restore", o.BinDir)
	if err != nil {
		if o.BinDir != "" {
			return fmt.Errorf("--pg-bindir: %w", err)
		}
		return fmt.Errorf("%w, or give --pg-bindir", err)
	}
	rep, err := verifyDump(ctx, o.Dir, stderr)
	if err != nil {
		return err
	}
	env := o.env()
	conn := "dbname=" + pgtool.Quote(o.DBName)
	if o.ConnString != "" {
		conn, _ = connStringWithDB(o.ConnString, o.DBName) // checked by Validate
	}

	if o.Create {
		createdb := filepath.Join(filepath.Dir(pgRestore), "createdb")
		args := []string{"--template", "template0"}
		if o.ConnString != "" {
			maint, _ := connStringWithDB(o.ConnString, "postgres")
			args = append(args, "--maintenance-db", maint)
		}
		args = append(args, "--", o.DBName)
		if err := runPGTool(ctx, createdb, args, env, stderr); err != nil {
			return fmt.Errorf("creating database %q: %w", o.DBName, err)
		}
	}

	args := []string{"--dbname", conn, "--jobs", strconv.Itoa(o.Jobs)}
	args = append(args, o.Extra...)
	args = append(args, "--", o.Dir)
	if err := runPGTool(ctx, pgRestore, args, env, stderr); err != nil {
		if o.Create && ctx.Err() == nil {
			return fmt.Errorf("restoring %s into %q: %w (database %q, created by --create, holds a partial restore: drop it before trying again)", o.Dir, o.DBName, err, o.DBName)
		}
		return fmt.Errorf("restoring %s into %q: %w", o.Dir, o.DBName, err)
	}
	fmt.Fprintf(stdout, "restored %s into database %q: %d files, %s verified, %s\n",
		o.Dir, o.DBName, rep.Files, bytesize.Format(rep.Bytes), time.Since(start).Round(10*time.Millisecond))
	return nil
}

// verifyDump checks dir against its manifest, listing each problem on
// stderr, and returns an error matching errRestoreRefused (and, for a
// damaged tree, mover.ErrVerify) unless dir is a whole directory dump.
func verifyDump(ctx context.Context, dir string, stderr io.Writer) (*mover.VerifyReport, error) {
	rep, err := mover.Verify(ctx, dir)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if rep != nil {
		for _, p := range rep.Problems {
			fmt.Fprintf(stderr, "%s\n", p)
		}
	}
	switch {
	case errors.Is(err, fs.ErrNotExist) && !dirExists(dir):
		return nil, mark(fmt.Errorf("%w %s: no such directory", errRestoreRefused, dir), errNotFound)
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%w %s: it has no %s, so nothing says the dump is whole (use pg_restore directly for dumps that pgporter did not deliver)",
			errRestoreRefused, dir, mover.ManifestName)
	case errors.Is(err, mover.ErrVerify) && len(rep.Problems) > 0:
		return nil, fmt.Errorf("%w %s: %s (%d problem(s) against %s); nothing was restored: %w",
			errRestoreRefused, dir, rep.Problems[0], len(rep.Problems), mover.ManifestName, mover.ErrVerify)
	case err != nil:
		return nil, fmt.Errorf("%w %s: %w", errRestoreRefused, dir, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "toc.dat")); err != nil {
		return nil, fmt.Errorf("%w %s: not a pg_dump directory archive (no toc.dat)", errRestoreRefused, dir)
	}
	return rep, nil
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// env is the environment of pg_restore and createdb: the caller's libpq
// variables with the flags' overrides.
func (o restoreOptions) env() []string {
	env := slices.Clone(o.Env)
	set := func(k, v string) {
		env = slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, k+"=") })
		env = append(env, k+"="+v)
	}
	if o.Host != "" {
		set("PGHOST", o.Host)
	}
	if o.Port != 0 {
		set("PGPORT", strconv.Itoa(o.Port))
	}
	if o.User != "" {
		set("PGUSER", o.User)
	}
	return env
}

// runPGTool runs a PostgreSQL client program with its output on stderr. On
// cancellation it interrupts the program, as Ctrl-C would, so that pg_restore
// cancels its workers' queries.
func runPGTool(ctx context.Context, path string, args, env []string, stderr io.Writer) error {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("%s exited with status %d", filepath.Base(path), ee.ExitCode())
	}
	if err != nil {
		return fmt.Errorf("running %s: %w", path, err)
	}
	return nil
}

// connStringWithDB returns the libpq connection string s (keyword/value or
// URI) with its database set to db.
func connStringWithDB(s, db string) (string, error) {
	for _, scheme := range []string{"postgresql://", "postgres://"} {
		if !strings.HasPrefix(s, scheme) {
			continue
		}
		rest := s[len(scheme):]
		end := strings.IndexAny(rest, "/?")
		if end < 0 {
			return s + "/" + uriEscape(db), nil
		}
		query := ""
		if q := strings.IndexByte(rest[end:], '?'); q >= 0 {
			query = rest[end+q:]
		}
		if strings.Contains(query, "dbname=") {
			return "", fmt.Errorf("--connstring: leave the database out of the URI's parameters; --dbname names it")
		}
		return scheme + rest[:end] + "/" + uriEscape(db) + query, nil
	}
	if strings.Contains(s, "://") {
		return "", fmt.Errorf("--connstring: a URI must start with postgresql:// or postgres://")
	}
	// In a keyword/value string a later keyword overrides an earlier one.
	return strings.TrimSpace(s) + " dbname=" + pgtool.Quote(db), nil
}

// uriEscape percent-encodes everything but unreserved characters, as a
// libpq URI's database part needs.
func uriEscape(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
