package netemu

import (
	"errors"
	"time"
)

// Profile is how an emulated link treats packets, in each direction
// independently (each has its own queue and random stream). Its zero value
// passes packets through unchanged.
type Profile struct {
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
	// with each SetProfile: the same profile on the same sequence of
	// packets drops the same ones.
	Seed uint64
}

func (p Profile) withDefaults() Profile {
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
func (p Profile) Validate() error {
	switch {
	case p.Delay < 0 || p.Jitter < 0:
		return errors.New("netemu: negative delay or jitter")
	case p.Loss < 0 || p.Loss > 1 || p.Reorder < 0 || p.Reorder > 1:
		return errors.New("netemu: loss and reorder are shares from 0 to 1")
	case p.Rate < 0 || p.Burst < 0 || p.Queue < 0:
		return errors.New("netemu: negative rate, burst or queue")
	}
	return nil
}

// Counters count what an emulator did with the packets of one direction.
type Counters struct {
	Packets   int64 // read from the device
	Delivered int64 // written back to the device
	Lost      int64 // dropped by Loss
	Outage    int64 // dropped during an outage window (on arrival or in the delay line)
	Overflow  int64 // dropped because the rate's queue or the delay line was full
	Reordered int64 // sent ahead of the delay line
	Bytes     int64 // delivered bytes, IP headers included
}

// Stats is an emulator's Counters by direction, and its outages.
type Stats struct {
	ToHost, FromHost Counters
	// Admitted is the bytes admitted towards the host since the start: read
	// and not dropped on arrival (by loss, an outage or a full queue).
	// OutageAfter counts in it.
	Admitted int64
	// OutageStart and OutageEnd are the window of the last outage; zero
	// until one has begun (an outage armed with OutageAfter begins when its
	// bytes have passed).
	OutageStart, OutageEnd time.Time
	// OutageAfter is Admitted when the last outage began.
	OutageAfter int64
}
