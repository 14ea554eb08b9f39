package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/pgporter/pgporter/internal/pgtool"
)

// DumpOptions configures MakeDump.
type DumpOptions struct {
	Dir     string // where the dump goes; must not exist
	Scale   int    // pgbench scale; 0 means 20
	Docs    int    // rows of the docs table; 0 means 600,000
	Scratch string // parent of the throwaway cluster, which the postgres user must be able to enter; "" means /var/tmp
	BinDir  string // PostgreSQL's bin directory; "" means the newest under /usr/lib/postgresql
	// Updated, when set, is where a second dump goes, made after 100
	// scattered rows of pgbench_accounts were updated (the delta scenario's
	// "same database, dumped again").
	Updated string
}

// UpdatedRows is how many scattered rows MakeDump updates between its two
// dumps, as scripts/bench-transfer does for its delta figure.
const UpdatedRows = 100

// updateSQL (a format: %d is the number of accounts, %d the rows to update)
// updates that many distinct accounts picked at random and returns the
// count.
const updateSQL = `WITH ids AS (SELECT DISTINCT (1 + floor(random() * %d))::int AS aid FROM generate_series(1, 1000) LIMIT %d),
	u AS (UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid IN (SELECT aid FROM ids) RETURNING 1)
	SELECT count(*) FROM u`

// docsTable (a format: %d is the row count) is scripts/bench-lan's table beside pgbench's: md5 text, jsonb
// and repeated words, which compress about 3x where pgbench's padding
// compresses 90x.
const docsTable = `CREATE TABLE docs AS SELECT g AS id, md5(g::text) AS h,
	jsonb_build_object('k', g %% 1000, 'w', (ARRAY['alpha','beta','gamma','delta','epsilon'])[g %% 5 + 1]) AS j,
	repeat((ARRAY['lorem ','ipsum ','dolor ','sit '])[g %% 4 + 1], 8) AS words FROM generate_series(1, %d) g`

// MakeDump writes a pg_dump -Fd -Z0 of pgbench -i -s Scale plus the docs
// table into o.Dir, from a throwaway cluster it creates and removes; and,
// with o.Updated, the dump after UpdatedRows scattered updates.
func MakeDump(ctx context.Context, o DumpOptions) (err error) {
	if o.Scale <= 0 {
		o.Scale = 20
	}
	if o.Docs <= 0 {
		o.Docs = 600_000
	}
	c, err := newPGCluster(ctx, o.Scratch, o.BinDir)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.remove()) }()
	if err := c.start(ctx); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.stop()) }()
	steps := [][]string{
		{"createdb", "bench"},
		{"pgbench", "-i", "-s", strconv.Itoa(o.Scale), "-q", "bench"},
		{"psql", "-q", "-v", "ON_ERROR_STOP=1", "-c", fmt.Sprintf(docsTable, o.Docs)},
		{"pg_dump", "-Fd", "-Z0", "--no-sync", "-f", o.Dir, "bench"},
	}
	for _, s := range steps {
		if _, err := c.client(ctx, "bench", s[0], s[1:]...); err != nil {
			return err
		}
	}
	if o.Updated == "" {
		return nil
	}
	out, err := c.client(ctx, "bench", "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", fmt.Sprintf(updateSQL, o.Scale*100_000, UpdatedRows))
	if err != nil {
		return err
	}
	if n := strings.TrimSpace(out); n != strconv.Itoa(UpdatedRows) {
		return fmt.Errorf("updated %s rows, want %d", n, UpdatedRows)
	}
	_, err = c.client(ctx, "bench", "pg_dump", "-Fd", "-Z0", "--no-sync", "-f", o.Updated, "bench")
	return err
}

// pgCluster is a throwaway PostgreSQL cluster of the harness, listening on
// a Unix socket only. The test fixture internal/testsupport.NewCluster is
// bound to testing.TB, so the command has this small twin of its initdb,
// start and stop.
type pgCluster struct {
	bin  string              // PostgreSQL's bin directory
	base string              // holds data/, the socket and the log
	data string              // the data directory
	cred *syscall.Credential // the postgres OS user when the harness runs as root, else nil
}

// newPGCluster runs initdb in a new directory under scratch ("" means
// /var/tmp), with trust authentication for the socket. The caller removes
// it with remove.
func newPGCluster(ctx context.Context, scratch, bin string) (_ *pgCluster, err error) {
	if scratch == "" {
		scratch = "/var/tmp"
	}
	if bin == "" {
		if bin, err = pgtool.NewestServerBinDir(); err != nil {
			return nil, err
		}
	}
	cred, err := postgresCred()
	if err != nil {
		return nil, err
	}
	base, err := os.MkdirTemp(scratch, "pgporter-bench-pg-")
	if err != nil {
		return nil, fmt.Errorf("making the cluster's directory: %w", err)
	}
	c := &pgCluster{bin: bin, base: base, data: filepath.Join(base, "data"), cred: cred}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.remove())
		}
	}()
	if err := c.chown(base); err != nil {
		return nil, fmt.Errorf("making the cluster's directory: %w", err)
	}
	if err := c.server(ctx, "initdb", "-D", c.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return nil, err
	}
	return c, nil
}

// postgresCred returns the postgres OS user's credential when the harness
// runs as root (the server refuses to), else nil.
func postgresCred() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running PostgreSQL as root needs the postgres OS user: %w", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// chown gives path to the postgres OS user, when the server runs as one.
func (c *pgCluster) chown(path string) error {
	if c.cred == nil {
		return nil
	}
	return os.Chown(path, int(c.cred.Uid), int(c.cred.Gid))
}

// asPostgres makes cmd run as the postgres OS user, when the server runs as one.
func (c *pgCluster) asPostgres(cmd *exec.Cmd) {
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
}

func (c *pgCluster) server(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Dir = c.base
	c.asPostgres(cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, tail(string(out)))
	}
	return nil
}

// client runs a client program of the cluster's bin directory against
// database db and returns its standard output.
func (c *pgCluster) client(ctx context.Context, db, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Env = append(os.Environ(), "PGHOST="+c.base, "PGPORT=5432", "PGUSER=postgres", "PGDATABASE="+db)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", name, err, tail(stderr.String()))
	}
	return string(out), nil
}

func (c *pgCluster) start(ctx context.Context) error {
	opts := "-c listen_addresses='' -c unix_socket_directories=" + c.base + " -c port=5432 -c fsync=off"
	return c.server(ctx, "pg_ctl", "-D", c.data, "-w", "-l", filepath.Join(c.base, "log"), "-o", opts, "start")
}

// stop stops the server (fast shutdown, a checkpoint: the data directory is
// then consistent, to be backed up). It ignores any context: the server must
// stop even when the run was cancelled.
func (c *pgCluster) stop() error {
	cmd := exec.Command(filepath.Join(c.bin, "pg_ctl"), "-D", c.data, "-w", "-m", "fast", "stop")
	c.asPostgres(cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl stop: %w: %s", err, tail(string(out)))
	}
	return nil
}

func (c *pgCluster) remove() error { return os.RemoveAll(c.base) }
