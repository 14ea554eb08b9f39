package testsupport

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The kernel here has no netem, so links are emulated in user space: once a
// host's link has a profile (SetLinkProfile, Outage), the router sends every
// IPv4 packet to or from the host through a TUN device of its own ("tN"),
// which a goroutine of this process reads; it drops, delays, reorders and
// paces each packet and writes it back into the same device, where the
// router forwards it on. It works on IP packets, so TCP, UDP and ICMP see
// the same link.
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
	emuMaxPacket       = 1 << 16
)

// LinkProfile is how an emulated link treats packets, in each direction
// independently (each has its own queue and random stream). Its zero value
// passes packets through unchanged.
type LinkProfile struct {
	// Delay is added to every packet in each direction, so a round trip
	// through one emulated link takes 2×Delay more.
	Delay time.Duration
	// Jitter varies each packet's delay uniformly within ±Jitter (never
	// below zero). Packets keep their order: a packet is never delivered
	// before the one ahead of it, as on a real link.
	Jitter time.Duration
	// Loss is the share of packets dropped at random, from 0 to 1.
	Loss float64
	// Reorder is the share of packets sent at once, ahead of those in the
	// delay line (netem's reorder); it reorders only when Delay > 0.
	Reorder float64
	// Rate caps each direction at Rate bytes per second with a token bucket;
	// 0 is no cap.
	Rate int64
	// Burst is the token bucket's depth in bytes; default max(Rate/50, 16 KiB).
	Burst int64
	// Queue is how many bytes may wait for tokens before more are dropped
	// (a router's buffer); default max(Rate/10, 64 KiB).
	Queue int64
	// Seed seeds the random draws (loss, jitter, reorder), which restart
	// with each SetLinkProfile: the same profile on the same sequence of
	// packets drops the same ones.
	Seed uint64
}

func (p LinkProfile) withDefaults() LinkProfile {
	if p.Rate > 0 {
		if p.Burst <= 0 {
			p.Burst = max(p.Rate/50, 16<<10)
		}
		if p.Queue <= 0 {
			p.Queue = max(p.Rate/10, 64<<10)
		}
	}
	return p
}

// Validate reports a profile that cannot be applied.
func (p LinkProfile) Validate() error {
	switch {
	case p.Delay < 0 || p.Jitter < 0:
		return errors.New("testsupport: negative delay or jitter")
	case p.Loss < 0 || p.Loss > 1 || p.Reorder < 0 || p.Reorder > 1:
		return errors.New("testsupport: loss and reorder are shares from 0 to 1")
	case p.Rate < 0 || p.Burst < 0 || p.Queue < 0:
		return errors.New("testsupport: negative rate, burst or queue")
	}
	return nil
}

// LinkStats counts what an emulated link did with the packets of one
// direction.
type LinkStats struct {
	Packets   int64 // read from the router
	Delivered int64 // written back to the router
	Lost      int64 // dropped by Loss
	Outage    int64 // dropped during an outage window (on arrival or in the delay line)
	Overflow  int64 // dropped because the rate's queue was full
	Reordered int64 // sent ahead of the delay line
	Bytes     int64 // delivered bytes, IP headers included
}

// LinkDirStats is a link's LinkStats by direction.
type LinkDirStats struct {
	ToHost, FromHost LinkStats
}

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
	e.setProfile(p.withDefaults())
	return nil
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
	e.mu.Lock()
	e.outageUntil = time.Now().Add(d)
	e.mu.Unlock()
	e.wake()
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
	e.mu.Lock()
	defer e.mu.Unlock()
	return LinkDirStats{ToHost: e.dirs[dirToHost].stats, FromHost: e.dirs[dirFromHost].stats}
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

const (
	dirToHost = iota
	dirFromHost
)

// linkEmu emulates one host's link: a TUN device in the router namespace,
// a goroutine reading it and one writing packets back when they are due.
type linkEmu struct {
	router, host *Host
	dev          string
	addr         [4]byte // the host's address
	tun          *os.File

	cancel context.CancelFunc
	wg     sync.WaitGroup // the reader and the scheduler
	kick   chan struct{}  // wakes the scheduler: a packet is queued or an outage began

	mu          sync.Mutex // guards dirs, outageUntil, line, seq
	dirs        [2]emuDir
	outageUntil time.Time
	line        packetHeap // packets waiting for their time, both directions
	seq         uint64
}

// emuDir is one direction's profile and state.
type emuDir struct {
	p   LinkProfile
	rng *rand.Rand

	tbTime  time.Time // when tokens was last brought up to date
	tokens  float64   // in the bucket at tbTime
	lastOut time.Time // when the last packet left the token bucket
	lastDue time.Time // when the last in-order packet is delivered
	stats   LinkStats
}

type emuPacket struct {
	due  time.Time
	seq  uint64 // ties broken by arrival
	dir  int
	data []byte
}

type packetHeap []*emuPacket

func (h packetHeap) Len() int { return len(h) }
func (h packetHeap) Less(i, j int) bool {
	if !h[i].due.Equal(h[j].due) {
		return h[i].due.Before(h[j].due)
	}
	return h[i].seq < h[j].seq
}
func (h packetHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *packetHeap) Push(x any)   { *h = append(*h, x.(*emuPacket)) }
func (h *packetHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return p
}

// startLinkEmu creates h's TUN device in the router namespace, starts the
// goroutines and then installs the rules that steer h's traffic into it.
func startLinkEmu(router, h *Host) (*linkEmu, error) {
	e := &linkEmu{router: router, host: h, dev: "t" + strconv.Itoa(h.n), addr: h.addr.As4(), kick: make(chan struct{}, 1)}
	for i := range e.dirs {
		e.dirs[i].setProfile(LinkProfile{}, uint64(i))
	}
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() { // inHostNetns wants a goroutine of its own
		f, err := inHostNetns(router, func() (*os.File, error) { return openTUN(e.dev) })
		ch <- result{f, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	e.tun = r.f
	ns, table := router.ns, strconv.Itoa(emuTableBase+h.n)
	err := runCmd(execIn(ns, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter; echo 0 > /proc/sys/net/ipv4/conf/"+e.dev+"/rp_filter; echo 0 > /proc/sys/net/ipv4/conf/all/send_redirects; echo 1 > /proc/sys/net/ipv6/conf/"+e.dev+"/disable_ipv6"))
	if err == nil {
		err = ipBatch(
			// A long queue into the device: the reader may wait for a CPU on
			// a busy machine, and packets dropped there would be unaccounted.
			[]string{"-n", ns, "link", "set", e.dev, "txqueuelen", "10000", "up"},
			[]string{"-n", ns, "route", "add", "default", "dev", e.dev, "table", table},
		)
	}
	if err != nil {
		e.tun.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.wg.Go(e.read)
	e.wg.Go(func() { e.schedule(ctx) })
	var rules [][]string
	for _, r := range e.rules() {
		rules = append(rules, append([]string{"-n", ns, "rule", "add"}, r...))
	}
	if err := ipBatch(rules...); err != nil {
		return nil, errors.Join(err, e.close())
	}
	return e, nil
}

// openTUN creates a TUN device (IP packets, no extra header) in the calling
// thread's network namespace. It lives as long as the file: closing it
// deletes the device. The file is non-blocking, so Close interrupts a Read.
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

// close removes the rules (traffic goes direct again), stops the goroutines
// and closes the device, which deletes it and its route.
func (e *linkEmu) close() error {
	var errs []error
	for _, r := range e.rules() {
		// A rule missing (a failed start) is not an error worth reporting.
		ipCmd(append([]string{"-n", e.router.ns, "rule", "del"}, r...)...)
	}
	if e.cancel != nil {
		e.cancel()
	}
	if err := e.tun.Close(); err != nil {
		errs = append(errs, fmt.Errorf("closing TUN device %s: %w", e.dev, err))
	}
	e.wg.Wait()
	return errors.Join(errs...)
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

func (e *linkEmu) setProfile(p LinkProfile) {
	e.mu.Lock()
	for i := range e.dirs {
		e.dirs[i].setProfile(p, uint64(i))
	}
	e.mu.Unlock()
}

// setProfile restarts the random stream: the same profile set twice drops
// the same packets of the same sequence.
func (d *emuDir) setProfile(p LinkProfile, dir uint64) {
	d.rng = rand.New(rand.NewPCG(p.Seed, dir))
	d.p = p
}

func (e *linkEmu) wake() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// read takes packets from the router until the device is closed.
func (e *linkEmu) read() {
	buf := make([]byte, emuMaxPacket)
	for {
		k, err := e.tun.Read(buf)
		if err != nil {
			// Closed by close, or the device is gone with the namespace:
			// either way nothing more will come.
			return
		}
		pkt := buf[:k]
		if k < 20 || pkt[0]>>4 != 4 {
			continue // not IPv4: the test network has none
		}
		var src, dst [4]byte
		copy(src[:], pkt[12:16])
		copy(dst[:], pkt[16:20])
		dir := dirFromHost
		if dst == e.addr {
			dir = dirToHost
		}
		e.enqueue(dir, append([]byte(nil), pkt...), time.Now())
	}
}

// enqueue applies the outage window, loss, the token bucket, delay, jitter
// and reordering to a packet read at now, and queues it for its time.
func (e *linkEmu) enqueue(dir int, data []byte, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d := &e.dirs[dir]
	p := &d.p
	d.stats.Packets++
	if now.Before(e.outageUntil) {
		d.stats.Outage++
		return
	}
	if p.Loss > 0 && d.rng.Float64() < p.Loss {
		d.stats.Lost++
		return
	}
	out := now
	if p.Rate > 0 {
		// The packet leaves the bucket after the one ahead of it, once the
		// bucket holds its size; bytes waiting beyond Queue are dropped.
		start := now
		if d.lastOut.After(start) {
			start = d.lastOut
		}
		tokens := float64(p.Burst)
		if !d.tbTime.IsZero() {
			tokens = min(d.tokens+start.Sub(d.tbTime).Seconds()*float64(p.Rate), tokens)
		}
		size := float64(len(data))
		tbTime := start
		out = start
		if tokens < size {
			out = start.Add(time.Duration((size - tokens) / float64(p.Rate) * float64(time.Second)))
			tbTime, tokens = out, 0
		} else {
			tokens -= size
		}
		if backlog := out.Sub(now).Seconds() * float64(p.Rate); backlog > float64(p.Queue) {
			d.stats.Overflow++
			return
		}
		d.tbTime, d.tokens, d.lastOut = tbTime, tokens, out
	}
	due := out
	if p.Delay > 0 {
		if p.Reorder > 0 && d.rng.Float64() < p.Reorder {
			d.stats.Reordered++
		} else {
			delay := p.Delay
			if p.Jitter > 0 {
				delay += time.Duration((d.rng.Float64()*2 - 1) * float64(p.Jitter))
				delay = max(delay, 0)
			}
			due = out.Add(delay)
			if due.Before(d.lastDue) {
				due = d.lastDue
			}
			d.lastDue = due
		}
	}
	e.seq++
	heap.Push(&e.line, &emuPacket{due: due, seq: e.seq, dir: dir, data: data})
	if e.line[0].seq == e.seq {
		e.wake() // it is the next one due
	}
}

// schedule writes packets back to the router when they are due.
func (e *linkEmu) schedule(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var due []*emuPacket
	for {
		now := time.Now()
		next := time.Duration(-1)
		due = due[:0]
		e.mu.Lock()
		inOutage := now.Before(e.outageUntil)
		for len(e.line) > 0 && !e.line[0].due.After(now) {
			p := heap.Pop(&e.line).(*emuPacket)
			if inOutage {
				e.dirs[p.dir].stats.Outage++
				continue
			}
			due = append(due, p)
			e.dirs[p.dir].stats.Delivered++
			e.dirs[p.dir].stats.Bytes += int64(len(p.data))
		}
		if inOutage && len(e.line) > 0 {
			// Whatever is in the delay line when the window starts is lost
			// with the window; nothing needs waking for before it ends.
			for _, p := range e.line {
				e.dirs[p.dir].stats.Outage++
			}
			e.line = e.line[:0]
		}
		if len(e.line) > 0 {
			next = e.line[0].due.Sub(now)
		}
		e.mu.Unlock()
		for _, p := range due {
			e.tun.Write(p.data) // an error is a packet lost, as on a link
		}
		if next < 0 {
			next = time.Hour
		}
		timer.Reset(next)
		select {
		case <-ctx.Done():
			return
		case <-e.kick:
		case <-timer.C:
		}
	}
}

// execIn runs name inside namespace ns, for what 'ip -n' cannot do (sysctl).
func execIn(ns string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}
