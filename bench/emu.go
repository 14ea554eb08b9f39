package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The kernel here has no netem, so the WAN scenarios emulate delay, loss and
// outages in user space, on IP packets, as internal/testsupport's netemu.go
// does for the tests: TCP (rsync, nc) and UDP (pgporter's QUIC) cross the
// same emulator with the same parameters. testsupport's emulator is bound to
// its testing.TB fixtures (Network, Host), so the harness has this small
// twin, reduced to what the scenarios use: a fixed delay, random loss, and
// an outage that starts after a number of bytes.
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

// EmuProfile is how the emulated path treats packets.
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

// Validate reports a profile the emulator cannot apply.
func (p EmuProfile) Validate() error {
	switch {
	case p.Delay < 0:
		return errors.New("bench: negative delay")
	case p.Loss < 0 || p.Loss >= 1:
		return errors.New("bench: loss is a share from 0 to below 1")
	}
	return nil
}

const (
	wanSenderAddr   = "198.19.18.2"
	wanSenderGW     = "198.19.18.1"
	wanReceiverAddr = "198.19.19.2"
	wanReceiverGW   = "198.19.19.1"
	emuDev          = "emu0"
	emuTable        = "100"
	// emuLine is how many packets each direction's delay line holds; beyond
	// it packets drop (counted as overflow). 100 Mbit/s for 200 ms is about
	// 1,700 full-size packets.
	emuLine = 1 << 15
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
	emu           *emulator
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
	tun, err := openTUNIn(m, emuDev)
	if err != nil {
		return nil, err
	}
	w.emu = startEmulator(tun, p, [4]byte{198, 19, 19, 2})
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
		errs = append(errs, w.emu.close())
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
func (w *WANLink) ArmOutage(after int64, d time.Duration) { w.emu.arm(after, d) }

// Stats returns the emulator's counters.
func (w *WANLink) Stats() EmuStats { return w.emu.stats() }

// openTUNIn creates TUN device name in namespace ns and returns it open,
// non-blocking (Close interrupts a Read). It runs on an OS thread of its own,
// moved into ns and back; if moving back fails the thread stays locked and
// the runtime discards it.
func openTUNIn(ns, name string) (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("opening this thread's namespace: %w", err)}
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			err = unix.Setns(target, unix.CLONE_NEWNET)
			unix.Close(target)
		}
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("entering namespace %s: %w", ns, err)}
			return
		}
		f, err := openTUN(name)
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{f, err}
	}()
	r := <-ch
	return r.f, r.err
}

// openTUN creates a TUN device (IP packets, no extra header) in the calling
// thread's network namespace. It lives as long as the file.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("creating TUN device %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// Directions of the emulated path.
const (
	toReceiver = iota
	toSender
)

// EmuStats counts what the emulator did, by direction (0 towards the
// receiver, 1 towards the sender).
type EmuStats struct {
	Bytes    [2]int64 // delivered, IP headers included
	Packets  [2]int64 // delivered
	Lost     [2]int64 // dropped by Loss
	Outage   [2]int64 // dropped during the outage
	Overflow [2]int64 // dropped because the delay line was full
	// Forward is the bytes admitted towards the receiver since the
	// emulator started (not lost, not in an outage).
	Forward int64
	// OutageStart and OutageEnd are the window of the last armed outage;
	// zero if it has not begun.
	OutageStart, OutageEnd time.Time
	// OutageAfter is Forward when the outage began.
	OutageAfter int64
}

// pathState decides each packet's fate: the outage window and its trigger,
// and the loss draws. It is the emulator's logic without the device, so
// that it can be tested with made-up packets and times.
type pathState struct {
	p   EmuProfile
	rng [2]*rand.Rand

	trigger     int64 // bytes towards the receiver left before the outage; <0 when not armed
	outageLen   time.Duration
	outageStart time.Time
	outageUntil time.Time
	outageAfter int64
	fwdBytes    int64 // admitted towards the receiver
}

func newPathState(p EmuProfile) *pathState {
	s := &pathState{p: p, trigger: -1}
	for dir := range s.rng {
		s.rng[dir] = rand.New(rand.NewPCG(p.Seed, uint64(dir)))
	}
	return s
}

// arm starts an outage of d once after more bytes have been admitted
// towards the receiver; after < 0 disarms. Either way it ends the window of
// an earlier outage.
func (s *pathState) arm(after int64, d time.Duration) {
	s.trigger, s.outageLen = after, d
	s.outageStart, s.outageUntil = time.Time{}, time.Time{}
}

// verdict is a packet's fate.
type verdict int

const (
	pass verdict = iota
	dropLoss
	dropOutage
)

// admit decides the fate of a packet of n bytes read at now going in
// direction dir. An armed outage starts once the bytes admitted towards the
// receiver since arm reach its count: the packet that reaches it passes (and
// is dropped if it is due inside the window), the next ones do not.
func (s *pathState) admit(dir, n int, now time.Time) verdict {
	if s.inOutage(now) {
		return dropOutage
	}
	if s.p.Loss > 0 && s.rng[dir].Float64() < s.p.Loss {
		return dropLoss
	}
	if dir == toReceiver {
		s.fwdBytes += int64(n)
		if s.trigger >= 0 {
			if s.trigger -= int64(n); s.trigger <= 0 {
				s.trigger = -1
				s.outageStart, s.outageUntil, s.outageAfter = now, now.Add(s.outageLen), s.fwdBytes
			}
		}
	}
	return pass
}

func (s *pathState) inOutage(now time.Time) bool {
	return !s.outageStart.IsZero() && !now.Before(s.outageStart) && now.Before(s.outageUntil)
}

// emulator reads packets from the router's TUN device and writes them back
// when due: a reader, and a writer per direction draining its delay line.
type emulator struct {
	tun    *os.File
	delay  time.Duration
	dst    [4]byte // the receiver's address: packets to it go towards it
	cancel context.CancelFunc
	wg     sync.WaitGroup // the reader and the writers
	lines  [2]chan emuPacket

	mu sync.Mutex // guards st
	st *pathState

	bytes, packets, lost, outage, overflow [2]atomic.Int64
}

type emuPacket struct {
	due  time.Time
	data []byte
}

func startEmulator(tun *os.File, p EmuProfile, receiver [4]byte) *emulator {
	ctx, cancel := context.WithCancel(context.Background())
	e := &emulator{tun: tun, delay: p.Delay, dst: receiver, cancel: cancel, st: newPathState(p)}
	for dir := range e.lines {
		e.lines[dir] = make(chan emuPacket, emuLine)
		e.wg.Go(func() { e.write(ctx, dir) })
	}
	e.wg.Go(e.read)
	return e
}

func (e *emulator) arm(after int64, d time.Duration) {
	e.mu.Lock()
	e.st.arm(after, d)
	e.mu.Unlock()
}

func (e *emulator) stats() EmuStats {
	var s EmuStats
	for dir := range 2 {
		s.Bytes[dir] = e.bytes[dir].Load()
		s.Packets[dir] = e.packets[dir].Load()
		s.Lost[dir] = e.lost[dir].Load()
		s.Outage[dir] = e.outage[dir].Load()
		s.Overflow[dir] = e.overflow[dir].Load()
	}
	e.mu.Lock()
	s.Forward = e.st.fwdBytes
	s.OutageStart, s.OutageEnd, s.OutageAfter = e.st.outageStart, e.st.outageUntil, e.st.outageAfter
	e.mu.Unlock()
	return s
}

// read takes packets from the router until the device is closed.
func (e *emulator) read() {
	buf := make([]byte, 1<<16)
	for {
		n, err := e.tun.Read(buf)
		if err != nil {
			return // closed by close, or gone with the namespace
		}
		pkt := buf[:n]
		if n < 20 || pkt[0]>>4 != 4 {
			continue // IPv4 only; emu0 has IPv6 off
		}
		dir := toSender
		if [4]byte(pkt[16:20]) == e.dst {
			dir = toReceiver
		}
		now := time.Now()
		e.mu.Lock()
		v := e.st.admit(dir, n, now)
		e.mu.Unlock()
		switch v {
		case dropLoss:
			e.lost[dir].Add(1)
			continue
		case dropOutage:
			e.outage[dir].Add(1)
			continue
		}
		select {
		case e.lines[dir] <- emuPacket{due: now.Add(e.delay), data: append([]byte(nil), pkt...)}:
		default:
			e.overflow[dir].Add(1)
		}
	}
}

// write writes one direction's packets back when due, in order (the delay
// is the same for all), dropping those due inside the outage window.
func (e *emulator) write(ctx context.Context, dir int) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var p emuPacket
		select {
		case <-ctx.Done():
			return
		case p = <-e.lines[dir]:
		}
		if d := time.Until(p.due); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		}
		e.mu.Lock()
		down := e.st.inOutage(time.Now())
		e.mu.Unlock()
		if down {
			e.outage[dir].Add(1)
			continue
		}
		if _, err := e.tun.Write(p.data); err != nil {
			continue // a packet lost, as on a link
		}
		e.packets[dir].Add(1)
		e.bytes[dir].Add(int64(len(p.data)))
	}
}

// close stops the goroutines and closes the device, which deletes it.
func (e *emulator) close() error {
	e.cancel()
	err := e.tun.Close()
	e.wg.Wait()
	if err != nil {
		return fmt.Errorf("closing the emulator's TUN device: %w", err)
	}
	return nil
}
