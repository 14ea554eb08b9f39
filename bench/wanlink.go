package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pgporter/pgporter/internal/netemu"
)

// The kernel here has no netem, so the WAN scenarios emulate delay, loss and
// outages in user space, on IP packets, with internal/netemu, the emulator
// of the tests' links too: TCP (rsync, nc) and UDP (pgporter's QUIC) cross
// the same emulator with the same parameters.
//
// A WANLink is three namespaces: the sender (198.19.18.2/24), a router and
// the receiver (198.19.19.2/24). The router sends every IPv4 packet it
// forwards between them through a TUN device, emu0, which a goroutine of the
// harness reads; it drops, delays and writes each packet back into emu0,
// from where the router forwards it on. The rate is tc tbf on the router's
// two veth ends, after the emulator: the bottleneck queue is the router's,
// as on a real path, not the sender's own qdisc. Policy routing in the
// router:
//
//	prio 100  iif emu0  lookup main   written back by the emulator: forward
//	prio 200  iif s     lookup 100    from the sender: to emu0
//	prio 201  iif r     lookup 100    from the receiver: to emu0

// EmuProfile is how the emulated path treats packets. The rate is tc tbf's,
// not the emulator's: the figures measured so far were taken with tbf.
type EmuProfile struct {
	// Rate is tc's rate of the router's egress each way, e.g. "100mbit";
	// empty means no shaping.
	Rate string
	// Delay is added to every packet in each direction: the round trip
	// takes 2×Delay more.
	Delay time.Duration
	// Loss is the share of packets dropped at random in each direction.
	Loss float64
	// Seed seeds the loss draws of each direction.
	Seed uint64
}

// String describes the profile for notes and logs: "100mbit, 40ms RTT,
// 0.5% loss each way".
func (p EmuProfile) String() string {
	rate := p.Rate
	if rate == "" {
		rate = "unshaped"
	}
	return fmt.Sprintf("%s, %s RTT, %s%% loss each way", rate, 2*p.Delay,
		strconv.FormatFloat(100*p.Loss, 'f', -1, 64))
}

// Validate reports a profile the emulator cannot apply, or one that loses
// every packet (no transfer would end).
func (p EmuProfile) Validate() error {
	if p.Loss >= 1 {
		return errors.New("bench: loss is a share from 0 to below 1")
	}
	return p.link().Validate()
}

// link is the profile's part that the emulator applies.
func (p EmuProfile) link() netemu.Profile {
	return netemu.Profile{Delay: p.Delay, Loss: p.Loss, Seed: p.Seed}
}

const (
	wanSenderAddr   = "198.19.18.2"
	wanSenderGW     = "198.19.18.1"
	wanReceiverAddr = "198.19.19.2"
	wanReceiverGW   = "198.19.19.1"
	emuDev          = "emu0"
	emuTable        = "100"
)

// WANLink is a Link whose path crosses a router namespace with the user-space
// emulator. Its Link's Sender and Receiver are the end hosts, so the LAN
// tools run on it unchanged; SenderTxBytes counts what the sender put on
// its veth, retransmissions included.
type WANLink struct {
	*Link
	Router  string // the router namespace
	Profile EmuProfile
	// TCPCongestion is the end hosts' TCP congestion control when
	// LinkOptions set one, else "".
	TCPCongestion string
	emu           *netemu.Emulator // its host is the receiver
}

// NewWANLink creates the three namespaces, the two veth pairs, the router's
// shaping and the emulator. On error it removes what it made; otherwise the
// caller calls Close.
func NewWANLink(ctx context.Context, o LinkOptions, p EmuProfile) (_ *WANLink, err error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if o.SenderCPUs == "" {
		o.SenderCPUs = "0"
	}
	if o.ReceiverCPUs == "" {
		o.ReceiverCPUs = "1"
	}
	base := fmt.Sprintf("pgp-bench17-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	w := &WANLink{
		Link: &Link{
			Sender: base + "-s", Receiver: base + "-r",
			SenderAddr: wanSenderAddr, ReceiverAddr: wanReceiverAddr,
			SenderCPUs: o.SenderCPUs, ReceiverCPUs: o.ReceiverCPUs,
		},
		Router:        base + "-m",
		Profile:       p,
		TCPCongestion: o.TCPCongestion,
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, w.Close())
		}
	}()
	for _, ns := range []string{w.Sender, w.Receiver, w.Router} {
		if err := run(ctx, "ip", "netns", "add", ns); err != nil {
			return nil, err
		}
	}
	m := w.Router
	steps := [][]string{
		{"ip", "-n", m, "link", "add", "s", "type", "veth", "peer", "name", linkDev, "netns", w.Sender},
		{"ip", "-n", m, "link", "add", "r", "type", "veth", "peer", "name", linkDev, "netns", w.Receiver},
		{"ip", "-n", m, "addr", "add", wanSenderGW + "/24", "dev", "s"},
		{"ip", "-n", m, "addr", "add", wanReceiverGW + "/24", "dev", "r"},
		{"ip", "-n", w.Sender, "addr", "add", wanSenderAddr + "/24", "dev", linkDev},
		{"ip", "-n", w.Receiver, "addr", "add", wanReceiverAddr + "/24", "dev", linkDev},
		// Forwarding, and no reverse-path check: packets written back into
		// emu0 come from hosts that are routed through s and r.
		{"ip", "netns", "exec", m, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward; " +
			"for k in all default s r; do echo 0 > /proc/sys/net/ipv4/conf/$k/rp_filter; echo 0 > /proc/sys/net/ipv4/conf/$k/send_redirects; done"},
	}
	for _, ns := range []string{w.Sender, w.Receiver, m} {
		steps = append(steps, []string{"ip", "-n", ns, "link", "set", "lo", "up"})
	}
	steps = append(steps,
		[]string{"ip", "-n", w.Sender, "link", "set", linkDev, "up"},
		[]string{"ip", "-n", w.Receiver, "link", "set", linkDev, "up"},
		[]string{"ip", "-n", m, "link", "set", "s", "up"},
		[]string{"ip", "-n", m, "link", "set", "r", "up"},
		// Routes to the other host's subnet only, no default: anything else
		// (a DNS server from resolv.conf, which rsync's daemon asks for the
		// client's name) fails at once, as on the LAN link, instead of timing
		// out in the router.
		[]string{"ip", "-n", w.Sender, "route", "add", "198.19.19.0/24", "via", wanSenderGW},
		[]string{"ip", "-n", w.Receiver, "route", "add", "198.19.18.0/24", "via", wanReceiverGW},
	)
	if o.TCPCongestion != "" {
		for _, ns := range []string{w.Sender, w.Receiver} {
			steps = append(steps, []string{"ip", "netns", "exec", ns, "sh", "-c",
				"echo " + shellQuote(o.TCPCongestion) + " > /proc/sys/net/ipv4/tcp_congestion_control"})
		}
	}
	if p.Rate != "" {
		for _, dev := range []string{"s", "r"} {
			// As the LAN link: a 256 kB bucket, 50 ms of queue (625 kB at
			// 100 Mbit/s, about the bandwidth-delay product at 40 ms).
			steps = append(steps, []string{"tc", "-n", m, "qdisc", "add", "dev", dev, "root", "tbf",
				"rate", p.Rate, "burst", "256kb", "latency", "50ms"})
		}
	}
	for _, s := range steps {
		if err := run(ctx, s[0], s[1:]...); err != nil {
			return nil, fmt.Errorf("setting up the WAN link: %w", err)
		}
	}
	tun, err := netemu.OpenTUN(m, emuDev)
	if err != nil {
		return nil, err
	}
	if w.emu, err = netemu.Start(tun, netip.MustParseAddr(wanReceiverAddr), p.link()); err != nil {
		return nil, err
	}
	steps = [][]string{
		{"ip", "netns", "exec", m, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/conf/" + emuDev + "/rp_filter; echo 1 > /proc/sys/net/ipv6/conf/" + emuDev + "/disable_ipv6"},
		// A long queue into the device: the harness may wait for a CPU, and
		// packets dropped there would be unaccounted.
		{"ip", "-n", m, "link", "set", emuDev, "txqueuelen", "10000", "up"},
		{"ip", "-n", m, "route", "add", "default", "dev", emuDev, "table", emuTable},
		{"ip", "-n", m, "rule", "add", "prio", "100", "iif", emuDev, "lookup", "main"},
		{"ip", "-n", m, "rule", "add", "prio", "200", "iif", "s", "lookup", emuTable},
		{"ip", "-n", m, "rule", "add", "prio", "201", "iif", "r", "lookup", emuTable},
	}
	for _, s := range steps {
		if err := run(ctx, s[0], s[1:]...); err != nil {
			return nil, fmt.Errorf("setting up the emulator: %w", err)
		}
	}
	return w, nil
}

// Close stops the emulator and deletes the three namespaces. Processes in
// them must have been stopped by their owners first.
func (w *WANLink) Close() error {
	var errs []error
	if w.emu != nil {
		errs = append(errs, w.emu.Close())
		w.emu = nil
	}
	if err := run(context.Background(), "ip", "netns", "del", w.Router); err != nil && !strings.Contains(err.Error(), "No such file") {
		errs = append(errs, err)
	}
	errs = append(errs, w.Link.Close())
	return errors.Join(errs...)
}

// ArmOutage makes the path drop every packet, both ways, for d, once after
// more bytes have crossed it towards the receiver; it replaces any armed
// outage and ends the window of an earlier one. after < 0 disarms.
func (w *WANLink) ArmOutage(after int64, d time.Duration) { w.emu.OutageAfter(after, d) }

// Stats returns the emulator's counters; its host is the receiver, so
// ToHost is towards the receiver and Admitted counts that way.
func (w *WANLink) Stats() netemu.Stats { return w.emu.Stats() }
