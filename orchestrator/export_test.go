package orchestrator

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/pgtool"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/protocol"
	"github.com/pgporter/pgporter/staging"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const superPassword = "s3cret"

// fixture is a cluster with a few databases, backed up into a repository.
type fixture struct {
	c    *testsupport.Cluster
	repo string
	rp   string
	sums map[string]string // database → checksum of its schema and data
}

// checksumSQL digests every user table's rows, sequences and the schema
// shape of a database: equal digests mean an equal restore.
const checksumSQL = `SELECT md5(coalesce(string_agg(x, '|' ORDER BY x), '')) FROM (
  SELECT format('%s.%s:%s', n.nspname, c.relname, c.relkind) AS x
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  UNION ALL
  SELECT format('%s:%s', table_name, (xpath('/row/c/text()', query_to_xml(
           format('SELECT md5(coalesce(string_agg(t::text, '','' ORDER BY t::text), '''')) AS c FROM %I.%I t', table_schema, table_name),
           false, true, '')))[1]::text)
    FROM information_schema.tables
   WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'
) s`

func newFixture(t *testing.T) *fixture {
	t.Helper()
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: superPassword})
	c.CreateDB(t, "shop")
	c.CreateDB(t, "Weird DB")
	c.CreateDB(t, "unused")
	c.Exec(t, "shop", `CREATE TABLE items(id int primary key, name text, price numeric);
		INSERT INTO items SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, 30000) g;
		CREATE TABLE orders(id bigserial primary key, item int references items, at timestamptz default '2026-01-01');
		INSERT INTO orders(item) SELECT 1 + g % 30000 FROM generate_series(1, 20000) g;
		CREATE VIEW cheap AS SELECT * FROM items WHERE price < 10;`)
	c.Exec(t, "Weird DB", `CREATE TABLE "Mixed Case"(v text); INSERT INTO "Mixed Case" SELECT repeat('é', g % 50) FROM generate_series(1, 5000) g;`)
	f := &fixture{c: c, sums: map[string]string{}}
	for _, db := range []string{"shop", "Weird DB"} {
		f.sums[db] = c.Query(t, db, checksumSQL)
	}
	c.Stop(t)
	f.repo = filepath.Join(t.TempDir(), "repo")
	r, err := chunkstore.OpenRepo(context.Background(), f.repo, nil)
	require.NoError(t, err)
	rp, err := r.Backup(context.Background(), c.DataDir, chunkstore.BackupOptions{})
	require.NoError(t, err)
	require.NoError(t, r.Close())
	f.rp = rp.ID
	c.Start(t)
	return f
}

func (f *fixture) plan(t *testing.T, to string) Plan {
	return Plan{Repo: f.repo, RestorePoint: "latest", Databases: []string{"shop", "Weird DB"}, To: to, StagingDir: stagingDir(t), Jobs: 2}
}

// stagingDir is a staging directory the postgres OS user can reach
// (t.TempDir's parents are private to root).
func stagingDir(t *testing.T) string {
	d, err := os.MkdirTemp("/var/tmp", "pgporter-staging-test-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(d, 0o755))
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// restoreAndCompare restores dir into a new database of the fixture's
// cluster and compares its checksum with the source database's.
func (f *fixture) restoreAndCompare(t *testing.T, dir, srcDB string) {
	t.Helper()
	rep, err := mover.Verify(context.Background(), dir)
	require.NoError(t, err)
	require.Empty(t, rep.Problems)
	name := fmt.Sprintf("restored_%d", len(f.sums))
	f.sums[name] = "" // keeps names unique
	f.c.CreateDB(t, name)
	out, err := f.c.ClientCmd(context.Background(), name, filepath.Join(f.c.BinDir, "pg_restore"), "--no-owner", "-d", name, dir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Equal(t, f.sums[srcDB], f.c.Query(t, name, checksumSQL), "restored %s differs from the source", srcDB)
}

func newRunner(t *testing.T, home string, events func(Event)) *Runner {
	r, err := NewRunner(Options{Home: home, Password: superPassword, Events: events})
	require.NoError(t, err)
	return r
}

// TestExportEmbedded exports two databases end to end on this machine and
// restores them: the result equals the source, and nothing is left behind.
func TestExportEmbedded(t *testing.T) {
	f := newFixture(t)
	home, to := t.TempDir(), t.TempDir()
	var mu sync.Mutex
	var steps []string
	r := newRunner(t, home, func(e Event) {
		if e.Kind == protocol.EventDone {
			mu.Lock()
			steps = append(steps, e.Step)
			mu.Unlock()
		}
	})
	plan := f.plan(t, to)
	s, err := r.Create(t.Context(), plan)
	require.NoError(t, err)
	require.Equal(t, StatePlanned, s.State)
	require.Equal(t, f.rp, s.Plan.RestorePoint, "latest is resolved when the session is created")

	s, err = r.Run(context.Background(), s.ID)
	require.NoError(t, err)
	require.Equal(t, StateDone, s.State)
	for _, st := range s.Steps {
		require.Equal(t, StepDone, st.State, st.Name)
	}
	require.ElementsMatch(t, []string{"mount", "instance", "check", "dump:shop", "dump:Weird DB", "transfer:shop", "transfer:Weird DB", "cleanup"}, steps)
	require.Equal(t, []string{"mount", "instance", "check", "dump:shop"}, steps[:4])
	require.Less(t, slices.Index(steps, "dump:Weird DB"), slices.Index(steps, "transfer:Weird DB"))
	require.Equal(t, "cleanup", steps[len(steps)-1])
	f.restoreAndCompare(t, filepath.Join(to, "shop"), "shop")
	f.restoreAndCompare(t, filepath.Join(to, "Weird DB"), "Weird DB")

	// Nothing left: staging files, mount, instance.
	require.NoDirExists(t, s.SessionDir())
	require.NoDirExists(t, filepath.Join(os.TempDir(), "pgporter-"+s.ID))
	require.Zero(t, s.Resources.InstancePID)
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	require.NotContains(t, string(mounts), "pgporter-"+s.ID)

	// The journal has it; a retry of a done session is a no-op.
	list, err := r.Journal().List()
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, StateDone, list[0].State)
	again, err := r.Run(context.Background(), s.ID)
	require.NoError(t, err)
	require.Equal(t, StateDone, again.State)

	// A second export to the same place needs --overwrite.
	_, err = r.Create(t.Context(), plan)
	require.ErrorIs(t, err, ErrBadPlan)
	require.Contains(t, err.Error(), "--overwrite")
	plan.Overwrite = true
	s2, err := r.Create(t.Context(), plan)
	require.NoError(t, err)
	s2, err = r.Run(context.Background(), s2.ID)
	require.NoError(t, err)
	f.restoreAndCompare(t, filepath.Join(to, "shop"), "shop")
	entries, err := os.ReadDir(to)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	require.ElementsMatch(t, []string{"shop", "Weird DB"}, names, "no replaced or partial directories left")
	require.Equal(t, StateDone, s2.State)
}

// TestExportChecksFailEarly: a wrong password, and a missing database, are
// reported before anything is dumped; the session is failed and cancel
// leaves nothing behind.
func TestExportChecksFailEarly(t *testing.T) {
	f := newFixture(t)
	home, to := t.TempDir(), t.TempDir()
	for _, tc := range []struct {
		password, db, want string
	}{
		{"wrong", "shop", "credentials"},
		{superPassword, "nosuchdb", `"nosuchdb"`},
	} {
		r, err := NewRunner(Options{Home: home, Password: tc.password})
		require.NoError(t, err)
		plan := f.plan(t, to)
		plan.Databases = []string{"shop", tc.db}
		if tc.db == "shop" {
			plan.Databases = []string{"shop"}
		}
		s, err := r.Create(t.Context(), plan)
		require.NoError(t, err)
		s, err = r.Run(context.Background(), s.ID)
		require.ErrorIs(t, err, staging.ErrChecks)
		require.Contains(t, err.Error(), tc.want)
		require.Equal(t, StateFailed, s.State)
		require.Equal(t, StepFailed, s.Step(StepCheck).State)
		require.Equal(t, StepPending, s.Step(DumpStep("shop")).State)
		require.NoDirExists(t, s.DumpDir("shop"))

		s, err = r.Cancel(context.Background(), s.ID)
		require.NoError(t, err)
		require.Equal(t, StateCancelled, s.State)
		require.NoDirExists(t, s.SessionDir())
		_, err = r.Run(context.Background(), s.ID)
		require.ErrorContains(t, err, "cancelled")
	}
	entries, err := os.ReadDir(to)
	require.NoError(t, err)
	require.Empty(t, entries)
}

// interruptAtSecondDump runs an export of f's databases to to, with its
// home in home, and cancels it as its second dump ("Weird DB") starts.
func interruptAtSecondDump(t *testing.T, f *fixture, home, to string) (*Session, *Runner) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newRunner(t, home, func(e Event) {
		if e.Step == "dump:Weird DB" && e.Kind == protocol.EventStart {
			cancel()
		}
	})
	s, err := r.Create(t.Context(), f.plan(t, to))
	require.NoError(t, err)
	s, err = r.Run(ctx, s.ID)
	require.ErrorIs(t, err, context.Canceled)
	return s, r
}

// TestRetryAfterInterruption interrupts an export as its second dump
// starts; the retry does not redo the first dump and completes with the
// same result.
func TestRetryAfterInterruption(t *testing.T) {
	f := newFixture(t)
	home, to := t.TempDir(), t.TempDir()
	s, _ := interruptAtSecondDump(t, f, home, to)
	require.Equal(t, StateFailed, s.State)
	require.Contains(t, s.Error, "interrupted")
	dumped := s.Step(DumpStep("shop")).Ended
	require.DirExists(t, s.DumpDir("shop"), "the dump a retry needs is kept")

	var (
		mu     sync.Mutex // events come from the dump and transfer goroutines at once
		redone []string
	)
	r2 := newRunner(t, home, func(e Event) {
		if e.Kind == protocol.EventStart {
			mu.Lock()
			redone = append(redone, e.Step)
			mu.Unlock()
		}
	})
	s, err := r2.Run(context.Background(), s.ID)
	require.NoError(t, err)
	require.Equal(t, StateDone, s.State)
	mu.Lock()
	defer mu.Unlock()
	require.NotContains(t, redone, "dump:shop")
	require.Equal(t, dumped, s.Step(DumpStep("shop")).Ended)
	f.restoreAndCompare(t, filepath.Join(to, "shop"), "shop")
	f.restoreAndCompare(t, filepath.Join(to, "Weird DB"), "Weird DB")
}

// TestRetryReusesDumpAsWritten: a retry that finds a dump complete but its
// step not recorded (the staging host killed between the two, as the crash
// matrix once did at the transfer's commit) reuses the dump as it is,
// pgporter-source.json included: written again, with another time of dump,
// it would differ from what the target may hold committed already, and the
// retried transfer be refused as a conflict.
func TestRetryReusesDumpAsWritten(t *testing.T) {
	f := newFixture(t)
	home, to := t.TempDir(), t.TempDir()
	s, r := interruptAtSecondDump(t, f, home, to)
	source := filepath.Join(s.DumpDir("shop"), SourceFile)
	written, err := os.ReadFile(source)
	require.NoError(t, err, "the shop dump was complete before the interruption")

	// As if the run had died before recording the dump step and the
	// transfer's (which the target may have committed).
	s, err = r.Journal().Get(s.ID)
	require.NoError(t, err)
	for _, name := range []string{DumpStep("shop"), TransferStep("shop")} {
		*s.Step(name) = Step{Name: name, State: StepPending}
	}
	require.NoError(t, r.Journal().Put(s))
	// And a temporary file of a writeSource killed midway.
	leftover := filepath.Join(s.DumpDir("shop"), sourceTempPrefix+"123")
	require.NoError(t, os.WriteFile(leftover, []byte("{"), 0o600))

	var (
		mu     sync.Mutex // guards atDump; events come from several goroutines
		atDump []byte
	)
	r2 := newRunner(t, home, func(e Event) {
		if e.Step == DumpStep("shop") && e.Kind == protocol.EventDone {
			b, err := os.ReadFile(source)
			mu.Lock()
			atDump = b
			mu.Unlock()
			assert.NoError(t, err)
		}
	})
	s, err = r2.Run(context.Background(), s.ID)
	require.NoError(t, err)
	require.Equal(t, StateDone, s.State)
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, string(written), string(atDump), "the reused dump's source file as the run that made it wrote it")
	got, err := os.ReadFile(filepath.Join(to, "shop", SourceFile))
	require.NoError(t, err)
	require.Equal(t, string(written), string(got), "the target has the source file the dump was made with")
	require.NoFileExists(t, filepath.Join(to, "shop", filepath.Base(leftover)), "a leftover temporary file is not sent")
	f.restoreAndCompare(t, filepath.Join(to, "shop"), "shop")
}

// TestRetryMovesAsideJournaled guards against a run killed between
// journaling where --overwrite moves an existing target directory and
// moving it: the retry took the move as made, and the target mover
// refused the directory still there as existing.
func TestRetryMovesAsideJournaled(t *testing.T) {
	f := newFixture(t)
	home, to := t.TempDir(), t.TempDir()
	old := filepath.Join(to, "shop")
	require.NoError(t, os.Mkdir(old, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(old, "old.txt"), []byte("replaced"), 0o644))
	r := newRunner(t, home, nil)
	plan := f.plan(t, to)
	plan.Overwrite = true
	s, err := r.Create(t.Context(), plan)
	require.NoError(t, err)
	// As the run killed right after journaling the move left it.
	s.State, s.Resources.Aside = StateFailed, map[string]string{"shop": mover.AsideName(old, s.ID)}
	require.NoError(t, r.Journal().Put(s))

	s, err = r.Run(context.Background(), s.ID)
	require.NoError(t, err)
	require.Equal(t, StateDone, s.State)
	f.restoreAndCompare(t, old, "shop")
	entries, err := os.ReadDir(to)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	require.ElementsMatch(t, []string{"shop", "Weird DB"}, names, "the replaced directory is removed")
}

// TestReclaimOrphans: an instance and a mount journaled by a session that no
// process runs any more are released; one whose session is running is not.
func TestReclaimOrphans(t *testing.T) {
	f := newFixture(t)
	home, to := t.TempDir(), t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	held := make(chan *Session, 1)
	var r *Runner
	r = newRunner(t, home, func(e Event) {
		if e.Step == "dump:shop" && e.Kind == protocol.EventStart {
			// Running: the lock is held, nothing may be reclaimed.
			n, err := ReclaimOrphans(context.Background(), home, nil)
			require.NoError(t, err)
			require.Zero(t, n)
			s, err := r.Journal().List()
			require.NoError(t, err)
			held <- s[0]
			cancel()
		}
	})
	s, err := r.Create(t.Context(), f.plan(t, to))
	require.NoError(t, err)
	_, err = r.Run(ctx, s.ID)
	require.ErrorIs(t, err, context.Canceled)
	running := <-held
	require.Positive(t, running.Resources.InstancePID)

	// An interrupted run cleans up after itself; make the journal say
	// otherwise, as after a crash. The recorded PID is a live process that
	// is not postgres (a reused PID): it must be left alone, and the
	// records cleared. (Stopping a real orphan postmaster is covered by
	// the CLI tests that SIGKILL an export and retry.)
	fake := exec.Command("sleep", "60")
	require.NoError(t, fake.Start())
	defer fake.Process.Kill()
	s, err = r.Journal().Get(s.ID)
	require.NoError(t, err)
	s.Resources.InstancePID = fake.Process.Pid // not a postgres: must be left alone
	s.Resources.Mountpoint = filepath.Join(t.TempDir(), "gone")
	require.NoError(t, r.Journal().Put(s))
	n, err := ReclaimOrphans(context.Background(), home, nil)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	s, err = r.Journal().Get(s.ID)
	require.NoError(t, err)
	require.Zero(t, s.Resources.InstancePID)
	require.Empty(t, s.Resources.Mountpoint)
	require.NoError(t, fake.Process.Signal(syscall.Signal(0)), "a process that is not postgres is never signalled")
}

// TestExportMissingPreload: a backup whose postgresql.auto.conf names a
// preload library this host lacks is refused, naming it, unless the plan
// allows starting without it.
func TestExportMissingPreload(t *testing.T) {
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: superPassword})
	c.CreateDB(t, "shop")
	c.Exec(t, "shop", "CREATE TABLE t AS SELECT generate_series(1, 100) AS x")
	c.Stop(t)
	conf := filepath.Join(c.DataDir, "postgresql.auto.conf")
	b, err := os.ReadFile(conf)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(conf, append(b, "shared_preload_libraries = 'pg_no_such_extension'\n"...), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(c.DataDir, "recovery.signal"), nil, 0o600))
	repo := filepath.Join(t.TempDir(), "repo")
	rr, err := chunkstore.OpenRepo(context.Background(), repo, nil)
	require.NoError(t, err)
	_, err = rr.Backup(context.Background(), c.DataDir, chunkstore.BackupOptions{})
	require.NoError(t, err)
	require.NoError(t, rr.Close())

	home, to := t.TempDir(), t.TempDir()
	var warnings []string
	r := newRunner(t, home, func(e Event) {
		if e.Kind == protocol.EventWarning {
			warnings = append(warnings, e.Text)
		}
	})
	plan := Plan{Repo: repo, RestorePoint: "latest", Databases: []string{"shop"}, To: to, StagingDir: stagingDir(t)}
	s, err := r.Create(t.Context(), plan)
	require.NoError(t, err)
	_, err = r.Run(context.Background(), s.ID)
	require.ErrorIs(t, err, staging.ErrMissingPreload)
	require.Contains(t, err.Error(), "pg_no_such_extension")

	plan.AllowMissingPreload = true
	s, err = r.Create(t.Context(), plan)
	require.NoError(t, err)
	s, err = r.Run(context.Background(), s.ID)
	require.NoError(t, err)
	require.Contains(t, s.Step(StepStart).Detail, "pg_no_such_extension")
	require.NotEmpty(t, warnings)
	rep, err := mover.Verify(context.Background(), filepath.Join(to, "shop"))
	require.NoError(t, err)
	require.Empty(t, rep.Problems)
}

// TestExportBackupHBA exports, with no password at all, a backup whose
// pg_hba.conf trusts local connections (Auth backup-hba); before it, the
// throwaway instance always asked for a password. A backup whose local
// lines ask for one is refused before the instance starts, naming the line.
func TestExportBackupHBA(t *testing.T) {
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{})
	c.CreateDB(t, "shop")
	c.Exec(t, "shop", `CREATE TABLE items(id int primary key, name text); INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 1000) g`)
	sum := c.Query(t, "shop", checksumSQL)
	c.Stop(t)
	own, err := os.ReadFile(filepath.Join(c.DataDir, "pg_hba.conf"))
	require.NoError(t, err)
	backup := func(hba string) string {
		require.NoError(t, os.WriteFile(filepath.Join(c.DataDir, "pg_hba.conf"), []byte(hba), 0o600))
		repo := filepath.Join(t.TempDir(), "repo")
		r, err := chunkstore.OpenRepo(context.Background(), repo, nil)
		require.NoError(t, err)
		_, err = r.Backup(context.Background(), c.DataDir, chunkstore.BackupOptions{})
		require.NoError(t, err)
		require.NoError(t, r.Close())
		return repo
	}
	trusting := backup("# the backed-up server's\nlocal all all trust\nhost all all 0.0.0.0/0 scram-sha-256\n")
	asking := backup("local all all scram-sha-256\n")
	require.NoError(t, os.WriteFile(filepath.Join(c.DataDir, "pg_hba.conf"), own, 0o600))
	c.Start(t)

	home := t.TempDir()
	r, err := NewRunner(Options{Home: home}) // no password
	require.NoError(t, err)
	plan := func(repo, to string) Plan {
		return Plan{Repo: repo, RestorePoint: "latest", Databases: []string{"shop"}, To: to, StagingDir: stagingDir(t), Jobs: 1, PGUser: pgtool.SuperUser, Auth: AuthBackupHBA}
	}

	to := t.TempDir()
	s, err := r.Create(t.Context(), plan(trusting, to))
	require.NoError(t, err)
	require.Equal(t, AuthBackupHBA, s.Plan.Auth)
	s, err = r.Run(context.Background(), s.ID)
	require.NoError(t, err)
	require.Equal(t, StateDone, s.State)
	c.CreateDB(t, "restored")
	out, err := c.ClientCmd(context.Background(), "restored", filepath.Join(c.BinDir, "pg_restore"), "--no-owner", "-d", "restored", s.TargetDir("shop")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Equal(t, sum, c.Query(t, "restored", checksumSQL))

	s, err = r.Create(t.Context(), plan(asking, t.TempDir()))
	require.NoError(t, err)
	s, err = r.Run(context.Background(), s.ID)
	require.ErrorIs(t, err, staging.ErrHBA)
	require.ErrorContains(t, err, "pg_hba.conf:1")
	require.ErrorContains(t, err, "scram-sha-256 authentication, which needs a password")
	require.Equal(t, StepFailed, s.Step(StepStart).State)
	require.Zero(t, s.Resources.InstancePID)
	_, err = r.Cancel(context.Background(), s.ID)
	require.NoError(t, err)

	t.Run("plan", func(t *testing.T) {
		for _, tc := range []struct{ auth, want, err string }{
			{"", "", ""}, {AuthPassword, "", ""}, {"bogus", "", "neither"},
		} {
			p := plan(trusting, t.TempDir())
			p.Auth = tc.auth
			s, err := r.Create(t.Context(), p)
			if tc.err != "" {
				require.ErrorIs(t, err, ErrBadPlan)
				require.ErrorContains(t, err, tc.err)
				continue
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, s.Plan.Auth, "the default is journaled as before the field")
			_, err = r.Cancel(context.Background(), s.ID)
			require.NoError(t, err)
		}
		_, err := r.Create(t.Context(), Plan{Published: "x", Databases: []string{"shop"}, To: t.TempDir(), Auth: AuthBackupHBA})
		require.ErrorIs(t, err, ErrBadPlan)
	})
}

// TestInstancePIDJournaledWhileStarting: the instance's PID is in the
// journal as soon as the postmaster runs, before it accepts connections,
// so that a run killed while it starts (a crash recovery can take
// seconds) leaves a server the retry's reclaim stops. Before, the PID was
// journaled once the server was ready, and a kill in between left a
// postmaster on the dead mount that nothing recorded.
func TestInstancePIDJournaledWhileStarting(t *testing.T) {
	f := newFixture(t)
	home, to := t.TempDir(), t.TempDir()
	r := newRunner(t, home, nil)
	s, err := r.Create(t.Context(), f.plan(t, to))
	require.NoError(t, err)
	var (
		mu   sync.Mutex // guards seen
		seen []int
	)
	instanceJournaled = func(id string, pid int) {
		j, err := r.j.Get(id)
		require.NoError(t, err)
		require.Equal(t, pid, j.Resources.InstancePID)
		require.True(t, isPostgres(pid), "the journaled PID is the running postmaster")
		mu.Lock()
		seen = append(seen, pid)
		mu.Unlock()
	}
	t.Cleanup(func() { instanceJournaled = nil })
	s, err = r.Run(t.Context(), s.ID)
	require.NoError(t, err)
	require.Equal(t, StateDone, s.State)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, seen, 1)
	require.Zero(t, s.Resources.InstancePID, "cleared once the instance is stopped")
	require.False(t, isPostgres(seen[0]))
}

// TestCancelRemovesPartialTemp: cancel removes the empty directory a
// target mover killed while making DEST.partial leaves under its
// temporary name (mover's makePartial), and nothing else of that shape.
func TestCancelRemovesPartialTemp(t *testing.T) {
	f := newFixture(t)
	home, to := t.TempDir(), t.TempDir()
	s, r := interruptAtSecondDump(t, f, home, to)
	partial := s.TargetDir("Weird DB") + ".partial"
	left := partial + "-0123456789abcdef.new"
	require.NoError(t, os.Mkdir(left, 0o700))
	full := partial + "-fedcba9876543210.new"
	require.NoError(t, os.Mkdir(full, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(full, "precious"), []byte("x"), 0o600))
	file := partial + "-00000000000000ff.new"
	require.NoError(t, os.WriteFile(file, []byte("x"), 0o600))

	_, err := r.Cancel(context.Background(), s.ID)
	require.NoError(t, err)
	require.NoDirExists(t, left)
	require.FileExists(t, filepath.Join(full, "precious"), "a directory with something in it is not the mover's leftover")
	require.FileExists(t, file)
}
