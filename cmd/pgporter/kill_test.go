package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/pgporter/pgporter/internal/testsupport"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/staging"
	"github.com/stretchr/testify/require"
)

// These tests kill a real sender or receiver process with SIGKILL in the
// middle of a transfer and check that rerunning the same send resumes from
// what the receiver holds durably and ends with a byte-identical tree. The
// processes are this test binary re-executed as the CLI (see TestMain).

// waitTimeout bounds every wait for a process or a transfer milestone, so a
// regression fails the test instead of hanging it.
const waitTimeout = 60 * time.Second

// proc is a pgporter process started by a test.
type proc struct {
	cmd       *exec.Cmd
	stderr    testsupport.Buffer
	mu        sync.Mutex // guards stdout
	stdout    []string   // lines so far
	listening chan string
	done      chan struct{} // closed after stdout is drained and cmd.Wait returned
	err       error         // of cmd.Wait, set before done is closed
}

var listenLineRE = regexp.MustCompile(`^listening on (\S+) as \S+$`)

// startProc starts 'pgporter args...' (this test binary as the CLI). A
// cleanup kills it by PID and waits for it if the test ends with it still
// running.
func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), testMainEnv+"=1", testSelfEnv+"="+selfCommand)
	return startCmd(t, cmd)
}

// waitListening returns the address a 'mover serve' process listens on.
func (p *proc) waitListening(t *testing.T) string {
	t.Helper()
	select {
	case addr := <-p.listening:
		return addr
	case <-p.done:
		t.Fatalf("mover serve exited before listening: %v\n%s", p.err, p.stderr.String())
	case <-time.After(waitTimeout):
		t.Fatalf("mover serve did not print its listening line in %v\n%s", waitTimeout, p.stderr.String())
	}
	return ""
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%v did not exit in %v\n%s", p.cmd.Args[1:], waitTimeout, p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// stuckGrace bounds how long kill waits for a killed process to exit before
// taking it for one stuck exiting on its own FUSE mount.
const stuckGrace = 10 * time.Second

// kill sends SIGKILL to the process by PID and waits for it to exit. A
// process killed while it reads the FUSE mount it serves can be stuck
// exiting (see staging.ReleaseDying): kill then returns, and the retry,
// cancel or mover restart that follows must free it, which a cleanup checks.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Kill())
	pid := p.cmd.Process.Pid
	select {
	case <-p.done:
		require.Equal(t, "signal: killed", p.err.Error(), "the process was still running when killed")
		return
	case <-time.After(stuckGrace):
	}
	require.True(t, staging.Dying(pid), "pid %d neither exited nor is dying %v after SIGKILL:%s", pid, stuckGrace, testsupport.ProcThreads(pid))
	t.Logf("pid %d is stuck exiting %v after SIGKILL; what follows must free it:%s", pid, stuckGrace, testsupport.ProcThreads(pid))
	t.Cleanup(func() {
		select {
		case <-p.done:
		case <-time.After(waitTimeout):
			t.Errorf("pid %d, killed and stuck exiting, was not freed by the end of the test:%s", pid, testsupport.ProcThreads(pid))
		}
	})
}

func (p *proc) lastLine() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.stdout) == 0 {
		return ""
	}
	return p.stdout[len(p.stdout)-1]
}

// killTestTree writes about 40 MB shaped like a dump (incompressible files
// beside COPY-like text that zstd shrinks several times) and returns its size.
func killTestTree(t *testing.T, dir string) int64 {
	t.Helper()
	cc := rand.NewChaCha8([32]byte{1, 2, 3})
	rng := rand.New(cc)
	var total int64
	write := func(name string, data []byte) {
		p := filepath.Join(dir, filepath.FromSlash(name))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, data, 0o644))
		total += int64(len(data))
	}
	for i := range 4 {
		b := make([]byte, 7<<20)
		_, _ = cc.Read(b)
		write(fmt.Sprintf("blobs/%d.dat", 4000+i), b)
	}
	for i := range 3 {
		var b bytes.Buffer
		for row := 0; b.Len() < 4<<20; row++ {
			fmt.Fprintf(&b, "%d\t%d\t%d\t%s\n", row, rng.IntN(50)+1, rng.IntN(100000)-50000, strings.Repeat(" ", 84))
		}
		write(fmt.Sprintf("%d.dat", 3000+i), b.Bytes())
	}
	write("toc.dat", []byte("toc"))
	write("empty.dat", nil)
	return total
}

// requireSameTree checks that dst holds exactly src's files plus the
// manifest, byte for byte, and that mover.Verify accepts it.
func requireSameTree(t *testing.T, src, dst string) {
	t.Helper()
	testsupport.RequireSameFiles(t, src, dst, 0, mover.ManifestName)
	_, err := os.Stat(dst + ".partial")
	require.ErrorIs(t, err, fs.ErrNotExist)
	rep, err := mover.Verify(context.Background(), dst)
	require.NoError(t, err)
	require.Empty(t, rep.Problems)
}

// initMoverHome makes a home with a new mover identity and returns it with
// the peer ID.
func initMoverHome(t *testing.T) (home, id string) {
	t.Helper()
	home = t.TempDir()
	code, out, errs := runCLI(t, "mover", "init", "--home", home)
	require.Equal(t, 0, code, errs)
	return home, lastLine(out)
}

// newMoverPair creates a sender and a receiver identity; the receiver
// trusts the sender with send.
func newMoverPair(t *testing.T) (sendHome, recvHome string, recvID mover.PeerID) {
	t.Helper()
	sendHome, recvHome = filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	sid, _, err := mover.InitIdentity(sendHome)
	require.NoError(t, err)
	rid, _, err := mover.InitIdentity(recvHome)
	require.NoError(t, err)
	ts, err := mover.OpenTrust(recvHome)
	require.NoError(t, err)
	require.NoError(t, ts.Trust(mover.TrustedPeer{ID: sid.ID, Name: "sender", Perms: mover.PermSend, Added: time.Now()}))
	return sendHome, recvHome, rid.ID
}

// atFraction returns a channel closed once report sees at least 40% of total.
func atFraction(total int64) (report func(durable int64), reached <-chan struct{}) {
	ch := make(chan struct{})
	var once sync.Once
	return func(durable int64) {
		if durable*10 >= total*4 {
			once.Do(func() { close(ch) })
		}
	}, ch
}

func requireResumed(t *testing.T, res *mover.SendResult, total int64) {
	t.Helper()
	require.Equal(t, total, res.Bytes)
	require.False(t, res.AlreadyComplete)
	require.Positive(t, res.ResumedChunks, "the rerun resumed nothing")
	require.Positive(t, res.ResumedBytes)
	require.GreaterOrEqual(t, res.ResumedBytes*10, total*4, "less than the 40%% seen durable was resumed")
	require.LessOrEqual(t, res.ChunksSent, res.ChunksTotal-res.ResumedChunks, "the rerun sent chunks the receiver held durably")
}

func TestResumeAfterSenderKilled(t *testing.T) {
	t.Parallel()
	sendHome, recvHome, recvID := newMoverPair(t)
	src, root := filepath.Join(t.TempDir(), "src"), t.TempDir()
	total := killTestTree(t, src)
	dest := filepath.Join(root, "db1")

	report, reached := atFraction(total)
	var srvLog testsupport.Buffer
	srv, err := mover.NewServer(mover.ServerOptions{
		Home: recvHome, Listen: "127.0.0.1:0", Roots: []string{root},
		Log:          slog.New(slog.NewTextHandler(&srvLog, &slog.HandlerOptions{Level: slog.LevelDebug})),
		SyncInterval: 100 * time.Millisecond,
		OnDurable:    func(_ string, durable int64) { report(durable) },
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-served
	})
	addr := srv.Addr().String()

	args := []string{"send", "--home", sendHome, "--to", addr, "--peer", recvID.String(), "--json", src, dest}
	first := startProc(t, append([]string{"--bwlimit", "10M"}, args...)...)
	select {
	case <-reached:
	case <-first.done:
		t.Fatalf("the sender exited (%v) before 40%% was durable; stdout %q\n%s", first.err, first.lastLine(), first.stderr.String())
	case <-time.After(waitTimeout):
		t.Fatalf("40%% was not durable within %v\n%s", waitTimeout, first.stderr.String())
	}
	first.kill(t)
	require.NoDirExists(t, dest, "the transfer completed although its sender was killed")

	second := startProc(t, args...)
	require.Equal(t, 0, second.wait(t), second.stderr.String())
	var res mover.SendResult
	require.NoError(t, json.Unmarshal([]byte(second.lastLine()), &res), "stdout's last line: %q", second.lastLine())
	t.Logf("rerun: %+v", res)
	if res.Seconds > 10 {
		// Known: the receiver lets the rerun in only once the killed sender's
		// connection has timed out (30s idle), see the server log.
		t.Logf("the rerun took %.1fs; receiver log:\n%s", res.Seconds, srvLog.String())
	}
	requireResumed(t, &res, total)
	requireSameTree(t, src, dest)
}

func TestResumeAfterReceiverKilled(t *testing.T) {
	t.Parallel()
	sendHome, recvHome, recvID := newMoverPair(t)
	src, root := filepath.Join(t.TempDir(), "src"), t.TempDir()
	total := killTestTree(t, src)
	dest := filepath.Join(root, "db1")
	// A fixed port, so that the restarted receiver is where the sender expects.
	listen := "127.0.0.1:" + strconv.Itoa(freeUDPPort(t))
	serve := []string{"mover", "serve", "--home", recvHome, "--listen", listen, "--root", root}

	recv := startProc(t, serve...)
	addr := recv.waitListening(t)
	require.Equal(t, listen, addr)

	s, err := mover.NewSender(sendHome, nil)
	require.NoError(t, err)
	defer s.Close()
	report, reached := atFraction(total)
	o := mover.SendOptions{
		Src: src, Dest: dest,
		BWLimit:     10 << 20,
		RetryFor:    -1,
		IdleTimeout: time.Second,
		Progress:    func(p mover.SendProgress) { report(p.Durable) },
	}
	type sent struct {
		res *mover.SendResult
		err error
	}
	firstDone := make(chan sent, 1)
	go func() {
		res, err := s.Send(context.Background(), addr, recvID, o)
		firstDone <- sent{res, err}
	}()
	select {
	case <-reached:
	case r := <-firstDone:
		t.Fatalf("the first send ended (%+v, %v) before 40%% was durable", r.res, r.err)
	case <-time.After(waitTimeout):
		t.Fatalf("40%% was not durable within %v\n%s", waitTimeout, recv.stderr.String())
	}
	recv.kill(t)
	var first sent
	select {
	case first = <-firstDone:
	case <-time.After(waitTimeout):
		t.Fatalf("Send did not fail within %v of the receiver's death (IdleTimeout 1s, no retries)", waitTimeout)
	}
	require.Error(t, first.err, "Send succeeded although the receiver was killed")
	t.Logf("first send: %v", first.err)
	require.NoDirExists(t, dest)

	recv = startProc(t, serve...)
	require.Equal(t, listen, recv.waitListening(t))
	o.BWLimit, o.Progress = 0, nil
	res, err := s.Send(context.Background(), addr, recvID, o)
	require.NoError(t, err, recv.stderr.String())
	t.Logf("rerun: %+v", *res)
	requireResumed(t, res, total)
	requireSameTree(t, src, dest)

	require.NoError(t, recv.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, 0, recv.wait(t), "mover serve did not stop gracefully on SIGINT\n%s", recv.stderr.String())
}
