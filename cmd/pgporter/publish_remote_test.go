package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/orchestrator"
)

// moverPublication reads publication id from the mover's journal.
func moverPublication(t *testing.T, home, id string) *orchestrator.Publication {
	t.Helper()
	j, err := orchestrator.OpenJournal(home)
	require.NoError(t, err)
	p, err := j.GetPublication(id)
	require.NoError(t, err)
	return p
}

// TestPublishOnMoverRestart publishes through a mover process on loopback
// ('publish --on'), writes into the publication, exports from it while
// another client queries it, then SIGKILLs the serve processes of that
// publication and of a second one (--on-restart cleanup) and the mover
// itself. The restarted mover serves the first again on the same port with
// the write there, and removes the second, leaving no mount behind; killed
// once more, the first is resumed from the orchestrator through the mover.
func TestPublishOnMoverRestart(t *testing.T) {
	_, repo := exportFixture(t)
	// A second repository: a publication holds its repository open.
	repo2 := filepath.Join(t.TempDir(), "repo2")
	out, err := exec.Command("cp", "-a", repo, repo2).CombinedOutput()
	require.NoError(t, err, string(out))

	moverHome, moverID := initMoverHome(t)
	orchHome, orchID := initMoverHome(t)
	root := t.TempDir()
	require.NoError(t, os.Chmod(root, 0o755))
	// The mover decides which local repository jobs read: publish --on
	// --repo names that one, or is refused.
	srv := startProc(t, "--home", moverHome, "mover", "serve", "--listen", "127.0.0.1:0", "--root", root, "--job-repo", repo)
	addr := srv.waitListening(t)
	peer := addr + "#" + moverID
	port, port2 := freeTCPPort(t), freeTCPPort(t)
	publishOn := func() (int, string, string) {
		return runCLI(t, "--home", orchHome, "publish", "--on", peer, "--repo", repo, "--restore-point", "latest", "--port", strconv.Itoa(port), "--json")
	}

	// Not trusted yet: the error names the ID to trust and the command.
	code, _, errs := publishOn()
	require.NotEqual(t, 0, code)
	require.Contains(t, errs, "pgporter mover trust "+orchID+" --allow orchestrate")
	code, _, errs = runCLI(t, "mover", "trust", orchID, "--allow", "orchestrate", "--home", moverHome)
	require.Equal(t, 0, code, errs)

	code, out2, errs := publishOn()
	require.Equal(t, 0, code, errs)
	var res struct {
		ID, Host, On string
		Port         int
	}
	require.NoError(t, json.Unmarshal([]byte(lastLine(out2)), &res), out2)
	require.Equal(t, peer, res.On)
	require.Equal(t, port, res.Port)
	t.Cleanup(func() {
		runCLI(t, "--home", orchHome, "unpublish", res.ID)
		runCLI(t, "--home", moverHome, "unpublish", res.ID)
	})
	p1 := moverPublication(t, moverHome, res.ID)
	require.Equal(t, orchestrator.PubUp, p1.State)
	require.Equal(t, orchestrator.OnRestartRestart, p1.OnRestart)
	// A publication of this host, in the mover's home, cleaned up when the
	// mover finds it dead.
	p2 := publishCLI(t, moverHome, repo2, port2, "--on-restart", "cleanup")

	ctx := context.Background()
	conn := pubConn(t, port, "crm")
	_, err = conn.Exec(ctx, `CREATE TABLE kept AS SELECT generate_series(1, 500) AS x`)
	require.NoError(t, err)
	conn.Close(ctx)

	list := publishedList(t, orchHome)
	require.Len(t, list.Publications, 1)
	require.Equal(t, res.ID, list.Publications[0].ID)
	require.Equal(t, "up", list.Publications[0].State)
	require.Positive(t, list.Publications[0].CowBytes)

	// Export on the mover's host while another client keeps querying.
	qconn := pubConn(t, port, "shop")
	var queries atomic.Int64
	var qerr error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n int
			if qerr = qconn.QueryRow(ctx, `SELECT count(*) FROM pgbench_accounts`).Scan(&n); qerr != nil {
				return
			}
			queries.Add(1)
		}
	})
	to := filepath.Join(root, "exports")
	code, _, errs = runCLI(t, "--home", orchHome, "export", "--published", res.ID, "--db", "crm", "--db", "shop", "--to", to, "--json")
	close(stop)
	wg.Wait()
	require.Equal(t, 0, code, errs)
	require.NoError(t, qerr)
	require.Positive(t, queries.Load())
	for _, db := range []string{"crm", "shop"} {
		code, _, errs = runCLI(t, "verify", filepath.Join(to, db))
		require.Equal(t, 0, code, errs)
	}
	// Sent on from the mover's host to a target mover (here the mover
	// itself, trusting its own ID with send).
	code, _, errs = runCLI(t, "mover", "trust", moverID, "--allow", "orchestrate,send", "--home", moverHome)
	require.Equal(t, 0, code, errs)
	sent := filepath.Join(root, "sent")
	code, out2, errs = runCLI(t, "--home", orchHome, "export", "--published", res.ID, "--db", "crm", "--target", peer, "--to", sent, "--json")
	require.Equal(t, 0, code, errs)
	var sentRes exportJSON
	require.NoError(t, json.Unmarshal([]byte(lastLine(out2)), &sentRes), out2)
	require.Equal(t, "done", sentRes.State)
	require.Positive(t, sentRes.Databases[0].WireBytes)
	code, _, errs = runCLI(t, "verify", filepath.Join(sent, "crm"))
	require.Equal(t, 0, code, errs)

	// A session that fails on the mover is continued by retry from here,
	// and another is cancelled there.
	failing := func(dir string) string {
		t.Helper()
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "crm"), 0o755)) // in the way on the mover's host
		code, out, errs := runCLI(t, "--home", orchHome, "export", "--published", res.ID, "--db", "crm", "--to", dir, "--json")
		require.NotEqual(t, 0, code, out)
		require.Contains(t, errs, "exists")
		var r exportJSON
		require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &r), out)
		require.Equal(t, "failed", r.State)
		return r.Session
	}
	r1 := filepath.Join(root, "r1")
	s1 := failing(r1)
	require.NoError(t, os.Remove(filepath.Join(r1, "crm")))
	code, _, errs = runCLI(t, "--home", orchHome, "retry", s1)
	require.Equal(t, 0, code, errs)
	code, _, errs = runCLI(t, "verify", filepath.Join(r1, "crm"))
	require.Equal(t, 0, code, errs)
	s2 := failing(filepath.Join(root, "r2"))
	code, out2, errs = runCLI(t, "--home", orchHome, "cancel", s2)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out2, "cancelled")
	code, _, errs = runCLI(t, "--home", orchHome, "retry", s2)
	require.NotEqual(t, 0, code)
	require.Contains(t, errs, "cancelled")

	// Outside the mover's roots: refused there.
	code, _, errs = runCLI(t, "--home", orchHome, "export", "--published", res.ID, "--db", "crm", "--to", t.TempDir())
	require.NotEqual(t, 0, code)
	require.Contains(t, errs, "outside this mover's roots")

	// SIGKILL both serve processes and the mover.
	for _, p := range []*orchestrator.Publication{moverPublication(t, moverHome, p1.ID), moverPublication(t, moverHome, p2.ID)} {
		require.Positive(t, p.ServePID)
		require.NoError(t, syscall.Kill(p.ServePID, syscall.SIGKILL))
	}
	srv.kill(t)
	deadline := time.Now().Add(waitTimeout)
	for lockHeldBy(t, moverHome, p1.ID) || lockHeldBy(t, moverHome, p2.ID) {
		require.True(t, time.Now().Before(deadline), "the serve processes still run after SIGKILL")
		time.Sleep(10 * time.Millisecond) // polling other processes' exit
	}
	for _, p := range publishedList(t, moverHome).Publications {
		require.Equal(t, "dead", p.State, p.ID)
	}

	// The restarted mover (same address) recovers them before it listens.
	restartStart := time.Now()
	srv = startProc(t, "--home", moverHome, "mover", "serve", "--listen", addr, "--root", root, "--job-repo", repo)
	require.Equal(t, addr, srv.waitListening(t))
	t.Logf("mover restart, one publication resumed and one cleaned: listening after %v", time.Since(restartStart).Round(time.Millisecond))
	back := moverPublication(t, moverHome, p1.ID)
	require.Equal(t, orchestrator.PubUp, back.State, back.Error)
	require.Equal(t, 1, back.Restarts)
	require.Equal(t, port, back.Port)
	require.NotEqual(t, p1.InstancePID, back.InstancePID)
	conn = pubConn(t, port, "crm")
	var n int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM kept`).Scan(&n))
	require.Equal(t, 500, n, "the write made before the kill")
	conn.Close(ctx)
	gone := moverPublication(t, moverHome, p2.ID)
	require.Equal(t, orchestrator.PubGone, gone.State)
	requireReleased(t, p2)
	require.False(t, testsupport.IsMounted(t, p2.Lower()))

	list = publishedList(t, orchHome)
	require.Len(t, list.Publications, 1)
	require.Equal(t, "up", list.Publications[0].State)

	// Killed again, resumed from here through the mover.
	require.NoError(t, syscall.Kill(back.ServePID, syscall.SIGKILL))
	deadline = time.Now().Add(waitTimeout)
	for lockHeldBy(t, moverHome, p1.ID) {
		require.True(t, time.Now().Before(deadline), "the serve process still runs after SIGKILL")
		time.Sleep(10 * time.Millisecond) // polling another process's exit
	}
	require.Equal(t, "dead", publishedList(t, orchHome).Publications[0].State, "as the mover reports it")
	code, _, errs = runCLI(t, "--home", orchHome, "publish", "--resume", res.ID)
	require.Equal(t, 0, code, errs)
	back = moverPublication(t, moverHome, p1.ID)
	require.Equal(t, 2, back.Restarts)
	conn = pubConn(t, port, "crm")
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM kept`).Scan(&n))
	require.Equal(t, 500, n)
	conn.Close(ctx)

	// The last export ends the publication (--unpublish-after).
	code, _, errs = runCLI(t, "--home", orchHome, "export", "--published", res.ID, "--db", "crm", "--to", filepath.Join(root, "last"), "--unpublish-after")
	require.Equal(t, 0, code, errs)
	code, _, errs = runCLI(t, "verify", filepath.Join(root, "last", "crm"))
	require.Equal(t, 0, code, errs)
	requireReleased(t, back)
	require.False(t, testsupport.IsMounted(t, back.Lower()))
	require.Empty(t, publishedList(t, orchHome).Publications)
	require.Empty(t, publishedList(t, moverHome).Publications)

	require.NoError(t, srv.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, 0, srv.wait(t), srv.stderr.String())
}
