package mover

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestOpenTransferWithHello: the sender writes OpenTransfer with its
// Hello, so the receiver's TransferState comes a round trip sooner, here
// 100 ms; a send that replaces its destination waits for the receiver's
// version first, as replacing needs protocol 8. A receiver of an older
// version reads the pipelined OpenTransfer after the Hello, as it always
// read its control stream.
func TestOpenTransferWithHello(t *testing.T) {
	const oneWay = 50 * time.Millisecond
	send := func(t *testing.T, o SendOptions) *SendResult {
		r, s, proxy := proxiedPair(t)
		proxy.SetDelay(oneWay)
		src := t.TempDir()
		makeTree(t, src, 21, 1)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		o.Src, o.Dest = src, filepath.Join(r.root, "d")
		res, err := s.Send(ctx, proxy.Addr(), r.id.ID, o)
		require.NoError(t, err)
		requireSameTree(t, src, o.Dest)
		t.Logf("%+v", res.Timing)
		return res
	}
	t.Run("pipelined", func(t *testing.T) {
		tm := send(t, SendOptions{}).Timing
		require.Less(t, tm.Opened-tm.Connected, float64(oneWay/time.Millisecond), "TransferState came with the Hello")
	})
	t.Run("overwrite waits for the version", func(t *testing.T) {
		tm := send(t, SendOptions{Overwrite: true}).Timing
		require.GreaterOrEqual(t, tm.Opened-tm.Connected, float64(2*oneWay/time.Millisecond), "a round trip after the Hello")
	})
	t.Run("receiver at protocol 5", func(t *testing.T) {
		asVersion(t, 5)
		tm := send(t, SendOptions{}).Timing
		require.Less(t, tm.Opened-tm.Connected, float64(oneWay/time.Millisecond))
	})
}
