package testsupport

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// netnsWait bounds every wait in these tests.
const netnsWait = 20 * time.Second

// serveTCP accepts on ln until it is closed: each connection gets
// "<name> got <first line>\n", or payload when the line is "payload".
// The test's cleanup closes ln and waits.
func serveTCP(t *testing.T, ln net.Listener, name string, payload []byte) {
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(netnsWait))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err == nil {
				if line == "payload\n" {
					c.Write(payload)
				} else {
					io.WriteString(c, name+" got "+line)
				}
			}
			c.Close()
		}
	})
}

// dialFrom connects from h to addr within timeout.
func dialFrom(h *Host, addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return h.DialContext(ctx, "tcp", addr)
}

// ask sends line from h to addr and returns the reply.
func ask(h *Host, addr, line string, timeout time.Duration) (string, error) {
	c, err := dialFrom(h, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

func netnsList(t *testing.T) string {
	out, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	return string(out)
}

func TestNetnsHosts(t *testing.T) {
	RequireNetns(t)
	var (
		names []string
		sleep *exec.Cmd // still running when its test ends
	)
	t.Run("run", func(t *testing.T) {
		n := NewNetwork(t)
		a, b := n.AddHost(t, "a"), n.AddHost(t, "b")
		names = []string{n.router.Netns(), a.Netns(), b.Netns()}
		require.Equal(t, "198.18.1.2", a.Addr().String())
		require.Equal(t, "198.18.2.2", b.Addr().String())
		list := netnsList(t)
		for _, ns := range names {
			require.Contains(t, list, ns)
		}

		ln, err := a.Listen("tcp", a.AddrPort(0).String())
		require.NoError(t, err)
		serveTCP(t, ln, "a", nil)
		addr := ln.Addr().String()
		require.True(t, strings.HasPrefix(addr, "198.18.1.2:"), addr)

		// A process in b (netcat) reaches a's listener through the router.
		ctx, cancel := context.WithTimeout(context.Background(), netnsWait)
		defer cancel()
		host, port, _ := net.SplitHostPort(addr)
		nc := b.Command(ctx, "nc", "-N", "-w", "10", host, port)
		nc.Stdin = strings.NewReader("hello\n")
		out, err := nc.Output()
		require.NoError(t, err)
		require.Equal(t, "a got hello\n", string(out))

		// So does a socket opened in b's namespace by this process.
		reply, err := ask(b, addr, "in-process", netnsWait)
		require.NoError(t, err)
		require.Equal(t, "a got in-process\n", reply)

		require.NoError(t, n.SetLinkDown(a))
		_, err = ask(b, addr, "while down", time.Second)
		require.Error(t, err, "a was reachable with its link down")

		require.NoError(t, n.SetLinkUp(a))
		deadline := time.Now().Add(netnsWait)
		for {
			reply, err = ask(b, addr, "after up", time.Second)
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		require.NoError(t, err, "a unreachable %v after its link came back up", netnsWait)
		require.Equal(t, "a got after up\n", reply)

		// A command left running is the cleanup's to kill.
		sleep = a.Command(context.Background(), "sleep", "600")
		require.NoError(t, sleep.Start())
	})
	require.NotEmpty(t, names)
	list := netnsList(t)
	for _, ns := range names {
		require.NotContains(t, list, ns, "namespace left behind")
	}
	err := sleep.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	require.Equal(t, syscall.SIGKILL, ee.Sys().(syscall.WaitStatus).Signal(), "%v", err)
}

func TestNetnsRate(t *testing.T) {
	n := NewNetwork(t)
	a, b := n.AddHost(t, "a"), n.AddHost(t, "b")
	const size, rate = 1 << 20, 1 << 20 // a second's worth
	ln, err := a.Listen("tcp", a.AddrPort(0).String())
	require.NoError(t, err)
	serveTCP(t, ln, "a", make([]byte, size))

	fetch := func() time.Duration {
		t.Helper()
		c, err := dialFrom(b, ln.Addr().String(), netnsWait)
		require.NoError(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(netnsWait))
		_, err = io.WriteString(c, "payload\n")
		require.NoError(t, err)
		start := time.Now()
		got, err := io.Copy(io.Discard, c)
		require.NoError(t, err)
		require.EqualValues(t, size, got)
		return time.Since(start)
	}

	require.NoError(t, n.SetRate(a, rate))
	limited := fetch()
	t.Logf("1 MiB at 1 MiB/s took %v", limited)
	// The first burst and queued bytes arrive early; the rest waits for tokens.
	require.Greater(t, limited, 700*time.Millisecond)

	require.NoError(t, n.SetRate(a, 0))
	require.NoError(t, n.SetRate(a, 0), "removing no limit")
	for _, end := range [][2]string{{n.router.Netns(), a.routerDev()}, {a.Netns(), "eth0"}} {
		out, err := exec.Command("tc", "-n", end[0], "qdisc", "show", "dev", end[1]).Output()
		require.NoError(t, err)
		require.NotContains(t, string(out), "tbf")
	}
	t.Logf("without the limit: %v", fetch())
}

// TestNetnsSweep: namespaces named for a dead process are deleted by the
// next run; those of live processes (this one) are not.
func TestNetnsSweep(t *testing.T) {
	RequireNetns(t)
	// A PID that exists no more: a child that has been reaped.
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	pid := dead.ProcessState.Pid()
	require.False(t, alive(pid))
	stale := netnsPrefix + strconv.Itoa(pid) + "-00000000-r"
	live := newNetnsName("sweep")
	for _, ns := range []string{stale, live} {
		require.NoError(t, ipCmd("netns", "add", ns))
		t.Cleanup(func() { deleteNetns(ns) })
	}
	sweepStaleNetns()
	_, err := os.Stat(netnsDir + "/" + stale)
	require.True(t, errors.Is(err, os.ErrNotExist), "stale namespace not swept: %v", err)
	require.FileExists(t, netnsDir+"/"+live)
}
