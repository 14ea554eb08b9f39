package testsupport

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// udpEcho answers every datagram on a UDP socket of h with the same bytes,
// until the test ends. It returns the socket's address.
func udpEcho(t *testing.T, h *Host) string {
	t.Helper()
	c, err := h.ListenPacket("udp", h.AddrPort(0).String())
	require.NoError(t, err)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		c.Close()
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo(buf[:k], from)
		}
	})
	return c.LocalAddr().String()
}

// udpSink counts what arrives on a UDP socket of h: each datagram starts
// with a big-endian uint32 sequence number.
type udpSink struct {
	addr string
	mu   sync.Mutex // guards seqs, times, bytes
	seqs []uint32   // in arrival order
	// times are the arrival times, bytes the datagrams' sizes.
	times []time.Time
	bytes []int
}

func newUDPSink(t *testing.T, h *Host) *udpSink {
	t.Helper()
	c, err := h.ListenPacket("udp", h.AddrPort(0).String())
	require.NoError(t, err)
	if uc, ok := c.(*net.UDPConn); ok {
		uc.SetReadBuffer(8 << 20)
	}
	s := &udpSink{addr: c.LocalAddr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		c.Close()
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			k, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if k < 4 {
				continue
			}
			s.mu.Lock()
			s.seqs = append(s.seqs, binary.BigEndian.Uint32(buf))
			s.times = append(s.times, time.Now())
			s.bytes = append(s.bytes, k)
			s.mu.Unlock()
		}
	})
	return s
}

func (s *udpSink) snapshot() (seqs []uint32, times []time.Time, bytes []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seqs), slices.Clone(s.times), slices.Clone(s.bytes)
}

// sendUDP sends count datagrams of size bytes, numbered from first, from h
// to addr.
func sendUDP(t *testing.T, h *Host, addr string, first, count uint32, size int) {
	t.Helper()
	c, err := h.DialContext(context.Background(), "udp", addr)
	require.NoError(t, err)
	defer c.Close()
	buf := make([]byte, size)
	for i := range count {
		binary.BigEndian.PutUint32(buf, first+i)
		_, err := c.Write(buf)
		require.NoError(t, err)
	}
}

// drained reports whether the emulator has nothing left in its delay line.
func drained(st LinkStats) bool {
	return st.Packets == st.Delivered+st.Lost+st.Outage+st.Overflow
}

// waitFor polls cond until it holds, failing the test after netnsWait.
func waitFor(t *testing.T, what string, cond func() bool, state ...func() any) {
	t.Helper()
	deadline := time.Now().Add(netnsWait)
	for !cond() {
		if time.Now().After(deadline) {
			var s []any
			for _, f := range state {
				s = append(s, f())
			}
			t.Fatalf("%s: not within %v; %+v", what, netnsWait, s)
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
}

// udpRTTs measures count round trips from h to an echo at addr, one at a
// time.
func udpRTTs(t *testing.T, h *Host, addr string, count int) []time.Duration {
	t.Helper()
	c, err := h.DialContext(context.Background(), "udp", addr)
	require.NoError(t, err)
	defer c.Close()
	var rtts []time.Duration
	buf := make([]byte, 64)
	for i := range count {
		msg := []byte{byte(i), 'p', 'i', 'n', 'g'}
		start := time.Now()
		_, err := c.Write(msg)
		require.NoError(t, err)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			k, err := c.Read(buf)
			require.NoError(t, err, "probe %d unanswered", i)
			if k == len(msg) && buf[0] == byte(i) {
				break // else a late answer to an earlier probe
			}
		}
		rtts = append(rtts, time.Since(start))
	}
	return rtts
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// tcpConnectTime is how long a TCP handshake from h to addr takes (one
// round trip): the shortest of three, which a busy machine lengthens least.
func tcpConnectTime(t *testing.T, h *Host, addr string) time.Duration {
	t.Helper()
	var ds []time.Duration
	for range 3 {
		start := time.Now()
		c, err := dialFrom(h, addr, netnsWait)
		require.NoError(t, err)
		ds = append(ds, time.Since(start))
		c.Close()
	}
	return slices.Min(ds)
}

// TestNetemuDelay: 100 ms each way on a's link is a 200 ms round trip for
// UDP and for a TCP handshake; with 50 ms more on b's link, a packet
// between them crosses both emulators.
func TestNetemuDelay(t *testing.T) {
	n := NewNetwork(t)
	a, b := n.AddHost(t, "a"), n.AddHost(t, "b")
	echo := udpEcho(t, a)
	ln, err := a.Listen("tcp", a.AddrPort(0).String())
	require.NoError(t, err)
	serveTCP(t, ln, "a", nil)

	base := median(udpRTTs(t, b, echo, 5))
	t.Logf("RTT without emulation: %v", base)
	require.Less(t, base, 50*time.Millisecond)

	require.NoError(t, n.SetLinkProfile(a, LinkProfile{Delay: 100 * time.Millisecond}))
	rtts := udpRTTs(t, b, echo, 10)
	tcp := tcpConnectTime(t, b, ln.Addr().String())
	t.Logf("100 ms each way on a: UDP RTT median %v min %v max %v; TCP connect %v", median(rtts), slices.Min(rtts), slices.Max(rtts), tcp)
	require.GreaterOrEqual(t, slices.Min(rtts), 200*time.Millisecond)
	require.Less(t, median(rtts), 250*time.Millisecond)
	require.GreaterOrEqual(t, tcp, 200*time.Millisecond)
	require.Less(t, tcp, 300*time.Millisecond)

	require.NoError(t, n.SetLinkProfile(b, LinkProfile{Delay: 50 * time.Millisecond}))
	rtts = udpRTTs(t, b, echo, 5)
	t.Logf("and 50 ms each way on b: UDP RTT median %v", median(rtts))
	require.GreaterOrEqual(t, slices.Min(rtts), 300*time.Millisecond)
	require.Less(t, median(rtts), 350*time.Millisecond)
	st := n.LinkStats(b)
	require.Positive(t, st.FromHost.Delivered)
	require.Positive(t, st.ToHost.Delivered)

	// Taken out of the path, a link is direct again and its device gone;
	// the other emulator keeps its rules.
	require.NoError(t, n.RemoveLinkEmulation(a))
	rtts = udpRTTs(t, b, echo, 5)
	require.GreaterOrEqual(t, slices.Min(rtts), 100*time.Millisecond)
	require.Less(t, median(rtts), 150*time.Millisecond)
	require.NoError(t, n.RemoveLinkEmulation(b))
	require.Less(t, median(udpRTTs(t, b, echo, 5)), 50*time.Millisecond)
	out, err := exec.Command("ip", "-n", n.router.Netns(), "link", "show").Output()
	require.NoError(t, err)
	require.NotContains(t, string(out), " t1:")
	out, err = exec.Command("ip", "-n", n.router.Netns(), "rule", "show").Output()
	require.NoError(t, err)
	require.NotContains(t, string(out), "lookup 100", "a rule of an emulator left behind:\n%s", out)
}

// TestNetemuLoss: with a fixed seed, the share of datagrams lost is near
// Loss, what is not lost arrives, and the same seed loses the same ones.
func TestNetemuLoss(t *testing.T) {
	const (
		count = 2000
		loss  = 0.2
	)
	n := NewNetwork(t)
	a, b := n.AddHost(t, "a"), n.AddHost(t, "b")
	sink := newUDPSink(t, a)
	// The rate paces the datagrams so that no socket buffer drops any; the
	// queue holds them all.
	p := LinkProfile{Loss: loss, Seed: 42, Rate: 4 << 20, Queue: 8 << 20}

	run := func(first uint32) []uint32 {
		require.NoError(t, n.SetLinkProfile(a, p))
		before := n.LinkStats(a).ToHost
		sendUDP(t, b, sink.addr, first, count, 200)
		var st LinkStats
		waitFor(t, "datagrams through the emulator", func() bool {
			st = n.LinkStats(a).ToHost
			seqs, _, _ := sink.snapshot()
			return st.Packets-before.Packets == count && drained(st) && int64(len(seqs)) == st.Delivered
		})
		lost := st.Lost - before.Lost
		ratio := float64(lost) / count
		t.Logf("Loss %.2f, seed %d: %d of %d datagrams lost (%.3f)", loss, p.Seed, lost, count, ratio)
		require.InDelta(t, loss, ratio, 0.03)
		seqs, _, _ := sink.snapshot()
		var got []uint32
		for _, s := range seqs {
			if s >= first {
				got = append(got, s-first)
			}
		}
		require.Len(t, got, count-int(lost))
		return got
	}
	first := run(0)
	second := run(count)
	require.Equal(t, first, second, "the same seed lost different datagrams")
}

// TestNetemuReorder: Reorder sends a share of the packets ahead of the
// delay line, and they arrive out of order; with jitter alone, packets
// keep their order.
func TestNetemuReorder(t *testing.T) {
	const count = 400
	n := NewNetwork(t)
	a, b := n.AddHost(t, "a"), n.AddHost(t, "b")
	sink := newUDPSink(t, a)
	inversions := func(first uint32) (int, int) {
		seqs, _, _ := sink.snapshot()
		var inv, got int
		var maxSeen uint32
		for _, s := range seqs {
			if s < first {
				continue
			}
			got++
			if s < maxSeen {
				inv++
			}
			maxSeen = max(maxSeen, s)
		}
		return inv, got
	}

	require.NoError(t, n.SetLinkProfile(a, LinkProfile{Delay: 20 * time.Millisecond, Jitter: 15 * time.Millisecond, Seed: 1, Rate: 4 << 20, Queue: 8 << 20}))
	sendUDP(t, b, sink.addr, 0, count, 200)
	waitFor(t, "datagrams with jitter", func() bool { _, got := inversions(0); return got == count })
	inv, _ := inversions(0)
	require.Zero(t, inv, "jitter reordered datagrams")

	require.NoError(t, n.SetLinkProfile(a, LinkProfile{Delay: 20 * time.Millisecond, Reorder: 0.25, Seed: 1, Rate: 4 << 20, Queue: 8 << 20}))
	sendUDP(t, b, sink.addr, count, count, 200)
	waitFor(t, "datagrams with reordering", func() bool { _, got := inversions(count); return got == count })
	inv, _ = inversions(count)
	st := n.LinkStats(a).ToHost
	t.Logf("Reorder 0.25 with 20 ms delay: %d of %d sent ahead; %d arrived after a later one", st.Reordered, count, inv)
	require.InDelta(t, 0.25, float64(st.Reordered)/count, 0.06)
	require.Positive(t, inv, "no datagram arrived out of order")
}

// TestNetemuRate: the token bucket caps TCP and UDP alike.
func TestNetemuRate(t *testing.T) {
	const (
		rate = 1 << 20
		size = 3 << 19 // 1.5 s worth
	)
	n := NewNetwork(t)
	a, b := n.AddHost(t, "a"), n.AddHost(t, "b")
	require.NoError(t, n.SetLinkProfile(a, LinkProfile{Rate: rate}))

	ln, err := a.Listen("tcp", a.AddrPort(0).String())
	require.NoError(t, err)
	serveTCP(t, ln, "a", make([]byte, size))
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
	tcpRate := float64(size) / time.Since(start).Seconds()
	st := n.LinkStats(a).FromHost
	t.Logf("TCP at a 1 MiB/s cap: %.0f KiB/s (%d packets dropped by the queue)", tcpRate/1024, st.Overflow)
	require.Less(t, tcpRate, 1.1*rate)
	require.Greater(t, tcpRate, 0.6*rate)

	// UDP sent at once: the queue holds it all and the bucket paces it out.
	require.NoError(t, n.SetLinkProfile(a, LinkProfile{Rate: rate, Queue: 8 << 20}))
	sink := newUDPSink(t, a)
	const dgrams = 1000 // a second's worth
	sendUDP(t, b, sink.addr, 0, dgrams, 1000)
	waitFor(t, "UDP through the emulator", func() bool {
		seqs, _, _ := sink.snapshot()
		return len(seqs) == dgrams
	}, func() any { seqs, _, _ := sink.snapshot(); return []any{n.LinkStats(a), len(seqs)} })
	seqs, times, bytes := sink.snapshot()
	var total int
	for _, k := range bytes[1:] {
		total += k + 28 // the rate counts IP and UDP headers
	}
	udpRate := float64(total) / times[len(times)-1].Sub(times[0]).Seconds()
	t.Logf("UDP at a 1 MiB/s cap: %.0f KiB/s over %d datagrams", udpRate/1024, len(seqs))
	require.InDelta(t, rate, udpRate, 0.1*rate)
}

// TestNetemuOutage: during an outage window nothing passes either way,
// silently; after it, traffic resumes, and a TCP connection opened before
// carries on.
func TestNetemuOutage(t *testing.T) {
	const outage = time.Second
	n := NewNetwork(t)
	a, b := n.AddHost(t, "a"), n.AddHost(t, "b")
	echo := udpEcho(t, a)
	ln, err := a.Listen("tcp", a.AddrPort(0).String())
	require.NoError(t, err)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() { // a TCP echo, line by line
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	})
	tc, err := dialFrom(b, ln.Addr().String(), netnsWait)
	require.NoError(t, err)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(netnsWait))
	roundTrip := func(msg string) {
		t.Helper()
		_, err := io.WriteString(tc, msg)
		require.NoError(t, err)
		buf := make([]byte, len(msg))
		_, err = io.ReadFull(tc, buf)
		require.NoError(t, err)
		require.Equal(t, msg, string(buf))
	}
	roundTrip("before\n")
	require.NoError(t, n.SetLinkProfile(a, LinkProfile{}))
	require.Less(t, median(udpRTTs(t, b, echo, 3)), 50*time.Millisecond, "through an idle emulator")

	// Probes every 20 ms from before the window to after it; each records
	// when it was sent and whether it was answered.
	uc, err := b.DialContext(context.Background(), "udp", echo)
	require.NoError(t, err)
	defer uc.Close()
	type probe struct {
		sent     time.Time
		answered bool
	}
	var (
		mu     sync.Mutex // guards probes
		probes []probe
	)
	var rg sync.WaitGroup
	rg.Go(func() {
		buf := make([]byte, 8)
		for {
			k, err := uc.Read(buf)
			if err != nil {
				return
			}
			if k == 4 {
				mu.Lock()
				if i := int(binary.BigEndian.Uint32(buf)); i < len(probes) {
					probes[i].answered = true
				}
				mu.Unlock()
			}
		}
	})
	send := func() {
		mu.Lock()
		i := len(probes)
		probes = append(probes, probe{sent: time.Now()})
		mu.Unlock()
		var msg [4]byte
		binary.BigEndian.PutUint32(msg[:], uint32(i))
		uc.Write(msg[:])
	}
	tick := time.NewTicker(20 * time.Millisecond) // the probes' clock, not a wait for an event
	defer tick.Stop()
	for range 10 {
		send()
		<-tick.C
	}
	start := time.Now()
	require.NoError(t, n.Outage(a, outage))
	// Written during the window, the TCP message gets through after it.
	tcpDone := make(chan time.Time, 1)
	rg.Go(func() {
		defer close(tcpDone)
		if _, err := io.WriteString(tc, "during\n"); err != nil {
			return
		}
		buf := make([]byte, 7)
		if _, err := io.ReadFull(tc, buf); err == nil && string(buf) == "during\n" {
			tcpDone <- time.Now()
		}
	})
	for time.Since(start) < outage+500*time.Millisecond {
		send()
		<-tick.C
	}
	waitFor(t, "an answer to the last probe", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return probes[len(probes)-1].answered
	})
	mu.Lock()
	var before, in, after, inAnswered, outMissed int
	for _, p := range probes {
		switch off := p.sent.Sub(start); {
		case off < 0:
			before++
			if !p.answered {
				outMissed++
			}
		case off > 20*time.Millisecond && off < outage-20*time.Millisecond:
			in++
			if p.answered {
				inAnswered++
			}
		case off > outage+50*time.Millisecond:
			after++
			if !p.answered {
				outMissed++
			}
		}
	}
	mu.Unlock()
	st := n.LinkStats(a)
	t.Logf("outage %v: %d probes before, %d in the window, %d after; %d packets dropped to a, %d from a", outage, before, in, after, st.ToHost.Outage, st.FromHost.Outage)
	require.Zero(t, inAnswered, "probes answered during the outage")
	require.Zero(t, outMissed, "probes unanswered outside the outage")
	require.Positive(t, in)
	require.Positive(t, after)
	require.GreaterOrEqual(t, st.ToHost.Outage, int64(in))

	var at time.Time
	select {
	case at = <-tcpDone:
	case <-time.After(netnsWait):
	}
	require.False(t, at.IsZero(), "the TCP message sent during the outage never came back")
	require.GreaterOrEqual(t, at.Sub(start), outage)
	t.Logf("TCP message written during the outage answered %v after it began", at.Sub(start))
	uc.Close()
	tc.Close()
	rg.Wait()
}

// TestNetemuTeardown: a test that ends with emulated links, packets in
// their delay lines and an outage running leaves no namespace behind (the
// TUN devices go with the router's), and TestMain's goleak finds none of
// the emulators' goroutines.
func TestNetemuTeardown(t *testing.T) {
	var names []string
	t.Run("run", func(t *testing.T) {
		n := NewNetwork(t)
		a, b := n.AddHost(t, "a"), n.AddHost(t, "b")
		names = []string{n.router.Netns(), a.Netns(), b.Netns()}
		require.NoError(t, n.SetLinkProfile(a, LinkProfile{Delay: time.Second}))
		require.NoError(t, n.SetLinkProfile(b, LinkProfile{Rate: 1 << 10, Queue: 1 << 20}))
		sink := newUDPSink(t, a)
		sendUDP(t, b, sink.addr, 0, 100, 500)
		waitFor(t, "datagrams in the delay lines", func() bool { return n.LinkStats(b).FromHost.Packets == 100 })
		require.NoError(t, n.Outage(b, time.Hour))
		out, err := exec.Command("ip", "-n", n.router.Netns(), "link", "show").Output()
		require.NoError(t, err)
		require.Contains(t, string(out), " t1:")
		require.Contains(t, string(out), " t2:")
	})
	require.Len(t, names, 3)
	list := netnsList(t)
	for _, ns := range names {
		require.NotContains(t, list, ns, "namespace left behind")
	}
}
