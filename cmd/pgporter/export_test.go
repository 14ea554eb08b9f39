package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/orchestrator"
	"github.com/stretchr/testify/require"
)

// exportFixture backs up a password-protected cluster with two databases
// and returns the repository. PGPASSWORD is set for the test.
func exportFixture(t *testing.T) (c *testsupport.Cluster, repo string) {
	t.Helper()
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	c = testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "pw"})
	c.CreateDB(t, "shop")
	c.PgBench(t, "shop", 2)
	c.CreateDB(t, "crm")
	c.Exec(t, "crm", `CREATE TABLE "Clients"(id int, name text); INSERT INTO "Clients" SELECT g, 'c' || g FROM generate_series(1, 1000) g;`)
	c.Stop(t)
	repo = filepath.Join(t.TempDir(), "repo")
	code, _, errs := runCLI(t, "backup", "--repo", repo, "--pgdata", c.DataDir)
	require.Equal(t, 0, code, errs)
	c.Start(t)
	t.Setenv("PGPASSWORD", "pw")
	return c, repo
}

func cliStagingDir(t *testing.T) string {
	d, err := os.MkdirTemp("/var/tmp", "pgporter-cli-staging-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(d, 0o755))
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type exportJSON struct {
	Session   string `json:"session"`
	State     string `json:"state"`
	Databases []struct {
		Name      string  `json:"name"`
		Path      string  `json:"path"`
		Bytes     int64   `json:"bytes"`
		WireBytes int64   `json:"wire_bytes"`
		Seconds   float64 `json:"seconds"`
	} `json:"databases"`
}

func TestExportCLI(t *testing.T) {
	_, repo := exportFixture(t)
	home, to := t.TempDir(), t.TempDir()
	args := []string{"--home", home, "export", "--repo", repo, "--db", "shop", "--db", "crm", "--to", to, "--staging-dir", cliStagingDir(t)}
	restoreMemoryLimit(t)
	code, out, errs := runCLI(t, append(args, "--json", "--globals", "--memory-limit", "200M")...)
	require.Equal(t, 0, code, errs)
	require.Equal(t, int64(200<<20), debug.SetMemoryLimit(-1), "export applies --memory-limit")
	var res exportJSON
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
	require.Equal(t, "done", res.State)
	require.Len(t, res.Databases, 2)
	for _, db := range res.Databases {
		require.Equal(t, filepath.Join(to, db.Name), db.Path)
		require.Positive(t, db.Bytes)
		require.Positive(t, db.WireBytes)
		rep, err := mover.Verify(context.Background(), db.Path)
		require.NoError(t, err)
		require.Empty(t, rep.Problems)
		globals, err := os.ReadFile(filepath.Join(db.Path, "globals.sql"))
		require.NoError(t, err, "--globals puts globals.sql in each dump")
		require.Contains(t, string(globals), "CREATE ROLE postgres")
	}
	require.Contains(t, errs, "• dump:shop")
	require.Contains(t, errs, "• globals")

	code, out, errs = runCLI(t, "--home", home, "sessions", "--json")
	require.Equal(t, 0, code, errs)
	var list struct {
		Sessions []struct{ ID, State string } `json:"sessions"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &list))
	require.Len(t, list.Sessions, 1)
	require.Equal(t, res.Session, list.Sessions[0].ID)
	require.Equal(t, "done", list.Sessions[0].State)

	code, out, errs = runCLI(t, "--home", home, "sessions", "show", res.Session)
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `transfer:shop +done`, out)
	// Each delivered dump's manifest hash is journaled and shown (issue 15):
	// the BLAKE3 of the pgporter-manifest.json bytes the target committed.
	for _, db := range []string{"shop", "crm"} {
		man, err := os.ReadFile(filepath.Join(to, db, mover.ManifestName))
		require.NoError(t, err)
		sum := chunk.Sum(man)
		require.Regexp(t, db+` +`+hex.EncodeToString(sum[:])+` +`+regexp.QuoteMeta(filepath.Join(to, db)), out)
	}
	code, out, errs = runCLI(t, "--home", home, "sessions", "show", res.Session, "--json")
	require.Equal(t, 0, code, errs)
	var shown struct {
		ID        string            `json:"id"`
		Manifests map[string]string `json:"manifests"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &shown), out)
	require.Equal(t, res.Session, shown.ID)
	require.Len(t, shown.Manifests, 2)

	code, _, errs = runCLI(t, "--home", home, "retry", res.Session)
	require.Equal(t, 0, code, errs)
	require.Contains(t, errs, "done already")

	// Refusals: an existing target without --overwrite; an unknown session.
	code, _, errs = runCLI(t, args...)
	require.Equal(t, exitConflict, code)
	require.Contains(t, errs, "--overwrite")
	code, _, errs = runCLI(t, "--home", home, "retry", "x-nope")
	require.Equal(t, exitNotFound, code)
	require.Contains(t, errs, "no such session")
}

var sessionLineRE = regexp.MustCompile(`session (x-\S+): exporting`)

// TestExportKillRetry kills the export process with SIGKILL at a step, then
// 'pgporter retry' finishes the session: the dumps verify, and no instance
// or mount of the killed run is left.
func TestExportKillRetry(t *testing.T) {
	_, repo := exportFixture(t)
	for _, at := range []string{"• dump:shop", "• transfer:crm"} {
		t.Run(strings.TrimPrefix(at, "• "), func(t *testing.T) {
			home, to := t.TempDir(), t.TempDir()
			id, _, before := killExportAt(t, at, home, "export", "--repo", repo, "--db", "shop", "--db", "crm", "--to", to, "--staging-dir", cliStagingDir(t))
			require.NotEqual(t, orchestrator.StateDone, before.State)

			code, out, errs := runCLI(t, "--home", home, "retry", id, "--json")
			require.Equal(t, 0, code, errs)
			var res exportJSON
			require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
			require.Equal(t, "done", res.State)
			for _, db := range []string{"shop", "crm"} {
				rep, err := mover.Verify(context.Background(), filepath.Join(to, db))
				require.NoError(t, err)
				require.Empty(t, rep.Problems)
			}
			if pid := before.Resources.InstancePID; pid > 0 {
				require.False(t, running(pid), "the killed run's instance (pid %d) must be stopped", pid)
			}
			mounts, err := os.ReadFile("/proc/self/mountinfo")
			require.NoError(t, err)
			require.NotContains(t, string(mounts), "pgporter-"+id)
			entries, err := os.ReadDir(to)
			require.NoError(t, err)
			require.Len(t, entries, 2, "only the two dumps; no partial directories")
		})
	}
}

// killExportAt starts 'pgporter --home home args...', SIGKILLs it once its
// stderr shows at, and returns the session, the journal it is in and the
// session's state as the kill left it.
func killExportAt(t *testing.T, at, home string, args ...string) (string, *orchestrator.Journal, *orchestrator.Session) {
	t.Helper()
	p := startProc(t, append([]string{"--home", home}, args...)...)
	deadline := time.Now().Add(waitTimeout)
	for !strings.Contains(p.stderr.String(), at) {
		select {
		case <-p.done:
			t.Fatalf("export ended before %q: %v\n%s", at, p.err, p.stderr.String())
		case <-time.After(5 * time.Millisecond): // polling another process's output
		}
		require.True(t, time.Now().Before(deadline), "export did not reach %q", at)
	}
	p.kill(t)
	m := sessionLineRE.FindStringSubmatch(p.stderr.String())
	require.NotNil(t, m, p.stderr.String())
	j, err := orchestrator.OpenJournal(home)
	require.NoError(t, err)
	before, err := j.Get(m[1])
	require.NoError(t, err)
	return m[1], j, before
}

// running reports whether pid is a live process (a zombie left for an
// init that does not reap is not).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// TestExportKillCancel kills the export with SIGKILL at each step, then
// 'pgporter cancel' must leave nothing behind: no instance or pg_dump
// running, no mount, no staging files, nothing partial in --to; a dump
// already delivered (its transfer done) stays, verified. A cancelled
// session cannot be retried.
func TestExportKillCancel(t *testing.T) {
	_, repo := exportFixture(t)
	for _, at := range []string{"• mount", "• instance", "• dump:shop", "• transfer:crm"} {
		t.Run(strings.TrimPrefix(at, "• "), func(t *testing.T) {
			home, to, stagingDir := t.TempDir(), t.TempDir(), cliStagingDir(t)
			id, j, before := killExportAt(t, at, home, "export", "--repo", repo, "--db", "shop", "--db", "crm", "--to", to, "--staging-dir", stagingDir)
			t.Logf("killed in state %s with instance pid %d, mount %q", before.State, before.Resources.InstancePID, before.Resources.Mountpoint)

			code, out, errs := runCLI(t, "--home", home, "cancel", id)
			require.Equal(t, 0, code, errs)
			require.Contains(t, out, "cancelled")
			after, err := j.Get(id)
			require.NoError(t, err)
			require.Equal(t, orchestrator.StateCancelled, after.State)
			require.Zero(t, after.Resources.InstancePID)
			require.Empty(t, after.Resources.Mountpoint)
			if pid := before.Resources.InstancePID; pid > 0 {
				require.False(t, running(pid), "the killed run's instance (pid %d) must be stopped", pid)
			}
			// pg_dump and the instance's backends end with the postmaster.
			deadline := time.Now().Add(waitTimeout)
			for left := sessionProcs("pgporter-"+id, filepath.Join(stagingDir, id)); len(left) > 0; left = sessionProcs("pgporter-"+id, filepath.Join(stagingDir, id)) {
				require.True(t, time.Now().Before(deadline), "still running after the cancel: %v", left)
				time.Sleep(10 * time.Millisecond) // poll interval while they exit
			}
			mounts, err := os.ReadFile("/proc/self/mountinfo")
			require.NoError(t, err)
			require.NotContains(t, string(mounts), "pgporter-"+id)
			require.NoDirExists(t, filepath.Join(stagingDir, id))
			require.NoDirExists(t, filepath.Join(os.TempDir(), "pgporter-"+id), "the mountpoint is removed")
			entries, err := os.ReadDir(to)
			require.NoError(t, err)
			for _, ent := range entries {
				require.Equal(t, orchestrator.StepDone, after.Step("transfer:"+ent.Name()).State, "%s left in --to, though not delivered", ent.Name())
				rep, err := mover.Verify(context.Background(), filepath.Join(to, ent.Name()))
				require.NoError(t, err)
				require.Empty(t, rep.Problems)
			}

			code, _, errs = runCLI(t, "--home", home, "retry", id)
			require.NotEqual(t, 0, code)
			require.Contains(t, errs, "cancelled")
		})
	}
}

// TestExportTable: --table dumps only what its pg_dump pattern matches, and
// a pattern that matches nothing fails the check, before any dump, naming
// the closest tables.
func TestExportTable(t *testing.T) {
	c, repo := exportFixture(t)
	home := t.TempDir()
	code, _, errs := runCLI(t, "--home", home, "export", "--repo", repo, "--db", "shop", "--table", "pgbench_branch", "--to", t.TempDir(), "--staging-dir", cliStagingDir(t))
	require.NotEqual(t, 0, code)
	require.Contains(t, errs, `--table "pgbench_branch" matches nothing in this restore point; the closest names are public.pgbench_branches`)

	to := t.TempDir()
	code, _, errs = runCLI(t, "--home", home, "export", "--repo", repo, "--db", "shop", "--table", "pgbench_b*", "--exclude-table", "pgbench_history", "--to", to, "--staging-dir", cliStagingDir(t))
	require.Equal(t, 0, code, errs)
	flags := []string{"--pg-host", c.SocketDir, "--pg-port", strconv.Itoa(c.Port), "--pg-user", c.User}
	code, _, errs = runCLI(t, append([]string{"restore", filepath.Join(to, "shop"), "--dbname", "shop_branches", "--create"}, flags...)...)
	require.Equal(t, exitOK, code, errs)
	require.Equal(t, "pgbench_branches", c.Query(t, "shop_branches", "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"))
	require.Equal(t, c.Query(t, "shop", "SELECT count(*) FROM pgbench_branches"), c.Query(t, "shop_branches", "SELECT count(*) FROM pgbench_branches"))

	code, _, errs = runCLI(t, "--home", home, "export", "--repo", repo, "--db", "shop", "--data-only", "--schema-only", "--to", t.TempDir())
	require.Equal(t, exitUsage, code, errs)
}
