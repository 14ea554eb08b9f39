package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// DumpOptions configures MakeDump.
type DumpOptions struct {
	Dir     string // where the dump goes; must not exist
	Scale   int    // pgbench scale; 0 means 20
	Docs    int    // rows of the docs table; 0 means 600,000
	Scratch string // parent of the throwaway cluster, which the postgres user must be able to enter; "" means /var/tmp
	BinDir  string // PostgreSQL's bin directory; "" means the newest under /usr/lib/postgresql
}

// docsTable (a format: %d is the row count) is scripts/bench-lan's table beside pgbench's: md5 text, jsonb
// and repeated words, which compress about 3x where pgbench's padding
// compresses 90x.
const docsTable = `CREATE TABLE docs AS SELECT g AS id, md5(g::text) AS h,
	jsonb_build_object('k', g %% 1000, 'w', (ARRAY['alpha','beta','gamma','delta','epsilon'])[g %% 5 + 1]) AS j,
	repeat((ARRAY['lorem ','ipsum ','dolor ','sit '])[g %% 4 + 1], 8) AS words FROM generate_series(1, %d) g`

// MakeDump writes a pg_dump -Fd -Z0 of pgbench -i -s Scale plus the docs
// table into o.Dir, from a throwaway cluster it creates and removes. The
// test fixture internal/testsupport.NewCluster is bound to testing.TB, so
// the command has this small twin of its start and stop.
func MakeDump(ctx context.Context, o DumpOptions) (err error) {
	if o.Scale <= 0 {
		o.Scale = 20
	}
	if o.Docs <= 0 {
		o.Docs = 600_000
	}
	if o.Scratch == "" {
		o.Scratch = "/var/tmp"
	}
	bin := o.BinDir
	if bin == "" {
		if bin, err = newestPGBin(); err != nil {
			return err
		}
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		// The server refuses to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("running PostgreSQL as root needs the postgres OS user: %w", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	base, err := os.MkdirTemp(o.Scratch, "pgporter-bench-pg-")
	if err != nil {
		return fmt.Errorf("making the cluster's directory: %w", err)
	}
	defer func() { err = errors.Join(err, os.RemoveAll(base)) }()
	if cred != nil {
		if err := os.Chown(base, int(cred.Uid), int(cred.Gid)); err != nil {
			return fmt.Errorf("making the cluster's directory: %w", err)
		}
	}
	data, sock := filepath.Join(base, "data"), base
	server := func(name string, args ...string) error {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, name), args...)
		cmd.Dir = base
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", name, err, tail(string(out)))
		}
		return nil
	}
	client := func(name string, args ...string) error {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, name), args...)
		cmd.Env = append(os.Environ(), "PGHOST="+sock, "PGPORT=5432", "PGUSER=postgres", "PGDATABASE=bench")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", name, err, tail(string(out)))
		}
		return nil
	}
	if err := server("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return err
	}
	opts := "-c listen_addresses='' -c unix_socket_directories=" + sock + " -c port=5432 -c fsync=off"
	if err := server("pg_ctl", "-D", data, "-w", "-l", filepath.Join(base, "log"), "-o", opts, "start"); err != nil {
		return err
	}
	defer func() {
		// Not ctx: the server must stop even when the run was cancelled.
		cmd := exec.Command(filepath.Join(bin, "pg_ctl"), "-D", data, "-w", "-m", "fast", "stop")
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		if out, serr := cmd.CombinedOutput(); serr != nil {
			err = errors.Join(err, fmt.Errorf("pg_ctl stop: %w: %s", serr, tail(string(out))))
		}
	}()
	steps := [][]string{
		{"createdb", "bench"},
		{"pgbench", "-i", "-s", strconv.Itoa(o.Scale), "-q", "bench"},
		{"psql", "-q", "-v", "ON_ERROR_STOP=1", "-c", fmt.Sprintf(docsTable, o.Docs)},
		{"pg_dump", "-Fd", "-Z0", "--no-sync", "-f", o.Dir, "bench"},
	}
	for _, s := range steps {
		if err := client(s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

func newestPGBin() (string, error) {
	ents, err := os.ReadDir("/usr/lib/postgresql")
	if err != nil {
		return "", fmt.Errorf("finding PostgreSQL: %w", err)
	}
	var vers []float64
	for _, e := range ents {
		if v, err := strconv.ParseFloat(e.Name(), 64); err == nil {
			vers = append(vers, v)
		}
	}
	if len(vers) == 0 {
		return "", errors.New("finding PostgreSQL: nothing under /usr/lib/postgresql")
	}
	return filepath.Join("/usr/lib/postgresql", strconv.FormatFloat(slices.Max(vers), 'f', -1, 64), "bin"), nil
}
