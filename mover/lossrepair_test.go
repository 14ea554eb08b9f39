package mover

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

// TestLossRepairThroughLoss sends through a path that drops 2 % of the
// datagrams each way, on connections framed for loss repair (protocol
// 11): the tree arrives whole, the receiver rebuilt lost datagrams from
// the parities, and plain connections to the same port still work.
func TestLossRepairThroughLoss(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	proxy := testsupport.NewUDPProxy(t, r.addr)
	proxy.SetLoss(0.02, 7)
	src := t.TempDir()
	makeTree(t, src, 6, 64)
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

	// A plain connection to the same port, with loss repair off.
	plain := filepath.Join(r.root, "plain")
	res, err = s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: plain, Connections: 2, LossRepair: LossRepairOff})
	require.NoError(t, err)
	requireSameTree(t, src, plain)
	require.Zero(t, res.Path.Repaired)
}

func TestGroupFor(t *testing.T) {
	require.Equal(t, fecDefaultK, groupFor(0))
	require.Equal(t, fecMaxK, groupFor(0.001))
	require.Equal(t, 8, groupFor(0.005))
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
