package mover

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
)

// Several connections per transfer (protocol 5, step 4.3 of
// docs/design/0005). On a lossy link one QUIC connection's congestion
// window (quic-go's NewReno) stays a few tens of packets whatever the
// link's capacity; N connections hold N windows, as WDT's parallel TCP
// streams do. Extra connections join the transfer their first connection
// opened with the token it was given and carry data streams only: the
// manifest, Need and Committed stay on the first.

const (
	// autoConnections is the most connections Connections=0 opens: with
	// the default 4 streams each, the receiver's 32 data streams of a
	// transfer (protocol.MaxDataStreams). On a 100 Mbit/s, 40 ms path
	// losing 0.5% each way, 8 moved the 260 MB dump 1.8x as fast as 4;
	// 16 of 2 streams each were no faster (docs/BENCHMARKS.md, "Issue 16:
	// more connections on a lossy WAN").
	autoConnections = 8
	// joinEvery is how often auto mode looks at the first connection's
	// loss: a few RTTs of a long path, so that the connections it takes
	// are there for most of a transfer of seconds.
	joinEvery = 250 * time.Millisecond
	// joinLoss is the share of lost packets past which auto mode adds a
	// connection.
	joinLoss = 0.001
	// joinMinPackets is how many packets the first connection must have
	// sent since the last decision for its loss to count: on a long lossy
	// link a second holds only a few dozen.
	joinMinPackets = 30
)

// noLossJoins, set only by tests, stops auto mode from adding connections
// for loss: a test of the early join then counts its connections exactly,
// even when a loaded machine drops datagrams on loopback.
var noLossJoins atomic.Bool

// maxConnections is how many connections this send may use.
func (t *sendTransfer) maxConnections() int {
	if t.o.Connections > 0 {
		return t.o.Connections
	}
	return min(autoConnections, protocol.MaxDataStreams/t.o.Streams)
}

// joinedConns are the extra connections of an attempt, closed when it
// ends: not before, since closing a connection discards what it has not
// yet delivered.
type joinedConns struct {
	mu    sync.Mutex // guards conns
	conns []*quic.Conn
}

func (j *joinedConns) add(c *quic.Conn) {
	j.mu.Lock()
	j.conns = append(j.conns, c)
	j.mu.Unlock()
}

func (j *joinedConns) close() {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, c := range j.conns {
		c.CloseWithError(quic.ApplicationErrorCode(protocol.CloseOK), "")
	}
}

// join adds up to n connections to the transfer first opened, each with
// t.o.Streams data workers on jobs: all at once for a fixed Connections,
// else one per joinEvery while first loses more than joinLoss of the
// packets it sent since the last decision (at least joinMinPackets). It
// returns once the jobs are drained and its workers are done; a worker's
// error fails the attempt, as on the first connection. A connection that
// cannot join is logged and no more are tried.
//
// The connections it adds are framed for loss repair (protocol 11) unless
// LossRepair is off or the receiver (of version) is older: in groups sized
// by the loss that made it add them, or of fecDefaultK for the early join
// of a long path; a fixed count only with LossRepair on.
//
// pre, if not nil, is a framed connection dialled beside the first, which
// the early join of a long path takes instead of dialling.
func (t *sendTransfer) join(ctx context.Context, first *quic.Conn, version uint16, token [protocol.JoinTokenLen]byte, n int, jobs *jobQueue, sent *atomic.Int64, extra *joinedConns, pre *preDial) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		data, watch sync.WaitGroup
		mu          sync.Mutex // guards werr
		werr        error
	)
	repair := t.o.LossRepair != LossRepairOff && version >= protocol.FECVersion
	// loss is the first connection's loss that adds the connection, 0 for
	// a fixed count, earlyLoss for the early join of a long path.
	add := func(loss float64, pre *preDial) bool {
		fecK := 0
		switch {
		case !repair:
		case loss == earlyLoss:
			fecK = fecDefaultK
		case loss > 0 || t.o.LossRepair == LossRepairOn:
			fecK = groupFor(loss)
		}
		// A join that completes after the last job was taken is of no
		// use: give it up then rather than hold back SendDone.
		dctx, dcancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-jobs.drained:
				dcancel()
			case <-dctx.Done():
			}
		}()
		jc, version, err := t.dialJoin(dctx, token, fecK, pre)
		if err != nil && pre != nil && dctx.Err() == nil {
			// A spare that failed or was closed meanwhile: dial afresh.
			t.s.log.Debug("a pre-dialled connection could not join; dialling", "transfer", t.tid, "err", err)
			pre = nil
			jc, version, err = t.dialJoin(dctx, token, fecK, nil)
		}
		dcancel()
		if err != nil {
			if ctx.Err() == nil {
				t.s.log.Info("could not add a connection to the transfer", "transfer", t.tid, "err", err)
			}
			return false
		}
		extra.add(jc)
		framedK := fecK
		if pre != nil {
			t.path.predialled()
			framedK = fecDefaultK // as it was dialled (startPreDial)
		}
		if fecK > 0 {
			t.path.repaired(framedK)
			if loss > 0 && loss != earlyLoss {
				t.lossK.Store(int64(fecK))
			}
		}
		watch.Go(func() { t.path.watch(ctx, jc) })
		for range t.o.Streams {
			data.Go(func() {
				if err := t.dataWorker(ctx, jc, version, jobs, sent); err != nil {
					mu.Lock()
					if werr == nil {
						werr = err
					}
					mu.Unlock()
					cancel()
				}
			})
		}
		return true
	}
	added := 0
	if t.o.Connections > 0 {
		for added < n && add(0, nil) {
			added++
		}
	} else {
		// On a long path, where loss repair pays and the link rather than
		// the CPU limits, one framed connection joins at once: loss would
		// otherwise be learnt a quarter second later, and a connection
		// takes a few round trips more to join.
		// After it, a spare framed connection is dialled ahead, so that the
		// next join, when the first connection's loss calls for it, takes
		// one round trip instead of three or four (a handshake, the Hello,
		// then the join, behind the transfer's own data).
		var spare *preDial
		defer func() { spare.discard() }()
		if repair && longPath(first) && add(earlyLoss, pre) {
			added++
			if added < n {
				spare = t.startPreDial(ctx)
			}
		}
		tick := time.NewTicker(joinEvery)
		last := first.ConnectionStats()
	loop:
		for added < n {
			select {
			case <-ctx.Done():
				break loop
			case <-jobs.drained:
				break loop
			case <-tick.C:
			}
			cs := first.ConnectionStats()
			sentP, lost := cs.PacketsSent-last.PacketsSent, cs.PacketsLost-min(last.PacketsLost, cs.PacketsLost)
			if sentP < joinMinPackets {
				continue // too few to judge: keep counting
			}
			last = cs
			if float64(lost) <= joinLoss*float64(sentP) || noLossJoins.Load() {
				continue
			}
			loss := float64(lost) / float64(sentP)
			var p *preDial
			if groupFor(loss) > fecMinK && spare.ready() {
				// The spare is framed in groups of fecDefaultK, which
				// serve below 2 % (by QUIC's count of one window, noisy
				// and swollen by queue drops: groups sized 8-13 by it
				// were slower on the harness's 0.5 % WAN than 16,
				// docs/BENCHMARKS.md); at 2 % and more, groups of
				// fecMinK, so a connection is dialled for them.
				p, spare = spare, nil
			}
			if !add(loss, p) {
				break
			}
			added++
			if p != nil && added < n {
				spare = t.startPreDial(ctx)
			}
			t.s.log.Debug("added a connection to the transfer", "transfer", t.tid, "connections", added+1, "lost", lost, "sent", sentP)
		}
		tick.Stop()
	}
	// Data workers return once the queue is drained (or ctx ends); the
	// watchers then take their last figures.
	data.Wait()
	cancel()
	watch.Wait()
	mu.Lock()
	defer mu.Unlock()
	return werr
}

// dialJoin opens an extra connection, or takes the one pre dialled (nil:
// none), and joins it to the transfer.
func (t *sendTransfer) dialJoin(ctx context.Context, token [protocol.JoinTokenLen]byte, fecK int, pre *preDial) (*quic.Conn, uint16, error) {
	var (
		conn *quic.Conn
		cs   *controlStream
		err  error
	)
	if pre != nil {
		// dialJoin owns pre: a connection it does not take (ctx ended
		// first) is closed here, not left open beside the transfer.
		if conn, cs, err = pre.take(ctx); err != nil {
			pre.discard()
		}
	} else {
		conn, cs, _, err = dialMoverFEC(ctx, t.addr, t.s.id, t.peer, t.o.IdleTimeout, PermSend, fecK, nil)
	}
	if err != nil {
		return nil, 0, err
	}
	if cs.version < protocol.JoinVersion {
		conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseOK), "")
		return nil, 0, fmt.Errorf("%w: the receiver speaks protocol %d", protocol.ErrVersion, cs.version)
	}
	if err := cs.write(&protocol.JoinTransfer{TransferID: t.tid, Token: token}); err != nil {
		conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), "")
		return nil, 0, err
	}
	m, err := cs.next()
	if err == nil {
		if _, ok := m.(*protocol.TransferState); !ok {
			err = fmt.Errorf("%w: expected TransferState, got %s", protocol.ErrProtocol, m.Type())
		}
	}
	if err != nil {
		conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), "")
		return nil, 0, fmt.Errorf("joining transfer %s: %w", t.tid, err)
	}
	return conn, cs.version, nil
}
