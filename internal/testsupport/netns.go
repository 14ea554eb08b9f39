package testsupport

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Test hosts are network namespaces, each joined to a router namespace by a
// veth pair: host n is 198.18.n.2/24 on its eth0, the router is 198.18.n.1
// on its side ("hN"), and every host routes by default through the router,
// so hosts reach one another and nothing else. Addresses come from
// 198.18.0.0/15, reserved for network benchmarking (RFC 2544); since every
// namespace has its own addresses and ports, parallel tests reuse them
// without colliding. Both ends of each veth are created inside the
// namespaces, so the root namespace is never touched.
//
// A link can be slowed and broken three ways: SetLinkDown (the router's
// veth end down: the router answers 'unreachable'), SetRate (tc tbf on both
// veth ends) and the user-space emulator of netemu.go (SetLinkProfile,
// Outage: delay, jitter, loss, reordering, rate, silent outages).
//
// Namespace names are netnsPrefix, the creating process's PID, a random tag
// and a role; a later run deletes namespaces whose creating process is dead
// (a test binary killed before its cleanups).

const (
	netnsPrefix = "pgporter-test-"
	netnsDir    = "/run/netns" // where 'ip netns' mounts named namespaces
	// maxHosts is how many hosts one Network can hold: one /24 each, in 198.18.1.0
	// to 198.18.254.0.
	maxHosts = 254
	// teardownTimeout bounds the wait for killed processes to leave a namespace.
	teardownTimeout = 30 * time.Second
)

var hostNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,15}$`)

var (
	netnsProbeOnce sync.Once
	netnsProbeErr  error
	netnsSweepOnce sync.Once
)

// RequireNetns skips the test, or fails it when CI=true, unless this process
// can create network namespaces with iproute2's ip: it must run as root with
// ip and tc on PATH. The first call creates and deletes a namespace to prove it.
func RequireNetns(t testing.TB) {
	t.Helper()
	netnsProbeOnce.Do(func() { netnsProbeErr = probeNetns() })
	if netnsProbeErr != nil {
		SkipOrFail(t, "network namespaces not available: "+netnsProbeErr.Error())
	}
}

func probeNetns() error {
	if os.Geteuid() != 0 {
		return errors.New("not running as root")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s (iproute2, installed by scripts/setup): %w", tool, err)
		}
	}
	name := newNetnsName("probe")
	if err := ipCmd("netns", "add", name); err != nil {
		return err
	}
	return ipCmd("netns", "del", name)
}

// Network is a router namespace that test hosts join. Create it with
// NewNetwork; the test's cleanup deletes it and its hosts.
type Network struct {
	base   string // netns name prefix shared by the router and its hosts
	router *Host

	mu     sync.Mutex // guards hosts, emus, closed
	hosts  []*Host
	emus   map[*Host]*linkEmu // links with an emulator in their path (netemu.go)
	closed bool               // the router is being torn down: no new emulators
}

// Host is a network namespace joined to a Network's router.
type Host struct {
	name string     // as given to AddHost; "router" for the router
	ns   string     // netns name
	n    int        // index: the host's subnet is 198.18.n.0/24
	addr netip.Addr // on its eth0; invalid for the router

	mu   sync.Mutex // guards cmds
	cmds []*exec.Cmd
}

// NewNetwork creates a router namespace with IPv4 forwarding on. It calls
// RequireNetns first. The cleanup kills what still runs in it and deletes it,
// after the hosts' cleanups have done the same for each host.
func NewNetwork(t testing.TB) *Network {
	t.Helper()
	RequireNetns(t)
	netnsSweepOnce.Do(sweepStaleNetns)
	n := &Network{base: newNetnsName("")}
	n.router = &Host{name: "router", ns: n.base + "r"}
	if err := ipCmd("netns", "add", n.router.ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.mu.Lock()
		n.closed = true
		n.mu.Unlock()
		if err := errors.Join(n.closeEmulators(), n.router.teardown()); err != nil {
			t.Error(err)
		}
	})
	r := n.router.ns
	err := ipCmd("-n", r, "link", "set", "lo", "up")
	if err == nil {
		err = runCmd(exec.Command("ip", "netns", "exec", r, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"))
	}
	if err != nil {
		t.Fatalf("setting up router namespace: %v", err)
	}
	return n
}

// AddHost creates a host namespace named name (lower case letters, digits
// and '-', as a label in messages and namespace names) joined to the router.
// Hosts get 198.18.1.2, 198.18.2.2, ... in the order added. Its cleanup
// kills what still runs in the namespace (processes from Command first, by
// PID) and deletes the namespace, which destroys its veth pair.
func (n *Network) AddHost(t testing.TB, name string) *Host {
	t.Helper()
	if !hostNameRE.MatchString(name) {
		t.Fatalf("testsupport: host name %q: use 1-16 of [a-z0-9-]", name)
	}
	n.mu.Lock()
	for _, h := range n.hosts {
		if h.name == name {
			n.mu.Unlock()
			t.Fatalf("testsupport: host %q added twice", name)
		}
	}
	if len(n.hosts) == maxHosts {
		n.mu.Unlock()
		t.Fatalf("testsupport: more than %d hosts", maxHosts)
	}
	idx := len(n.hosts) + 1
	h := &Host{name: name, ns: n.base + "h-" + name, n: idx, addr: netip.AddrFrom4([4]byte{198, 18, byte(idx), 2})}
	n.hosts = append(n.hosts, h)
	n.mu.Unlock()

	if err := ipCmd("netns", "add", h.ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.teardown(); err != nil {
			t.Error(err)
		}
	})
	r, rdev, gw := n.router.ns, h.routerDev(), h.gateway().String()
	err := ipBatch(
		[]string{"-n", r, "link", "add", rdev, "type", "veth", "peer", "name", "eth0", "netns", h.ns},
		[]string{"-n", r, "addr", "add", gw + "/24", "dev", rdev},
		[]string{"-n", r, "link", "set", rdev, "up"},
		[]string{"-n", h.ns, "link", "set", "lo", "up"},
		[]string{"-n", h.ns, "addr", "add", h.addr.String() + "/24", "dev", "eth0"},
		[]string{"-n", h.ns, "link", "set", "eth0", "up"},
		[]string{"-n", h.ns, "route", "add", "default", "via", gw},
	)
	if err != nil {
		t.Fatalf("setting up host %s: %v", name, err)
	}
	return h
}

// SetLinkDown takes the router's end of h's link down: from then on h
// reaches nothing and nothing reaches it, as when a cable is pulled. It does
// not touch t, so it may be called from any goroutine.
func (n *Network) SetLinkDown(h *Host) error {
	return ipCmd("-n", n.router.ns, "link", "set", h.routerDev(), "down")
}

// SetLinkUp brings h's link back up after SetLinkDown.
func (n *Network) SetLinkUp(h *Host) error {
	return ipCmd("-n", n.router.ns, "link", "set", h.routerDev(), "up")
}

// SetRate limits h's link to bytesPerSec in each direction with a token
// bucket filter (tc tbf) on both ends of its veth; 0 removes the limit. The
// kernel here has tbf and htb but not netem.
func (n *Network) SetRate(h *Host, bytesPerSec int64) error {
	ends := [][2]string{{n.router.ns, h.routerDev()}, {h.ns, "eth0"}}
	for _, e := range ends {
		var err error
		if bytesPerSec <= 0 {
			var out []byte
			out, err = exec.Command("tc", "-n", e[0], "qdisc", "show", "dev", e[1], "root").Output()
			if err == nil && bytes.HasPrefix(out, []byte("qdisc tbf ")) { // else no limit was set
				err = runCmd(exec.Command("tc", "-n", e[0], "qdisc", "del", "dev", e[1], "root"))
			}
		} else {
			// A burst of 1/50 s of traffic, at least a few full-size packets.
			burst := max(bytesPerSec/50, 16<<10)
			err = runCmd(exec.Command("tc", "-n", e[0], "qdisc", "replace", "dev", e[1], "root", "tbf",
				"rate", strconv.FormatInt(bytesPerSec*8, 10)+"bit",
				"burst", strconv.FormatInt(burst, 10), "latency", "100ms"))
		}
		if err != nil {
			return fmt.Errorf("rate limit on host %s: %w", h.name, err)
		}
	}
	return nil
}

// Name returns the name the host was added with.
func (h *Host) Name() string { return h.name }

// Netns returns the namespace's name for 'ip netns exec' and 'ip -n'.
func (h *Host) Netns() string { return h.ns }

// Addr returns the host's address, in 198.18.0.0/15.
func (h *Host) Addr() netip.Addr { return h.addr }

// AddrPort returns the host's address with port.
func (h *Host) AddrPort(port uint16) netip.AddrPort { return netip.AddrPortFrom(h.addr, port) }

func (h *Host) routerDev() string   { return "h" + strconv.Itoa(h.n) }
func (h *Host) gateway() netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(h.n), 1}) }

// Command returns a command that runs name with args inside the host's
// namespace, through 'ip netns exec' (which execs name in place, so the
// command's PID is the program's). It is killed when ctx is done, and
// killed with SIGKILL if the test process dies; the host's cleanup kills it
// if it still runs. The caller starts it and waits for it as usual.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	h.mu.Lock()
	h.cmds = append(h.cmds, cmd)
	h.mu.Unlock()
	return cmd
}

// DialContext connects from inside the host's namespace, as net.Dialer's
// DialContext does; address must be an IP literal with a port (no name
// lookups happen in the namespace). Tests use it to reach a process's
// loopback-only endpoints (metrics) or to probe connectivity between hosts.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := inHostNetns(h, func() (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, address)
		})
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// Listen listens inside the host's namespace, as net.Listen does.
func (h *Host) Listen(network, address string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		ln, err := inHostNetns(h, func() (net.Listener, error) { return net.Listen(network, address) })
		ch <- result{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}

// ListenPacket listens inside the host's namespace, as net.ListenPacket does.
func (h *Host) ListenPacket(network, address string) (net.PacketConn, error) {
	type result struct {
		c   net.PacketConn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := inHostNetns(h, func() (net.PacketConn, error) { return net.ListenPacket(network, address) })
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// inHostNetns runs f on this goroutine's OS thread moved into h's
// namespace, then moves the thread back. Sockets keep the namespace they
// were created in, so what f opens stays there; goroutines f starts run in
// the process's namespace. The thread must not exit afterwards: it may be
// the parent of a child started with Pdeathsig (Host.Command's), which the
// kernel would kill. So if moving it back fails, it stays locked and the
// runtime discards it when the goroutine exits, and callers run this on a
// goroutine of their own.
func inHostNetns[T any](h *Host, f func() (T, error)) (T, error) {
	var zero T
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return zero, fmt.Errorf("opening this thread's namespace: %w", err)
	}
	defer unix.Close(orig)
	fd, err := unix.Open(filepath.Join(netnsDir, h.ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return zero, fmt.Errorf("opening namespace of host %s: %w", h.name, err)
	}
	err = unix.Setns(fd, unix.CLONE_NEWNET)
	unix.Close(fd)
	if err != nil {
		runtime.UnlockOSThread()
		return zero, fmt.Errorf("entering namespace of host %s: %w", h.name, err)
	}
	defer func() {
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return f()
}

// teardown kills what runs in the namespace and deletes it.
func (h *Host) teardown() error {
	h.mu.Lock()
	cmds := h.cmds
	h.cmds = nil
	h.mu.Unlock()
	for _, c := range cmds {
		if c.Process != nil {
			c.Process.Kill() // an error means it has exited already
		}
	}
	return deleteNetns(h.ns)
}

// deleteNetns kills, by PID, every process still in the namespace (children
// of commands included), waits for them to leave it and deletes it.
func deleteNetns(ns string) error {
	path := filepath.Join(netnsDir, ns)
	var fi unix.Stat_t
	if err := unix.Stat(path, &fi); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("deleting namespace %s: %w", ns, err)
	}
	deadline := time.Now().Add(teardownTimeout)
	for {
		pids := pidsInNetns(fi.Dev, fi.Ino)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("deleting namespace %s: processes %v still in it after %v", ns, pids, teardownTimeout)
		}
		for _, pid := range pids {
			killInNetns(pid, fi.Dev, fi.Ino)
		}
		time.Sleep(10 * time.Millisecond) // poll interval while the kernel reaps them
	}
	return ipCmd("netns", "del", ns)
}

// pidsInNetns lists the processes whose network namespace is the nsfs inode
// (dev, ino). Zombies have none and are not listed.
func pidsInNetns(dev, ino uint64) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if pidInNetns(pid, dev, ino) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func pidInNetns(pid int, dev, ino uint64) bool {
	var st unix.Stat_t
	err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &st)
	return err == nil && st.Dev == dev && st.Ino == ino
}

// killInNetns sends SIGKILL to pid through a pidfd, after checking that the
// process the pidfd pins is still in the namespace, so that a PID reused
// since the listing is never signalled.
func killInNetns(pid int, dev, ino uint64) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // gone
	}
	defer unix.Close(fd)
	if pidInNetns(pid, dev, ino) {
		unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
	}
}

// sweepStaleNetns deletes the namespaces of test processes that died
// before their cleanups ran: names carry the creating PID.
func sweepStaleNetns() {
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), netnsPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || alive(pid) {
			continue
		}
		deleteNetns(e.Name())
	}
}

// newNetnsName returns a unique namespace name (or prefix, when role is "")
// that carries this process's PID.
func newNetnsName(role string) string {
	var b [4]byte
	rand.Read(b[:])
	return netnsPrefix + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:]) + "-" + role
}

// ipBatch runs each argument list as an ip command, stopping at the first error.
func ipBatch(cmds ...[]string) error {
	for _, args := range cmds {
		if err := ipCmd(args...); err != nil {
			return err
		}
	}
	return nil
}

func ipCmd(args ...string) error { return runCmd(exec.Command("ip", args...)) }

// runCmd runs cmd and returns an error that includes its stderr.
func runCmd(cmd *exec.Cmd) error {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
