package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/orchestrator"
)

type publishedJSON struct {
	Publications []struct {
		ID            string `json:"id"`
		State         string `json:"state"`
		RestorePoint  string `json:"restore_point"`
		Port          int    `json:"port"`
		UptimeSeconds int64  `json:"uptime_seconds"`
		CowBytes      int64  `json:"cow_bytes"`
	} `json:"publications"`
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// publishCLI publishes the latest restore point of repo on port and returns
// the publication. A cleanup unpublishes it, so that a failing test leaves
// no instance or mount behind.
func publishCLI(t *testing.T, home, repo string, port int, extra ...string) *orchestrator.Publication {
	t.Helper()
	return publishFrom(t, home, []string{"--repo", repo}, port, extra...)
}

// publishFrom is publishCLI with the repository named by from: --repo DIR
// or --repo-peer ADDR#PEER_ID.
func publishFrom(t *testing.T, home string, from []string, port int, extra ...string) *orchestrator.Publication {
	t.Helper()
	// The serve process is this test binary running the CLI.
	t.Setenv(testMainEnv, "1")
	args := append(append(append([]string{"--home", home, "publish"}, from...), "--restore-point", "latest", "--port", strconv.Itoa(port), "--json"), extra...)
	code, out, errs := runCLI(t, args...)
	require.Equal(t, 0, code, "%s\n%s", out, errs)
	var res struct {
		ID   string `json:"id"`
		Host string `json:"host"`
		Port int    `json:"port"`
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
	require.Equal(t, "127.0.0.1", res.Host)
	require.Equal(t, port, res.Port)
	require.Contains(t, errs, fmt.Sprintf("psql -h 127.0.0.1 -p %d", port), "with --json, the human lines go to stderr")
	t.Cleanup(func() { runCLI(t, "--home", home, "unpublish", res.ID) })
	j, err := orchestrator.OpenJournal(home)
	require.NoError(t, err)
	p, err := j.GetPublication(res.ID)
	require.NoError(t, err)
	require.Equal(t, orchestrator.PubUp, p.State)
	return p
}

func pubConn(t *testing.T, port int, db string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=postgres password=pw sslmode=disable", port, db))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// repoState is what a publication must not change: the restore points and
// the sizes of the pack files.
func repoState(t *testing.T, repo string) string {
	t.Helper()
	rps, err := chunkstore.ListRepo(context.Background(), repo)
	require.NoError(t, err)
	var b strings.Builder
	for _, rp := range rps {
		fmt.Fprintln(&b, rp.ID)
	}
	packs, err := filepath.Glob(filepath.Join(repo, "chunks", "packs", "*"))
	require.NoError(t, err)
	require.NotEmpty(t, packs)
	slices.Sort(packs)
	for _, p := range packs {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		fmt.Fprintln(&b, filepath.Base(p), fi.Size())
	}
	return b.String()
}

// lockHeldBy reports whether a process holds publication id's lock (its
// serve process, while it runs).
func lockHeldBy(t *testing.T, home, id string) bool {
	t.Helper()
	f, err := os.Open(filepath.Join(home, "orchestrator", "locks", id+".lock"))
	require.NoError(t, err)
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		require.ErrorIs(t, err, syscall.EWOULDBLOCK)
		return true
	}
	require.NoError(t, syscall.Flock(int(f.Fd()), syscall.LOCK_UN))
	return false
}

func publishedList(t *testing.T, home string) publishedJSON {
	t.Helper()
	code, out, errs := runCLI(t, "--home", home, "published", "--json")
	require.Equal(t, 0, code, errs)
	var res publishedJSON
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
	return res
}

// requireReleased checks that nothing of publication p is left: no mount,
// no postgres, no CoW layer.
func requireReleased(t *testing.T, p *orchestrator.Publication) {
	t.Helper()
	require.False(t, testsupport.IsMounted(t, p.Mountpoint()), "a mount is left at %s", p.Mountpoint())
	require.NoDirExists(t, p.BaseDir)
	require.NoDirExists(t, p.CowDir)
	if p.InstancePID > 0 {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.InstancePID))
		require.True(t, err != nil || !strings.Contains(string(stat), "(postgres)") || strings.Contains(string(stat), ") Z "),
			"postgres (pid %d) is still running: %s", p.InstancePID, stat)
	}
}

// TestPublishCLI publishes a restore point, writes into it over TCP with the
// backed-up server's password, unpublishes, publishes again: the write is
// gone and the repository is unchanged.
func TestPublishCLI(t *testing.T) {
	_, repo := exportFixture(t)
	home := t.TempDir()
	before := repoState(t, repo)
	port := freeTCPPort(t)

	p := publishCLI(t, home, repo, port)
	conn := pubConn(t, port, "crm")
	ctx := context.Background()
	_, err := conn.Exec(ctx, `CREATE TABLE scratch(x int); INSERT INTO scratch SELECT generate_series(1, 10000); UPDATE "Clients" SET name = 'changed'`)
	require.NoError(t, err)
	var n int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM scratch`).Scan(&n))
	require.Equal(t, 10000, n)
	_, err = conn.Exec(ctx, `CHECKPOINT`) // the writes reach the CoW layer
	require.NoError(t, err)

	list := publishedList(t, home)
	require.Len(t, list.Publications, 1)
	got := list.Publications[0]
	require.Equal(t, p.ID, got.ID)
	require.Equal(t, "up", got.State)
	require.Equal(t, port, got.Port)
	require.Positive(t, got.CowBytes)
	code, out, errs := runCLI(t, "--home", home, "published")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, p.ID+` +up +`+p.RestorePoint+` +127\.0\.0\.1:`+strconv.Itoa(port), out)

	// The port is taken now: a second publication on it is refused.
	code, _, errs = runCLI(t, "--home", home, "publish", "--repo", repo, "--restore-point", "latest", "--port", strconv.Itoa(port))
	require.Equal(t, exitConflict, code, errs)
	require.Contains(t, errs, "port is already in use")

	// A second publication of the same repository shares it with the
	// first (design/0007), and goes without touching the first.
	p3 := publishCLI(t, home, repo, freeTCPPort(t))
	require.Len(t, publishedList(t, home).Publications, 2)
	code, _, errs = runCLI(t, "--home", home, "unpublish", p3.ID)
	require.Equal(t, 0, code, errs)
	requireReleased(t, p3)
	require.Len(t, publishedList(t, home).Publications, 1)

	// Export from the publication, on this host, while it stays up: the
	// dump holds what was written into it.
	out2 := t.TempDir()
	code, out, errs = runCLI(t, "--home", home, "export", "--published", p.ID, "--db", "crm", "--to", out2, "--json")
	require.Equal(t, 0, code, errs)
	require.Contains(t, lastLine(out), `"state":"done"`)
	code, _, errs = runCLI(t, "verify", filepath.Join(out2, "crm"))
	require.Equal(t, 0, code, errs)
	require.Equal(t, "up", publishedList(t, home).Publications[0].State)

	conn.Close(ctx)
	code, out, errs = runCLI(t, "--home", home, "unpublish", p.ID)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "unpublished "+p.ID)
	requireReleased(t, p)
	code, _, errs = runCLI(t, "--home", home, "unpublish", p.ID) // idempotent
	require.Equal(t, 0, code, errs)
	require.Empty(t, publishedList(t, home).Publications)

	p2 := publishCLI(t, home, repo, port)
	require.NotEqual(t, p.ID, p2.ID)
	conn = pubConn(t, port, "crm")
	_, err = conn.Exec(ctx, `SELECT * FROM scratch`)
	var pe *pgconn.PgError
	require.True(t, errors.As(err, &pe) && pe.Code == "42P01", "the table written into the first publication is back: %v", err)
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM "Clients" WHERE name = 'changed'`).Scan(&n))
	require.Zero(t, n)
	conn.Close(ctx)
	code, _, errs = runCLI(t, "--home", home, "unpublish", p2.ID)
	require.Equal(t, 0, code, errs)
	requireReleased(t, p2)

	require.Equal(t, before, repoState(t, repo))
}

// TestPublishStrictHBA: with --strict-hba the backup's hba is replaced by
// password logins from the listen address's network, which still admit the
// backup's roles with their passwords, and refuse a wrong one.
func TestPublishStrictHBA(t *testing.T) {
	_, repo := exportFixture(t)
	home := t.TempDir()
	port := freeTCPPort(t)
	p := publishCLI(t, home, repo, port, "--strict-hba")
	conn := pubConn(t, port, "shop")
	var n int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM pgbench_branches`).Scan(&n))
	require.Equal(t, 2, n)
	hba, err := os.ReadFile(filepath.Join(p.RunDir(), "pg_hba_strict.conf"))
	require.NoError(t, err)
	require.Contains(t, string(hba), "host all all 127.0.0.0/8 md5")
	_, err = pgx.Connect(context.Background(), fmt.Sprintf("host=127.0.0.1 port=%d dbname=shop user=postgres password=wrong sslmode=disable", port))
	require.ErrorContains(t, err, "password authentication failed")
	code, _, errs := runCLI(t, "--home", home, "unpublish", p.ID)
	require.Equal(t, 0, code, errs)
	requireReleased(t, p)
}

// TestPublishPortInUse: a port something else listens on is refused before
// anything is mounted.
func TestPublishPortInUse(t *testing.T) {
	home := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	code, out, errs := runCLI(t, "--home", home, "publish", "--repo", t.TempDir(), "--restore-point", "latest", "--port", strconv.Itoa(port), "--json")
	require.Equal(t, exitConflict, code, errs)
	require.Contains(t, errs, fmt.Sprintf("port is already in use: 127.0.0.1:%d", port))
	require.JSONEq(t, fmt.Sprintf(`{"error": "port is already in use: 127.0.0.1:%d", "code": %d, "kind": "conflict"}`, port, exitConflict), out)
	require.Empty(t, publishedList(t, home).Publications)
}

// TestPublishKilled: after SIGKILL of the serve process the publication is
// reported dead; 'publish --resume' serves it again on the same port with
// what was written before the kill. A SIGTERM not sent by unpublish (a
// shutdown) stops it cleanly but keeps its layer: dead, resumable; unpublish
// then removes it. After a second SIGKILL, unpublish stops the orphaned
// postgres and detaches the dead mounts.
func TestPublishKilled(t *testing.T) {
	_, repo := exportFixture(t)
	home := t.TempDir()
	port := freeTCPPort(t)
	p := publishCLI(t, home, repo, port)
	require.Positive(t, p.ServePID)
	require.Positive(t, p.InstancePID)
	require.True(t, testsupport.IsMounted(t, p.Mountpoint()))
	require.True(t, testsupport.IsMounted(t, p.Lower()))
	ctx := context.Background()
	conn := pubConn(t, port, "crm")
	_, err := conn.Exec(ctx, `INSERT INTO "Clients" VALUES (-1, 'written before the kill')`)
	require.NoError(t, err)
	conn.Close(ctx)

	// Resuming a publication that runs is refused.
	code, _, errs := runCLI(t, "--home", home, "publish", "--resume", p.ID)
	require.Equal(t, exitConflict, code, errs)
	require.Contains(t, errs, "not dead")

	// The serve process holds the publication's lock until it exits. The
	// lock is probed, not the journal: polling 'published' would hold the
	// journal's database open so often that a serve process stopping on
	// SIGTERM, which journals as it goes, could wait long for it.
	waitDead := func(pid int, sig syscall.Signal) {
		t.Helper()
		require.NoError(t, syscall.Kill(pid, sig))
		deadline := time.Now().Add(waitTimeout)
		for lockHeldBy(t, home, p.ID) {
			require.True(t, time.Now().Before(deadline), "the serve process of %s still runs after %v", p.ID, sig)
			time.Sleep(10 * time.Millisecond) // polling another process's exit
		}
		list := publishedList(t, home)
		require.Len(t, list.Publications, 1)
		require.Equal(t, "dead", list.Publications[0].State)
	}
	waitDead(p.ServePID, syscall.SIGKILL)
	code, out, errs := runCLI(t, "--home", home, "published")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, p.ID+` +dead`, out)

	resumeStart := time.Now()
	code, out, errs = runCLI(t, "--home", home, "publish", "--resume", p.ID, "--json")
	require.Equal(t, 0, code, errs)
	t.Logf("publish --resume after SIGKILL: up again in %v", time.Since(resumeStart).Round(time.Millisecond))
	require.Contains(t, lastLine(out), `"state":"up"`)
	conn = pubConn(t, port, "crm")
	var name string
	require.NoError(t, conn.QueryRow(ctx, `SELECT name FROM "Clients" WHERE id = -1`).Scan(&name))
	require.Equal(t, "written before the kill", name)
	conn.Close(ctx)
	j, err := orchestrator.OpenJournal(home)
	require.NoError(t, err)
	p, err = j.GetPublication(p.ID)
	require.NoError(t, err)
	require.Equal(t, 1, p.Restarts)

	termStart := time.Now()
	waitDead(p.ServePID, syscall.SIGTERM)
	t.Logf("SIGTERM to the serve process: dead, layer kept, in %v", time.Since(termStart).Round(time.Millisecond))
	require.False(t, testsupport.IsMounted(t, p.Mountpoint()))
	require.False(t, testsupport.IsMounted(t, p.Lower()))
	require.DirExists(t, p.UpperDir())
	code, _, errs = runCLI(t, "--home", home, "publish", "--resume", p.ID)
	require.Equal(t, 0, code, errs)
	p, err = j.GetPublication(p.ID)
	require.NoError(t, err)
	require.Equal(t, 2, p.Restarts)
	waitDead(p.ServePID, syscall.SIGKILL)

	code, _, errs = runCLI(t, "--home", home, "unpublish", p.ID)
	require.Equal(t, 0, code, errs)
	requireReleased(t, p)
	require.Empty(t, publishedList(t, home).Publications)
	code, _, errs = runCLI(t, "--home", home, "unpublish", p.ID)
	require.Equal(t, 0, code, errs)
}

// TestPublishRepoPeerCLI publishes a restore point of another host's
// repository, served by a 'mover serve --repo' process on loopback: refused
// with the command to run there until that mover trusts this home with read;
// then up, read and written over TCP. Stopping the repository mover does not
// end the publication: a read of data not fetched yet waits for it to come
// back and then succeeds. Killed, it resumes from the same repository mover
// with its write. Unpublish leaves nothing behind. Published --on
// another mover, that mover is the one that must be trusted with read. The
// repository is unchanged.
func TestPublishRepoPeerCLI(t *testing.T) {
	_, repo := exportFixture(t)
	before := repoState(t, repo)
	srvHome, srvID := initMoverHome(t)
	home, homeID := initMoverHome(t)
	srv := startProc(t, "--home", srvHome, "mover", "serve", "--listen", "127.0.0.1:0", "--repo", repo)
	addr := srv.waitListening(t)
	peer := addr + "#" + srvID
	port := freeTCPPort(t)
	ctx := context.Background()

	t.Run("usage", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			err  string
		}{
			{[]string{"--repo", repo, "--repo-peer", peer}, "not both"},
			{nil, "needs --repo DIR or --repo-peer ADDR#PEER_ID"},
			{[]string{"--repo-peer", addr}, "ADDR#PEER_ID"},
			{[]string{"--repo-peer", "nohost#" + srvID}, "mover address"},
			{[]string{"--repo-peer", peer, "--retry-for", "0s"}, "--retry-for must be positive"},
			{[]string{"--on", peer}, "publish --on needs --repo DIR"},
		} {
			args := append(append([]string{"--home", home, "publish"}, tc.args...), "--restore-point", "latest", "--port", strconv.Itoa(port))
			code, _, errs := runCLI(t, args...)
			require.Equal(t, exitUsage, code, "%v: %s", tc.args, errs)
			require.Contains(t, errs, tc.err, tc.args)
		}
		code, _, errs := runCLI(t, "--home", home, "publish", "--resume", "p-x", "--repo-peer", peer)
		require.Equal(t, exitUsage, code, errs)
		require.Contains(t, errs, "takes no --repo-peer")
	})

	// Not trusted: the error names the repository mover, this home's ID,
	// the permission and the command; nothing is left behind.
	code, _, errs := runCLI(t, "--home", home, "publish", "--repo-peer", peer, "--restore-point", "latest", "--port", strconv.Itoa(port))
	require.Equal(t, exitPermission, code, errs)
	require.Contains(t, errs, "repository mover "+peer)
	require.Contains(t, errs, "pgporter mover trust "+homeID+" --allow read")
	t.Logf("untrusted: %s", strings.TrimSpace(errs))
	require.Empty(t, publishedList(t, home).Publications)
	code, _, errs = runCLI(t, "mover", "trust", homeID, "--allow", "read", "--home", srvHome)
	require.Equal(t, 0, code, errs)

	// An unknown restore point is not found.
	code, _, errs = runCLI(t, "--home", home, "publish", "--repo-peer", peer, "--restore-point", "rp-nope", "--port", strconv.Itoa(port))
	require.Equal(t, exitNotFound, code, errs)
	require.Contains(t, errs, "no such restore point")

	start := time.Now()
	p := publishFrom(t, home, []string{"--repo-peer", peer}, port)
	t.Logf("publish --repo-peer: up in %v", time.Since(start).Round(time.Millisecond))
	require.Equal(t, peer, p.RepoPeer)
	require.Empty(t, p.Repo)
	rps, err := chunkstore.ListRepo(context.Background(), repo)
	require.NoError(t, err)
	require.Equal(t, rps[len(rps)-1].ID, p.RestorePoint, "latest is resolved and journaled")

	conn := pubConn(t, port, "crm")
	var n int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM "Clients"`).Scan(&n))
	require.Equal(t, 1000, n)
	_, err = conn.Exec(ctx, `CREATE TABLE scratch(x int); INSERT INTO scratch SELECT generate_series(1, 500); UPDATE "Clients" SET name = 'changed'; CHECKPOINT`)
	require.NoError(t, err)
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM "Clients" WHERE name = 'changed'`).Scan(&n))
	require.Equal(t, 1000, n)
	conn.Close(ctx)

	// The repository mover goes away: the publication stays up.
	require.NoError(t, srv.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, 0, srv.wait(t), srv.stderr.String())
	require.True(t, lockHeldBy(t, home, p.ID), "the serve process ended with the repository mover")
	list := publishedList(t, home)
	require.Len(t, list.Publications, 1)
	require.Equal(t, "up", list.Publications[0].State)
	// A read of the shop database, never read so far, is fetched from the
	// repository mover: it waits for the mover to come back.
	type counted struct {
		n   int
		err error
	}
	read := make(chan counted, 1)
	go func() {
		rctx, cancel := context.WithTimeout(ctx, waitTimeout)
		defer cancel()
		c, err := pgx.Connect(rctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=shop user=postgres password=pw sslmode=disable", port))
		if err != nil {
			read <- counted{err: err}
			return
		}
		defer c.Close(context.Background())
		var n int
		err = c.QueryRow(rctx, `SELECT count(*) FROM pgbench_accounts`).Scan(&n)
		read <- counted{n, err}
	}()
	// The serve process logs each retry: the mover comes back only once a
	// read is waiting for it.
	serveLog := filepath.Join(home, "publications", p.ID, "serve.log")
	deadline := time.Now().Add(waitTimeout)
	for {
		b, err := os.ReadFile(serveLog)
		require.NoError(t, err)
		if strings.Contains(string(b), "repository request interrupted; retrying") {
			break
		}
		select {
		case r := <-read:
			t.Fatalf("a read of data never fetched finished while the repository mover was down: %+v", r)
		default:
		}
		require.True(t, time.Now().Before(deadline), "no read waited for the repository mover in %v:\n%s", waitTimeout, b)
		time.Sleep(20 * time.Millisecond) // polling another process's log
	}
	require.True(t, lockHeldBy(t, home, p.ID), "the serve process ended while a read waited")
	srv = startProc(t, "--home", srvHome, "mover", "serve", "--listen", addr, "--repo", repo)
	require.Equal(t, addr, srv.waitListening(t))
	outage := time.Now()
	select {
	case r := <-read:
		require.NoError(t, r.err)
		require.Equal(t, 200000, r.n)
	case <-time.After(waitTimeout):
		t.Fatalf("a read through the restarted repository mover did not finish in %v", waitTimeout)
	}
	t.Logf("read after the repository mover came back: %v", time.Since(outage).Round(time.Millisecond))

	// Killed, the publication resumes on its layer from the journaled
	// repository mover.
	require.NoError(t, syscall.Kill(p.ServePID, syscall.SIGKILL))
	for lockHeldBy(t, home, p.ID) {
		require.True(t, time.Now().Before(deadline.Add(waitTimeout)), "the serve process of %s still runs after SIGKILL", p.ID)
		time.Sleep(10 * time.Millisecond) // polling another process's exit
	}
	code, out, errs := runCLI(t, "--home", home, "publish", "--resume", p.ID, "--json")
	require.Equal(t, 0, code, errs)
	require.Contains(t, lastLine(out), `"state":"up"`)
	conn = pubConn(t, port, "crm")
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM scratch`).Scan(&n))
	require.Equal(t, 500, n)
	conn.Close(ctx)
	j, err := orchestrator.OpenJournal(home)
	require.NoError(t, err)
	p, err = j.GetPublication(p.ID)
	require.NoError(t, err)
	require.Equal(t, 1, p.Restarts)
	require.Equal(t, peer, p.RepoPeer)

	code, out, errs = runCLI(t, "--home", home, "unpublish", p.ID)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "unpublished "+p.ID)
	requireReleased(t, p)

	// With --on, the publishing mover reads the repository mover: it is the
	// one that needs read there, and the refusal says so.
	moverHome, moverID := initMoverHome(t)
	code, _, errs = runCLI(t, "mover", "trust", homeID, "--allow", "orchestrate", "--home", moverHome)
	require.Equal(t, 0, code, errs)
	pubMover := startProc(t, "--home", moverHome, "mover", "serve", "--listen", "127.0.0.1:0", "--root", t.TempDir())
	on := pubMover.waitListening(t) + "#" + moverID
	publishOn := func() (int, string, string) {
		return runCLI(t, "--home", home, "publish", "--on", on, "--repo-peer", peer, "--restore-point", "latest", "--port", strconv.Itoa(port), "--json")
	}
	code, _, errs = publishOn()
	require.NotEqual(t, 0, code)
	require.Contains(t, errs, "pgporter mover trust "+moverID+" --allow read")
	t.Logf("publishing mover untrusted: %s", strings.TrimSpace(errs))
	code, _, errs = runCLI(t, "mover", "trust", moverID, "--allow", "read", "--home", srvHome)
	require.Equal(t, 0, code, errs)
	code, out, errs = publishOn()
	require.Equal(t, 0, code, errs)
	var res struct{ ID, On string }
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
	require.Equal(t, on, res.On)
	t.Cleanup(func() { runCLI(t, "--home", home, "unpublish", res.ID) })
	mp := moverPublication(t, moverHome, res.ID)
	require.Equal(t, peer, mp.RepoPeer)
	require.Equal(t, orchestrator.PubUp, mp.State)
	conn = pubConn(t, port, "crm")
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM "Clients" WHERE name = 'changed'`).Scan(&n))
	require.Zero(t, n, "the first publication's write is gone")
	conn.Close(ctx)
	code, _, errs = runCLI(t, "--home", home, "unpublish", res.ID)
	require.Equal(t, 0, code, errs)
	requireReleased(t, mp)
	require.NoError(t, pubMover.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, 0, pubMover.wait(t), pubMover.stderr.String())

	require.Equal(t, before, repoState(t, repo))
	require.NoError(t, srv.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, 0, srv.wait(t), srv.stderr.String())
}
