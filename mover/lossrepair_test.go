package mover

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/mover/fec"
	"github.com/stretchr/testify/require"
)

// TestLossRepairThroughLoss sends through a path that drops 2 % of the
// datagrams each way, on connections framed for loss repair (protocol
// 11): the tree arrives whole, the receiver rebuilt lost datagrams from
// the parities, and plain connections to the same port still work.
func TestLossRepairThroughLoss(t *testing.T) {
	r, s, proxy := proxiedPair(t)
	proxy.SetLoss(0.02, 7)
	src := t.TempDir()
	makeTree(t, src, 6, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dest := filepath.Join(r.root, "repaired")
	res, err := s.Send(ctx, proxy.Addr(), r.id.ID, SendOptions{Src: src, Dest: dest, Connections: 2, LossRepair: LossRepairOn, Compression: "none"})
	require.NoError(t, err)
	requireSameTree(t, src, dest)
	require.NotNil(t, res.Path)
	require.Equal(t, 2, res.Path.Repaired, "both connections framed")
	require.Equal(t, fecDefaultK, res.Path.RepairGroup)
	st := r.srv.fecConn.Stats()
	require.Positive(t, st.Data)
	require.Positive(t, st.Recovered, "the path lost datagrams the parities rebuilt")
	require.Less(t, st.Lost, st.Recovered, "most losses are repaired")
	t.Logf("loss repair: %+v", st)

	// A plain connection to the same port, with loss repair off.
	plain := filepath.Join(r.root, "plain")
	res, err = s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: plain, Connections: 2, LossRepair: LossRepairOff})
	require.NoError(t, err)
	requireSameTree(t, src, plain)
	require.Zero(t, res.Path.Repaired)
}

// proxiedPair starts a receiver, a sender it trusts, and a UDP proxy in
// front of the receiver, whose address the tests send to.
func proxiedPair(t *testing.T) (*testReceiver, *Sender, *testsupport.UDPProxy) {
	r := startReceiver(t, ServerOptions{})
	return r, newTestSender(t, r, PermSend), testsupport.NewUDPProxy(t, r.addr)
}

func TestGroupFor(t *testing.T) {
	require.Equal(t, fecDefaultK, groupFor(0))
	require.Equal(t, fecMaxK, groupFor(0.001))
	require.Equal(t, 16, groupFor(0.01))
	require.Equal(t, 10, groupFor(0.015))
	require.Equal(t, fecMinK, groupFor(0.02))
	require.Equal(t, fecMinK, groupFor(0.05))
	require.Equal(t, fecMinK, groupFor(0.5))
}

func TestLossRepairOption(t *testing.T) {
	o := SendOptions{Src: "/x", Dest: "/y", LossRepair: "maybe"}
	require.ErrorContains(t, o.Validate(), `loss repair "maybe"`)
	for _, m := range []string{"", LossRepairAuto, LossRepairOn, LossRepairOff} {
		o.LossRepair = m
		require.NoError(t, o.Validate())
	}
}

// TestLossRepairMemory: a send that adds connections for loss frames them
// and records the group size for the peer; the next send frames its first
// connection at once. When the peer stops answering framed datagrams (a
// build below protocol 11 in its place), the send dials without, forgets,
// and completes.
func TestLossRepairMemory(t *testing.T) {
	r, s, proxy := proxiedPair(t)
	proxy.SetLoss(0.03, 11)
	src, src2 := t.TempDir(), t.TempDir()
	makeTree(t, src, 8, 1)
	makeTree(t, src2, 9, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	home := s.id.home
	require.Zero(t, rememberedRepair(home, r.id.ID))

	// Slow enough for the quarter-second loss checks to add connections.
	o := SendOptions{Src: src, Dest: filepath.Join(r.root, "first"), BWLimit: 2 << 20, Compression: "none"}
	res, err := s.Send(ctx, proxy.Addr(), r.id.ID, o)
	require.NoError(t, err)
	t.Logf("%s: %.1f s, %d bytes, %d connections, %d framed", o.Dest, res.Seconds, res.Bytes, res.Path.Connections, res.Path.Repaired)
	requireSameTree(t, src, o.Dest)
	require.Positive(t, res.Path.Repaired, "connections added for loss are framed")
	require.Less(t, res.Path.Repaired, res.Path.Connections, "the first connection is not")
	k := rememberedRepair(home, r.id.ID)
	require.Equal(t, res.Path.RepairGroup, k)

	o.Src, o.Dest = src2, filepath.Join(r.root, "second")
	res, err = s.Send(ctx, proxy.Addr(), r.id.ID, o)
	require.NoError(t, err)
	t.Logf("%s: %.1f s, %d bytes, %d connections, %d framed", o.Dest, res.Seconds, res.Bytes, res.Path.Connections, res.Path.Repaired)
	requireSameTree(t, src2, o.Dest)
	require.Equal(t, res.Path.Connections, res.Path.Repaired, "the first connection is framed too")

	// A receiver that drops framed datagrams, as one below protocol 11 does.
	proxy.SetFilter(func(dir testsupport.Direction, p []byte) bool { return len(p) > 0 && fec.IsFrame(p[0]) })
	o.Src, o.Dest = src, filepath.Join(r.root, "third")
	res, err = s.Send(ctx, proxy.Addr(), r.id.ID, o)
	require.NoError(t, err)
	t.Logf("%s: %.1f s, %d bytes, %d connections, %d framed", o.Dest, res.Seconds, res.Bytes, res.Path.Connections, res.Path.Repaired)
	requireSameTree(t, src, o.Dest)
	require.Zero(t, res.Path.Repaired)
	require.Zero(t, rememberedRepair(home, r.id.ID), "forgotten")
}

// TestLossRepairEarlyJoin: on a path of 10 ms or more, auto mode joins one
// framed connection at once, with no loss measured; on loopback it does
// not (TestLossRepairMemory's first send adds them only for loss). Joins
// for loss are off: under -race on a loaded machine, loopback itself
// dropped enough datagrams for a second join (CI of 5a23285).
func TestLossRepairEarlyJoin(t *testing.T) {
	longPathsFrom(t, 10*time.Millisecond)
	noJoinsForLoss(t)
	r, s, proxy := proxiedPair(t)
	proxy.SetDelay(8 * time.Millisecond)
	src := t.TempDir()
	makeTree(t, src, 12, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := s.Send(ctx, proxy.Addr(), r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "early"), BWLimit: 4 << 20})
	require.NoError(t, err)
	requireSameTree(t, src, filepath.Join(r.root, "early"))
	require.GreaterOrEqual(t, res.Path.MinRTTMillis, 10.0)
	require.Equal(t, 1, res.Path.Repaired, "one framed connection joined")
	require.Equal(t, fecDefaultK, res.Path.RepairGroup)
	require.Zero(t, rememberedRepair(s.id.home, r.id.ID), "no loss: nothing remembered")
}

// TestLossRepairSpareJoin: after the early join of a long path, a framed
// connection is dialled ahead, and the next join, which the first
// connection's loss calls for, takes it instead of dialling: a round trip
// rather than three or four.
func TestLossRepairSpareJoin(t *testing.T) {
	longPathsFrom(t, 10*time.Millisecond)
	r, s, proxy := proxiedPair(t)
	proxy.SetDelay(8 * time.Millisecond)
	// One datagram in 300 towards the receiver lost: the first connection
	// loses more than joinLoss, and less than the 2 % that asks for
	// groups smaller than the spare's.
	var n atomic.Int64
	proxy.SetFilter(func(dir testsupport.Direction, _ []byte) bool {
		return dir == testsupport.ToTarget && n.Add(1)%300 == 0
	})
	src := t.TempDir()
	makeTree(t, src, 13, 2)
	dest := filepath.Join(r.root, "spare")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := s.Send(ctx, proxy.Addr(), r.id.ID, SendOptions{Src: src, Dest: dest, BWLimit: 4 << 20, Compression: "none"})
	require.NoError(t, err)
	requireSameTree(t, src, dest)
	require.GreaterOrEqual(t, res.Path.Connections, 3, "a join for loss after the early one")
	require.GreaterOrEqual(t, res.Path.PreDialled, 2, "the early join and the join for loss took connections dialled ahead")
	require.Equal(t, res.Path.Connections-1, res.Path.Repaired, "every joined connection framed")
}

// TestLossRepairForgedParity: frames are not authenticated, the QUIC
// packets they carry are. With every parity towards the receiver forged
// (its bytes flipped, as an attacker on the path could), each datagram
// "rebuilt" from one is garbage that QUIC discards, and QUIC's own
// recovery sends the lost data again: the tree arrives whole.
func TestLossRepairForgedParity(t *testing.T) {
	r, s, proxy := proxiedPair(t)
	proxy.SetLoss(0.03, 13)
	proxy.SetFilter(func(dir testsupport.Direction, p []byte) bool {
		if dir == testsupport.ToTarget && len(p) > fec.HeaderLen+2 && p[0] == fec.TypeParity {
			for i := fec.HeaderLen + 2; i < len(p); i++ {
				p[i] ^= 0x5a
			}
		}
		return false
	})
	src := t.TempDir()
	makeTree(t, src, 14, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dest := filepath.Join(r.root, "forged")
	_, err := s.Send(ctx, proxy.Addr(), r.id.ID, SendOptions{Src: src, Dest: dest, Connections: 2, LossRepair: LossRepairOn, Compression: "none"})
	require.NoError(t, err)
	requireSameTree(t, src, dest)
	require.Positive(t, r.srv.fecConn.Stats().Recovered, "datagrams were rebuilt from the forged parities")
}
