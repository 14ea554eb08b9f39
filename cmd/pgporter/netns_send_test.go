package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/mover"
	"github.com/stretchr/testify/require"
)

// These tests run a receiving 'pgporter mover serve' and a 'pgporter send'
// as separate processes on separate test hosts (network namespaces joined
// through a router, see testsupport.NewNetwork), so the transfer crosses a
// link the test can take down.

const (
	netnsMoverPort   = 7448
	netnsMetricsAddr = "127.0.0.1:9448" // loopback of the receiver's namespace
)

// startInHost starts 'pgporter args...' inside h: this test binary
// re-executed as the CLI (see TestMain) through 'ip netns exec'.
func startInHost(t *testing.T, h *testsupport.Host, args ...string) *proc {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := h.Command(context.Background(), exe, args...)
	cmd.Env = append(os.Environ(), testMainEnv+"=1")
	return startCmd(t, cmd)
}

// startCmd is startProc for a command already built. A cleanup kills it by
// PID and waits for it if the test ends with it still running.
func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, listening: make(chan string, 1), done: make(chan struct{})}
	cmd.Stderr = &p.stderr
	// Stdout through a writer, not StdoutPipe: Wait then gives up on the
	// pipes WaitDelay after the process ended, if something it started
	// still holds them, instead of hanging the test.
	out, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.WaitDelay = 5 * time.Second
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.stdout = append(p.stdout, line)
			p.mu.Unlock()
			if m := listenLineRE.FindStringSubmatch(line); m != nil {
				select {
				case p.listening <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, out)
	}()
	go func() {
		p.err = cmd.Wait()
		pw.Close()
		<-scanned
		close(p.done)
	}()
	return p
}

// netnsSetup is a receiver serving on host a and a sender's home for host b.
type netnsSetup struct {
	net            *testsupport.Network
	a, b           *testsupport.Host
	recv           *proc
	sendHome, to   string
	recvID         mover.PeerID
	src, dest      string
	total          int64
	metricsClient  *http.Client
	metricsRequest string
}

func newNetnsSetup(t *testing.T) *netnsSetup {
	t.Helper()
	n := testsupport.NewNetwork(t)
	s := &netnsSetup{net: n, a: n.AddHost(t, "a"), b: n.AddHost(t, "b")}
	var recvHome string
	s.sendHome, recvHome, s.recvID = newMoverPair(t)
	root := t.TempDir()
	s.src, s.dest = filepath.Join(t.TempDir(), "src"), filepath.Join(root, "db1")
	s.total = killTestTree(t, s.src)

	s.to = s.a.AddrPort(netnsMoverPort).String()
	s.recv = startInHost(t, s.a, "mover", "serve", "--home", recvHome, "--listen", s.to, "--root", root, "--metrics", netnsMetricsAddr)
	require.Equal(t, s.to, s.recv.waitListening(t))

	tr := &http.Transport{DialContext: s.a.DialContext, DisableKeepAlives: true}
	s.metricsClient = &http.Client{Transport: tr, Timeout: 5 * time.Second}
	s.metricsRequest = "http://" + netnsMetricsAddr + "/metrics"
	return s
}

// send starts 'pgporter send' on host b with extra flags.
func (s *netnsSetup) send(t *testing.T, flags ...string) *proc {
	t.Helper()
	args := append([]string{"send", "--home", s.sendHome, "--to", s.to, "--peer", s.recvID.String(), "--json"}, flags...)
	return startInHost(t, s.b, append(args, s.src, s.dest)...)
}

// durable returns the receiver's pgporter_mover_durable_bytes_total, read
// from its metrics endpoint inside host a.
func (s *netnsSetup) durable() (int64, error) {
	resp, err := s.metricsClient.Get(s.metricsRequest)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "pgporter_mover_durable_bytes_total "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return int64(f), err
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no durable_bytes_total in the receiver's metrics")
}

// finish waits for the sender to succeed and checks the result and the tree.
func (s *netnsSetup) finish(t *testing.T, sender *proc) *mover.SendResult {
	t.Helper()
	require.Equal(t, 0, sender.wait(t), "sender:\n%s\nreceiver:\n%s", sender.stderr.String(), s.recv.stderr.String())
	var res mover.SendResult
	require.NoError(t, json.Unmarshal([]byte(sender.lastLine()), &res), "stdout's last line: %q", sender.lastLine())
	t.Logf("send: %+v", res)
	require.Equal(t, s.total, res.Bytes)
	requireSameTree(t, s.src, s.dest)
	return &res
}

func TestNetnsSend(t *testing.T) {
	t.Parallel()
	s := newNetnsSetup(t)
	s.finish(t, s.send(t))
}

// TestNetnsSendOutage takes the receiver's link down for a few seconds in
// the middle of a transfer: the same send rides it out and completes.
func TestNetnsSendOutage(t *testing.T) {
	t.Parallel()
	const outage = 3 * time.Second
	s := newNetnsSetup(t)
	sender := s.send(t, "--bwlimit", "5M") // several seconds for the whole tree

	// Wait until a quarter of the tree is durable at the receiver.
	deadline := time.After(waitTimeout)
	for {
		d, err := s.durable()
		require.NoError(t, err)
		if d*4 >= s.total {
			require.Less(t, d, s.total, "the transfer was complete before the outage")
			t.Logf("link down with %d of %d bytes durable", d, s.total)
			break
		}
		select {
		case <-sender.done:
			t.Fatalf("the sender exited (%v) before a quarter was durable\n%s", sender.err, sender.stderr.String())
		case <-deadline:
			t.Fatalf("a quarter was not durable within %v\n%s", waitTimeout, sender.stderr.String())
		case <-time.After(20 * time.Millisecond): // poll interval
		}
	}

	require.NoError(t, s.net.SetLinkDown(s.a))
	select {
	case <-sender.done:
		s.net.SetLinkUp(s.a)
		t.Fatalf("the sender exited (%v) during the outage\n%s", sender.err, sender.stderr.String())
	case <-time.After(outage): // the outage's length, not a wait for an event
	}
	d, err := s.durable()
	require.NoError(t, err)
	require.Less(t, d, s.total, "the transfer completed although the link was down")
	require.NoError(t, s.net.SetLinkUp(s.a))
	t.Logf("link up with %d bytes durable", d)

	res := s.finish(t, sender)
	require.GreaterOrEqual(t, res.Seconds, outage.Seconds())
	t.Logf("reconnects: %d; sender log:\n%s", res.Reconnects, sender.stderr.String())
}
