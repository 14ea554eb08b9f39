package testsupport

import (
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"time"

	"github.com/pgporter/pgporter/internal/netemu"
)

// The kernel here has no netem, so links are emulated in user space by
// internal/netemu: once a host's link has a profile (SetLinkProfile,
// Outage), the router sends every IPv4 packet to or from the host through a
// TUN device of its own ("tN"), which an emulator in this process reads; it
// drops, delays, reorders and paces each packet and writes it back into the
// same device, where the router forwards it on. It works on IP packets, so
// TCP, UDP and ICMP see the same link.
//
// Policy routing in the router namespace does the steering (N is the
// host's index, H its address):
//
//	prio 100  iif tN to H   lookup main      emulated towards H: deliver
//	prio 200  iif hN        lookup 1000+N    from H: emulate (default dev tN)
//	prio 300  to H          lookup 1000+N    towards H: emulate
//
// A packet between two emulated hosts goes through both emulators: the
// sender's first ('iif' before 'to'), then, written back by it, the
// receiver's.

const (
	emuRulePrioDeliver = 100
	emuRulePrioFrom    = 200
	emuRulePrioTo      = 300
	emuTableBase       = 1000
)

// LinkProfile, LinkStats and LinkDirStats are the emulator's own types,
// under the names the tests of other packages use.
type (
	LinkProfile  = netemu.Profile
	LinkStats    = netemu.Counters
	LinkDirStats = netemu.Stats
)

// SetLinkProfile emulates h's link with p from now on, in both
// directions; packets already in the delay line keep the delay they got.
// The first call (or Outage) puts the emulator in the path. It does not
// touch t, so it may be called from any goroutine.
func (n *Network) SetLinkProfile(h *Host, p LinkProfile) error {
	if err := p.Validate(); err != nil {
		return err
	}
	e, err := n.emulator(h)
	if err != nil {
		return err
	}
	return e.emu.SetProfile(p)
}

// Outage drops every packet to and from h for d from now on, including
// those in the delay line when it starts, as when a cable is pulled
// somewhere on the path (unlike SetLinkDown, nobody is told: the router
// sends no 'unreachable'). It returns at once; a later outage replaces the
// window.
func (n *Network) Outage(h *Host, d time.Duration) error {
	e, err := n.emulator(h)
	if err != nil {
		return err
	}
	e.emu.Outage(d)
	return nil
}

// LinkStats returns the counters of h's emulated link (zero if it has none).
func (n *Network) LinkStats(h *Host) LinkDirStats {
	n.mu.Lock()
	e := n.emus[h]
	n.mu.Unlock()
	if e == nil {
		return LinkDirStats{}
	}
	return e.emu.Stats()
}

// RemoveLinkEmulation takes h's link out of the emulator: packets go
// straight through the router again, and those in the delay line are
// dropped. It is a no-op for a link without emulation.
func (n *Network) RemoveLinkEmulation(h *Host) error {
	n.mu.Lock()
	e := n.emus[h]
	delete(n.emus, h)
	n.mu.Unlock()
	if e == nil {
		return nil
	}
	return e.close()
}

// closeEmulators stops every emulator; the router's cleanup calls it.
func (n *Network) closeEmulators() error {
	n.mu.Lock()
	emus := n.emus
	n.emus = nil
	n.mu.Unlock()
	var errs []error
	for _, e := range emus {
		errs = append(errs, e.close())
	}
	return errors.Join(errs...)
}

// emulator returns h's emulator, starting it on first use.
func (n *Network) emulator(h *Host) (*linkEmu, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if e := n.emus[h]; e != nil {
		return e, nil
	}
	if n.closed {
		return nil, errors.New("testsupport: network torn down")
	}
	e, err := startLinkEmu(n.router, h)
	if err != nil {
		return nil, fmt.Errorf("emulating the link of host %s: %w", h.name, err)
	}
	if n.emus == nil {
		n.emus = map[*Host]*linkEmu{}
	}
	n.emus[h] = e
	return e, nil
}

// linkEmu is one host's emulated link: an emulator on a TUN device in the
// router namespace, and the rules that steer the host's traffic into it.
type linkEmu struct {
	router, host *Host
	dev          string
	emu          *netemu.Emulator
}

// startLinkEmu creates h's TUN device in the router namespace, starts the
// emulator with the zero profile and then installs the rules that steer
// h's traffic into it.
func startLinkEmu(router, h *Host) (*linkEmu, error) {
	e := &linkEmu{router: router, host: h, dev: "t" + strconv.Itoa(h.n)}
	tun, err := netemu.OpenTUN(router.ns, e.dev)
	if err != nil {
		return nil, err
	}
	ns, table := router.ns, strconv.Itoa(emuTableBase+h.n)
	err = runCmd(execIn(ns, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter; echo 0 > /proc/sys/net/ipv4/conf/"+e.dev+"/rp_filter; echo 0 > /proc/sys/net/ipv4/conf/all/send_redirects; echo 1 > /proc/sys/net/ipv6/conf/"+e.dev+"/disable_ipv6"))
	if err == nil {
		err = ipBatch(
			// A long queue into the device: the reader may wait for a CPU on
			// a busy machine, and packets dropped there would be unaccounted.
			[]string{"-n", ns, "link", "set", e.dev, "txqueuelen", "10000", "up"},
			[]string{"-n", ns, "route", "add", "default", "dev", e.dev, "table", table},
		)
	}
	if err != nil {
		tun.Close()
		return nil, err
	}
	if e.emu, err = netemu.Start(tun, h.addr, netemu.Profile{}); err != nil {
		return nil, err
	}
	var rules [][]string
	for _, r := range e.rules() {
		rules = append(rules, append([]string{"-n", ns, "rule", "add"}, r...))
	}
	if err := ipBatch(rules...); err != nil {
		return nil, errors.Join(err, e.close())
	}
	return e, nil
}

// close removes the rules (traffic goes direct again) and stops the
// emulator, which deletes the device and its route.
func (e *linkEmu) close() error {
	for _, r := range e.rules() {
		// A rule missing (a failed start) is not an error worth reporting.
		ipCmd(append([]string{"-n", e.router.ns, "rule", "del"}, r...)...)
	}
	if err := e.emu.Close(); err != nil {
		return fmt.Errorf("emulator of %s: %w", e.dev, err)
	}
	return nil
}

// rules are the policy rules that steer the host's traffic through the
// emulator, as arguments to 'ip rule add' and 'ip rule del'.
func (e *linkEmu) rules() [][]string {
	host, table := e.host.addr.String()+"/32", strconv.Itoa(emuTableBase+e.host.n)
	return [][]string{
		{"prio", strconv.Itoa(emuRulePrioDeliver), "iif", e.dev, "to", host, "lookup", "main"},
		{"prio", strconv.Itoa(emuRulePrioFrom), "iif", e.host.routerDev(), "lookup", table},
		{"prio", strconv.Itoa(emuRulePrioTo), "to", host, "lookup", table},
	}
}

// execIn runs name inside namespace ns, for what 'ip -n' cannot do (sysctl).
func execIn(ns string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}
