package testsupport

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgporter/pgporter/internal/pgtool"
)

// pgOSUser is the OS user that owns and runs test clusters when the tests run
// as root; PostgreSQL refuses to run as root.
const pgOSUser = "postgres"

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

// Cluster is a throwaway PostgreSQL server for one test (a pgtool.Cluster):
// its own data directory, a private Unix socket directory, no TCP listener
// unless Settings ask for one. Tests reach it through ConnString or the
// helpers below; client programs (pg_dump, pgbench, psql) run as the test's
// own user, the server as the postgres OS user when the test runs as root.
type Cluster struct {
	*pgtool.Cluster
	base string // owns DataDir, SocketDir and LogFile
}

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
	password := ""
	if o.Auth != "trust" {
		password = o.SuperPassword
	}
	// Not t.TempDir: that is root-owned 0700 under /tmp, which the postgres
	// user can neither enter nor write.
	sweepStaleClusters()
	base, err := os.MkdirTemp(clusterRoot, clusterDirPrefix)
	if err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	c := &Cluster{base: base}
	t.Cleanup(func() { c.cleanup(t) })
	if err := os.WriteFile(filepath.Join(base, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	settings := map[string]string{"fsync": "off"}
	maps.Copy(settings, o.Settings)
	c.Cluster, err = pgtool.NewCluster(pgtool.ClusterOptions{BinDir: o.BinDir, Base: base, Port: o.Port, Password: password,
		Locale: o.Locale, OSUser: pgOSUser, Settings: settings, DieWithParent: true})
	if err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	if o.FreshInitdb {
		if err := c.Initdb(opContext(), c.DataDir); err != nil {
			t.Fatalf("testsupport: %v", err)
		}
	} else {
		files, err := c.initdbTemplate(templateKey{c.BinDir, c.Locale, c.Password})
		if err != nil {
			t.Fatalf("testsupport: %v", err)
		}
		if err := c.writeTemplate(c.DataDir, files); err != nil {
			t.Fatalf("testsupport: writing data directory: %v", err)
		}
	}
	c.Start(t)
	return c
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

// Start starts the stopped cluster and returns once it accepts connections.
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	if err := c.Cluster.Start(opContext()); err != nil {
		t.Fatalf("testsupport: starting PostgreSQL: %v", err)
	}
}

// Stop shuts the server down (fast, then immediate, then SIGKILL) and waits
// for it to exit. The data directory stays; Start starts it again.
func (c *Cluster) Stop(t testing.TB) {
	t.Helper()
	if err := c.Cluster.Stop(); err != nil {
		t.Fatalf("testsupport: stopping PostgreSQL: %v", err)
	}
}

func (c *Cluster) cleanup(t testing.TB) {
	if c.Cluster != nil {
		if err := c.Cluster.Stop(); err != nil {
			t.Errorf("testsupport: %v", err)
		}
	}
	if t.Failed() && c.Cluster != nil {
		if tail := c.LogTail(4 << 10); tail != "" {
			t.Logf("PostgreSQL log (%s):\n%s", c.LogFile, tail)
		}
	}
	if err := os.RemoveAll(c.base); err != nil {
		t.Errorf("testsupport: removing cluster: %v", err)
	}
}

// NewStandby makes a streaming standby of c (pg_basebackup -R, as the
// server's OS user) with settings over c's, starts it, and registers its
// stop and removal with t.Cleanup. pg_promote() makes it a primary on a
// new timeline: a failover.
func (c *Cluster) NewStandby(t testing.TB, settings map[string]string) *Cluster {
	t.Helper()
	base, err := os.MkdirTemp(clusterRoot, clusterDirPrefix)
	if err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	s := &Cluster{base: base}
	t.Cleanup(func() { s.cleanup(t) })
	if err := os.WriteFile(filepath.Join(base, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	set := maps.Clone(c.Settings)
	maps.Copy(set, settings)
	s.Cluster, err = pgtool.NewCluster(pgtool.ClusterOptions{BinDir: c.BinDir, Base: base, Password: c.Password,
		Locale: c.Locale, OSUser: pgOSUser, Settings: set, DieWithParent: true})
	if err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	cmd := s.ServerCmd(opContext(), "pg_basebackup", "-D", s.DataDir, "-R", "-X", "stream", "-c", "fast", "--no-sync", "-d", c.ConnString("postgres"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("testsupport: pg_basebackup for a standby: %v\n%s", err, out)
	}
	s.Start(t)
	return s
}
