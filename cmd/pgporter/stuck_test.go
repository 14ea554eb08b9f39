package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/staging"
)

// TestRetryFreesExportStuckOnItsMount: an export that reads its restore
// point through its own FUSE mount, killed while that read waits on the
// repository, can be left unable to finish exiting: a thread waits for an
// answer that none of its dead server threads will give, and keeps the
// session's lock. 'pgporter retry' must free it by aborting the connection
// and then finish the export. The test binary runs with a fresh machine's mounts
// (FreshMounts: fusectl unmounted), where issue 14 found retry could never
// free it.
func TestRetryFreesExportStuckOnItsMount(t *testing.T) {
	_, repo := exportFixture(t)
	srvHome, srvID := initMoverHome(t)
	home, homeID := initMoverHome(t)
	code, _, errs := runCLI(t, "mover", "trust", homeID, "--allow", "read", "--home", srvHome)
	require.Equal(t, 0, code, errs)
	srv := startProc(t, "--home", srvHome, "mover", "serve", "--listen", "127.0.0.1:0", "--repo", repo)
	peer := srv.waitListening(t) + "#" + srvID
	stopped := false
	t.Cleanup(func() {
		if stopped {
			_ = srv.cmd.Process.Signal(syscall.SIGCONT)
		}
	})

	to := t.TempDir()
	p := startProc(t, "--home", home, "export", "--repo-peer", peer, "--db", "shop", "--to", to, "--staging-dir", cliStagingDir(t))
	pid := p.cmd.Process.Pid
	// Stop the repository once the export has planned (the plan reads the
	// catalog from it) and starts mounting: the export's first read of its
	// own mount then waits on a fetch that does not come.
	deadline := time.Now().Add(waitTimeout)
	for !strings.Contains(p.stderr.String(), "• mount") {
		select {
		case <-p.done:
			t.Fatalf("export ended before mounting: %v\n%s", p.err, p.stderr.String())
		case <-time.After(5 * time.Millisecond): // polling another process's output
		}
		require.True(t, time.Now().Before(deadline), "export did not reach its mount")
	}
	require.NoError(t, srv.cmd.Process.Signal(syscall.SIGSTOP))
	stopped = true
	for !waitsOnFUSE(pid) {
		select {
		case <-p.done:
			t.Fatalf("export ended: %v\n%s", p.err, p.stderr.String())
		case <-time.After(10 * time.Millisecond): // polling another process's threads
		}
		require.True(t, time.Now().Before(deadline), "the export never read its own mount:%s\n%s", testsupport.ProcThreads(pid), p.stderr.String())
	}
	id := sessionLineRE.FindStringSubmatch(p.stderr.String())
	require.NotNil(t, id, p.stderr.String())
	t.Cleanup(func() {
		// Should the test fail before retry frees the export, free it here:
		// a process stuck exiting outlives the test binary.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = staging.ReleaseDying(ctx, pid, filepath.Join(os.TempDir(), "pgporter-"+id[1]))
	})

	require.NoError(t, p.cmd.Process.Kill())
	// Whether the killed export stays stuck depends on the order in which
	// the kernel closes its descriptors (the read's file before or after
	// /dev/fuse); orchestrator's TestLockFreesHolderStuckExiting forces the
	// stuck case. Either way, retry must finish the session.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	if err := staging.WaitExit(ctx, pid); err != nil {
		t.Logf("the killed export is stuck exiting; retry must free it:%s", testsupport.ProcThreads(pid))
	}
	cancel()
	require.NoError(t, srv.cmd.Process.Signal(syscall.SIGCONT))
	stopped = false

	code, out, errs := runCLI(t, "--home", home, "retry", id[1], "--json")
	require.Equal(t, 0, code, errs)
	var res exportJSON
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
	require.Equal(t, "done", res.State)
	rep, err := mover.Verify(context.Background(), filepath.Join(to, "shop"))
	require.NoError(t, err)
	require.Empty(t, rep.Problems)
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		t.Fatalf("the stuck export was not freed:%s", testsupport.ProcThreads(pid))
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	require.NotContains(t, string(mounts), "pgporter-"+id[1])
}

// waitsOnFUSE reports whether a thread of pid waits on a FUSE request: for
// an answer, or for a page that a FUSE read is filling.
func waitsOnFUSE(pid int) bool {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, tk := range tasks {
		w, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/wchan", pid, tk.Name()))
		if string(w) == "request_wait_answer" || string(w) == "folio_wait_bit_common" {
			return true
		}
	}
	return false
}
