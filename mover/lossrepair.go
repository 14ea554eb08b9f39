package mover

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgporter/pgporter/mover/fec"
	"github.com/pgporter/pgporter/protocol"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
)

// Loss repair (protocol 11, package fec): a connection whose datagrams are
// framed in groups with a parity each, so that a single random loss in a
// group is rebuilt by the receiving socket and never reaches quic-go's
// congestion controller, which halves its window on every loss.

// Loss repair modes of SendOptions.LossRepair.
const (
	// LossRepairAuto (Connections 0) frames the connections a transfer
	// adds because its first connection loses packets, in groups sized by
	// that loss; one it adds at once on a long path (longPath); and
	// the first connection itself when the last send to the peer needed
	// repair (rememberedRepair).
	LossRepairAuto = "auto"
	// LossRepairOn frames every connection of a transfer, the first too.
	LossRepairOn = "on"
	// LossRepairOff frames none.
	LossRepairOff = "off"
)

func validLossRepair(m string) error {
	switch m {
	case "", LossRepairAuto, LossRepairOn, LossRepairOff:
		return nil
	}
	return fmt.Errorf("mover: loss repair %q: use auto, on or off", m)
}

// Group sizes: a parity per fecMaxK datagrams where the path loses
// little (6 % more datagrams), per fecMinK where it loses much (12.5 %
// more; at 5 % loss 1.7 % of the datagrams then stay lost, against 2.8 %
// in groups of 16). Not smaller: a plain connection's count of lost
// packets also holds the drops of a full queue at the bottleneck, which
// no parity repairs, and on a link-bound path each parity costs its
// bytes (groups of 4 made the harness's 260 MB WAN transfer a quarter
// longer).
const (
	fecMinK = 8
	fecMaxK = 16
	// fecDefaultK is the group size before any loss is measured (the early
	// join of a long path). At 8, the harness's WAN transfers put 4.1 MB
	// on the link at 51 MB and 20.3 MB at 260 MB; at 16 (with groupFor's
	// 0.16), 3.7 and 18.7 MB (docs/BENCHMARKS.md).
	fecDefaultK = 16
)

// groupFor sizes the groups for a plain connection that lost the share
// loss of its packets by QUIC's count, which also counts packets that
// were late rather than lost, and a full queue's drops: about twice the
// path's random loss on the harness's WAN (421 declared lost against 136
// dropped). So 0.16/loss is about one random loss per 12 groups at most,
// and two in one group, which a parity cannot repair, stay rare: at a
// path's 0.5 % in groups of 16, 0.3 % of the groups. 16 up to 1 % by
// QUIC's count, 8 from 2 %.
//
// Resizing the groups of the connections already framed by the first
// connection's loss over the whole transfer was tried and not kept: its
// count holds the queue's drops as connections join, which made the
// 260 MB transfer's groups 8 to 13, and it slower (2.119 s against 2.006 s).
func groupFor(loss float64) int {
	if loss <= 0 {
		return fecDefaultK
	}
	return min(max(int(0.16/loss), fecMinK), fecMaxK)
}

// repairRTT is the round trip from which a path is long (longPath): auto
// mode then adds a framed connection to a transfer at once (join), before
// any loss, and the compression ladder keeps to zstd fastest or above. A
// LAN's is well below it; there the CPU limits, and GSO, which a framed
// socket cannot use, matters more. A variable only for the tests, which
// raise it: on loopback under the race detector a handshake's round trip
// can pass 10 ms.
var repairRTT atomic.Int64

func init() { repairRTT.Store(int64(10 * time.Millisecond)) }

// longPath reports whether conn's path is long: its least round trip
// measured (the handshake's, early on) is repairRTT or more.
func longPath(conn *quic.Conn) bool {
	return conn.ConnectionStats().MinRTT >= time.Duration(repairRTT.Load())
}

// earlyLoss marks the early join of a long path for join's add: no loss
// measured.
const earlyLoss = -1

// fecQUICConfig is qc for a framed connection: packets of quic-go's
// initial size (1280 bytes; the frame header and a parity's fields fit
// in any path that carries QUIC) and no path MTU discovery, which the
// framed socket cannot do (no DF control).
func fecQUICConfig(qc *quic.Config) *quic.Config {
	c := qc.Clone()
	c.DisablePathMTUDiscovery = true
	c.InitialPacketSize = 1280
	return c
}

// registerRepair exports the loss repair counts of a mover's framed
// connections, read from stats when scraped.
func (m *metrics) registerRepair(stats func() fec.Stats) {
	counter := func(name, help string, v func(fec.Stats) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "pgporter", Subsystem: "mover", Name: name, Help: help},
			func() float64 { return float64(v(stats())) })
	}
	m.reg.MustRegister(
		counter("repair_datagrams_total", "Data datagrams received on framed (loss repair) connections.", func(s fec.Stats) int64 { return s.Data }),
		counter("repair_recovered_total", "Datagrams lost on the path and rebuilt from a parity, which QUIC never saw as lost.", func(s fec.Stats) int64 { return s.Recovered }),
		counter("repair_lost_total", "Datagrams lost on framed connections that no parity could rebuild (two or more in a group): QUIC saw these.", func(s fec.Stats) int64 { return s.Lost }),
		counter("repair_dropped_total", "Frames refused as malformed or repeated.", func(s fec.Stats) int64 { return s.Dropped }),
	)
}

// readFrames hands a Bridge the frames tr's own reader passes over, until
// tr is closed: where the listening socket cannot divert them itself
// (serverPacketConn). quic-go queues at most 32 such datagrams.
func readFrames(tr *quic.Transport, b *fec.Bridge) {
	buf := make([]byte, 64<<10)
	for {
		n, addr, err := tr.ReadNonQUICPacket(context.Background(), buf)
		if err != nil {
			return
		}
		b.Handle(buf[:n], addr)
	}
}

// A sender remembers, per peer, the group size a send needed, as Linux
// keeps a path's metrics per destination (tcp_metrics): the next send to
// the peer in auto mode frames its first connection at once instead of
// learning the loss again at a quarter second per connection. The memory
// is refreshed by each send that adds connections for loss, and lapses
// after repairMemory.
const repairMemory = 24 * time.Hour

// rememberedRepair is the group size home's last sends to peer needed,
// 0 if none within repairMemory.
func rememberedRepair(home string, peer PeerID) int {
	if home == "" {
		return 0
	}
	p, ok := LoadPeersSeen(home)[peer]
	if !ok || p.Repair == 0 || time.Since(p.RepairAt) > repairMemory {
		return 0
	}
	return p.Repair
}

// noteRepair records that a send to peer needed groups of k (0: forget).
func noteRepair(home string, peer PeerID, k int) error {
	if home == "" || peer.IsZero() {
		return nil
	}
	return writePeerSeen(home, peer, func(r *peerSeenRec) {
		r.Repair, r.RepairAt = k, time.Now().UTC().Truncate(time.Second)
		if k == 0 {
			r.RepairAt = time.Time{}
		}
	})
}

// preDial is a framed connection dialled beside a transfer's first, in
// auto mode when nothing is remembered of the peer: on a long path the
// early join (join) then needs only its JoinTransfer, not a handshake and
// a Hello more (about 2 round trips of a transfer that may last 20). On
// a short path, or to a receiver below protocol 11, it is discarded as
// soon as the first connection says so. After the early join, join keeps
// one more dialled ahead (a spare) for the next join that loss calls for.
type preDial struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the dial returned

	conn *quic.Conn // set before done is closed
	cs   *controlStream
	err  error

	mu    sync.Mutex // guards taken
	taken bool
}

func (t *sendTransfer) startPreDial(ctx context.Context) *preDial {
	ctx, cancel := context.WithCancel(ctx)
	p := &preDial{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.conn, p.cs, _, p.err = dialMoverFEC(ctx, t.addr, t.s.id, t.peer, t.o.IdleTimeout, PermSend, fecDefaultK, nil)
	}()
	return p
}

// take waits for the dial and hands its connection over; nil p has none.
func (p *preDial) take(ctx context.Context) (*quic.Conn, *controlStream, error) {
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return nil, nil, p.err
	}
	if p.taken {
		return nil, nil, errors.New("mover: pre-dialled connection already taken")
	}
	p.taken = true
	return p.conn, p.cs, nil
}

// ready reports whether p's dial has succeeded and its connection is
// still there to take, without waiting; false on nil.
func (p *preDial) ready() bool {
	if p == nil {
		return false
	}
	select {
	case <-p.done:
	default:
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err == nil && !p.taken && p.conn.Context().Err() == nil
}

// discard stops the dial and closes its connection unless it was taken;
// it waits for the dialling goroutine. Safe on nil and more than once.
func (p *preDial) discard() {
	if p == nil {
		return
	}
	p.cancel()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.taken && p.conn != nil {
		p.taken = true
		p.conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseOK), "")
	}
}
