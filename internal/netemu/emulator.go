package netemu

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"time"
)

const (
	maxPacket = 1 << 16
	// maxLine is how many packets the delay line holds, both directions
	// together; beyond it packets drop (counted as Overflow). 100 Mbit/s for
	// 200 ms is about 1,700 full-size packets.
	maxLine = 1 << 15
)

// Directions, as indices of Emulator.dirs.
const (
	dirToHost = iota
	dirFromHost
)

// Emulator emulates one link: it reads IPv4 packets from a TUN device,
// drops, delays, reorders and paces them, and writes each back into the
// same device when it is due. A packet whose destination is the host's
// address goes towards the host; every other packet comes from it.
type Emulator struct {
	tun  *os.File
	host [4]byte

	cancel context.CancelFunc
	wg     sync.WaitGroup // the reader and the scheduler
	kick   chan struct{}  // wakes the scheduler: a packet is queued or an outage began

	mu   sync.Mutex // guards dirs, out, line, seq
	dirs [2]emuDir
	out  outage
	line packetHeap // packets waiting for their time, both directions
	seq  uint64
}

// emuDir is one direction's profile and state.
type emuDir struct {
	p   Profile
	rng *rand.Rand

	tbTime  time.Time // when tokens was last brought up to date
	tokens  float64   // in the bucket at tbTime
	lastOut time.Time // when the last packet left the token bucket
	lastDue time.Time // when the last in-order packet is delivered
	stats   Counters
}

// outage is the emulator's outage window and what arms it.
type outage struct {
	start, until time.Time     // the window; zero until one begins
	trigger      int64         // bytes towards the host left before an armed outage; <0 when none is armed
	length       time.Duration // of the armed outage
	after        int64         // admitted when the window began
	admitted     int64         // bytes admitted towards the host
}

func (o *outage) active(now time.Time) bool {
	return !o.start.IsZero() && !now.Before(o.start) && now.Before(o.until)
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

// Start emulates p on the packets of tun (from OpenTUN) until Close; host is
// the IPv4 address that tells the two directions apart. The emulator owns
// tun from then on, also when it returns an error.
func Start(tun *os.File, host netip.Addr, p Profile) (*Emulator, error) {
	if err := p.Validate(); err != nil {
		tun.Close()
		return nil, err
	}
	if !host.Is4() {
		tun.Close()
		return nil, fmt.Errorf("netemu: host address %s is not IPv4", host)
	}
	e := newEmulator(host, p)
	e.tun = tun
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.wg.Go(e.read)
	e.wg.Go(func() { e.schedule(ctx) })
	return e, nil
}

// newEmulator is the emulator's state without its device and goroutines:
// Start's first half, and what the tests feed made-up packets.
func newEmulator(host netip.Addr, p Profile) *Emulator {
	e := &Emulator{host: host.As4(), kick: make(chan struct{}, 1), out: outage{trigger: -1}}
	for i := range e.dirs {
		e.dirs[i].setProfile(p.withDefaults(), uint64(i))
	}
	return e
}

// SetProfile applies p from now on, in both directions; packets already in
// the delay line keep the time they got.
func (e *Emulator) SetProfile(p Profile) error {
	if err := p.Validate(); err != nil {
		return err
	}
	p = p.withDefaults()
	e.mu.Lock()
	for i := range e.dirs {
		e.dirs[i].setProfile(p, uint64(i))
	}
	e.mu.Unlock()
	return nil
}

// setProfile restarts the random stream: the same profile set twice drops
// the same packets of the same sequence.
func (d *emuDir) setProfile(p Profile, dir uint64) {
	d.rng = rand.New(rand.NewPCG(p.Seed, dir))
	d.p = p
}

// Outage drops every packet, both ways, for d from now on, including those
// in the delay line when it starts, as when a cable is pulled somewhere on
// the path: nobody is told. It replaces an earlier window and disarms
// OutageAfter.
func (e *Emulator) Outage(d time.Duration) {
	now := time.Now()
	e.mu.Lock()
	e.out.trigger = -1
	e.out.start, e.out.until, e.out.after = now, now.Add(d), e.out.admitted
	e.mu.Unlock()
	e.wake()
}

// OutageAfter arms an outage of d that begins once n more bytes have been
// admitted towards the host: the packet that reaches n passes the trigger
// (and is dropped with the delay line), the next ones do not. It fires
// once. It ends the window of an earlier outage and replaces an armed one;
// n < 0 only disarms.
func (e *Emulator) OutageAfter(n int64, d time.Duration) {
	e.mu.Lock()
	e.out.trigger, e.out.length = n, d
	e.out.start, e.out.until = time.Time{}, time.Time{}
	e.mu.Unlock()
}

// Stats returns the emulator's counters.
func (e *Emulator) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return Stats{
		ToHost: e.dirs[dirToHost].stats, FromHost: e.dirs[dirFromHost].stats,
		Admitted:    e.out.admitted,
		OutageStart: e.out.start, OutageEnd: e.out.until, OutageAfter: e.out.after,
	}
}

// Close stops the goroutines and closes the device, which deletes it. It
// may be called once.
func (e *Emulator) Close() error {
	e.cancel()
	err := e.tun.Close()
	e.wg.Wait()
	if err != nil {
		return fmt.Errorf("closing TUN device: %w", err)
	}
	return nil
}

func (e *Emulator) wake() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// read takes packets from the device until it is closed.
func (e *Emulator) read() {
	buf := make([]byte, maxPacket)
	for {
		k, err := e.tun.Read(buf)
		if err != nil {
			// Closed by Close, or the device is gone with its namespace:
			// either way nothing more will come.
			return
		}
		pkt := buf[:k]
		if k < 20 || pkt[0]>>4 != 4 {
			continue // not IPv4: the callers' devices have IPv6 off
		}
		dir := dirFromHost
		if [4]byte(pkt[16:20]) == e.host {
			dir = dirToHost
		}
		e.enqueue(dir, append([]byte(nil), pkt...), time.Now())
	}
}

// errDropped is enqueue's answer for a packet it dropped, for the tests.
var errDropped = errors.New("netemu: dropped")

// enqueue applies the outage window, loss, the token bucket, the outage
// trigger, delay, jitter and reordering to a packet read at now, and queues
// it for its time. It returns errDropped if the packet was dropped.
func (e *Emulator) enqueue(dir int, data []byte, now time.Time) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	d := &e.dirs[dir]
	p := &d.p
	d.stats.Packets++
	if e.out.active(now) {
		d.stats.Outage++
		return errDropped
	}
	if p.Loss > 0 && d.rng.Float64() < p.Loss {
		d.stats.Lost++
		return errDropped
	}
	if len(e.line) >= maxLine {
		d.stats.Overflow++
		return errDropped
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
			return errDropped
		}
		d.tbTime, d.tokens, d.lastOut = tbTime, tokens, out
	}
	if dir == dirToHost {
		e.out.admitted += int64(len(data))
		if e.out.trigger >= 0 {
			if e.out.trigger -= int64(len(data)); e.out.trigger <= 0 {
				e.out.trigger = -1
				e.out.start, e.out.until, e.out.after = now, now.Add(e.out.length), e.out.admitted
				e.wake() // to drop the delay line
			}
		}
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
	return nil
}

// schedule writes packets back to the device when they are due.
func (e *Emulator) schedule(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var due []*emuPacket
	for {
		now := time.Now()
		next := time.Duration(-1)
		due = due[:0]
		e.mu.Lock()
		down := e.out.active(now)
		for len(e.line) > 0 && !e.line[0].due.After(now) {
			p := heap.Pop(&e.line).(*emuPacket)
			if down {
				e.dirs[p.dir].stats.Outage++
				continue
			}
			due = append(due, p)
			e.dirs[p.dir].stats.Delivered++
			e.dirs[p.dir].stats.Bytes += int64(len(p.data))
		}
		if down && len(e.line) > 0 {
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
