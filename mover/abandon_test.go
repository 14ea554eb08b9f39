package mover

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// crashingReceiver is a receiver whose transfers fail at the partialHook
// point crashAt (while set), leaving DEST.partial (or its temporary
// directory) and its record, as a sender cancelled mid-transfer does.
type crashingReceiver struct {
	*testReceiver
	mu      sync.Mutex // guards crashAt
	crashAt string
}

func startCrashingReceiver(t *testing.T) *crashingReceiver {
	c := &crashingReceiver{}
	c.testReceiver = startReceiver(t, ServerOptions{Reserve: 1, partialHook: func(at string) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		if at == c.crashAt {
			return errors.New("crashed here (test)")
		}
		return nil
	}})
	return c
}

// leave makes s's transfer tid to dest fail at the hook point at, and
// returns the record DEST's leftover has.
func (c *crashingReceiver) leave(t *testing.T, s *Sender, src, dest, tid, at string) destRecord {
	t.Helper()
	c.mu.Lock()
	c.crashAt = at
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.crashAt = ""
		c.mu.Unlock()
	}()
	_, err := s.Send(context.Background(), c.addr, c.id.ID, SendOptions{Src: src, Dest: dest, TransferID: tid, RetryFor: -1})
	require.ErrorContains(t, err, "crashed here")
	v, ok, err := dbGet(c.srv.db, keyDest(dest))
	require.NoError(t, err)
	require.True(t, ok)
	return decodeDestRecord(v)
}

func (c *crashingReceiver) requireNoRecord(t *testing.T, dest string) {
	t.Helper()
	_, ok, err := dbGet(c.srv.db, keyDest(dest))
	require.NoError(t, err)
	require.False(t, ok, "the record of %s is gone", dest)
}

// TestAbandon: the peer that sent a transfer removes what it left on the
// receiver (a cancelled export's DEST.partial, with what was written into
// it; the temporary directory of a DEST.partial being made) and its
// records; a later transfer to the same destination works. Before
// protocol 12 nothing could remove them remotely.
func TestAbandon(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "a.dat"), randomBytes(1<<20, 7), 0o644))
	r := startCrashingReceiver(t)
	s := newTestSender(t, r.testReceiver, PermSend)

	t.Run("partial", func(t *testing.T) {
		dest := filepath.Join(r.root, "a1")
		rec := r.leave(t, s, src, dest, "t-a1", "renamed")
		require.Equal(t, s.ID().String(), rec.Peer, "the record names the peer")
		require.NoError(t, os.WriteFile(filepath.Join(dest+".partial", "a.dat"), []byte("written before the cancel"), 0o600))
		st, err := s.Abandon(ctx, r.addr, r.id.ID, "t-a1", dest)
		require.NoError(t, err)
		require.Equal(t, protocol.AbandonRemoved, st)
		require.NoDirExists(t, dest+".partial")
		r.requireNoRecord(t, dest)
		requireNoLeftovers(t, r.root, "a1")

		st, err = s.Abandon(ctx, r.addr, r.id.ID, "t-a1", dest)
		require.NoError(t, err)
		require.Equal(t, protocol.AbandonNothing, st, "a second abandon finds nothing")

		_, err = s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, TransferID: "t-a1", RetryFor: -1})
		require.NoError(t, err)
		requireSameTree(t, src, dest)
	})
	t.Run("temporary directory", func(t *testing.T) {
		dest := filepath.Join(r.root, "a2")
		rec := r.leave(t, s, src, dest, "t-a2", "made")
		require.True(t, rec.Pending)
		require.DirExists(t, filepath.Join(r.root, rec.Temp))
		st, err := s.Abandon(ctx, r.addr, r.id.ID, "t-a2", dest)
		require.NoError(t, err)
		require.Equal(t, protocol.AbandonRemoved, st)
		r.requireNoRecord(t, dest)
		requireNoLeftovers(t, r.root, "a2")
	})
	t.Run("committed", func(t *testing.T) {
		dest := filepath.Join(r.root, "a3")
		_, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, TransferID: "t-a3", RetryFor: -1})
		require.NoError(t, err)
		st, err := s.Abandon(ctx, r.addr, r.id.ID, "t-a3", dest)
		require.NoError(t, err)
		require.Equal(t, protocol.AbandonNothing, st)
		requireSameTree(t, src, dest)
	})
	t.Run("outside the roots", func(t *testing.T) {
		_, err := s.Abandon(ctx, r.addr, r.id.ID, "t-a1", filepath.Join(t.TempDir(), "x"))
		require.ErrorIs(t, err, protocol.ErrPermission)
	})
}

func requireNoLeftovers(t *testing.T, root, base string) {
	t.Helper()
	entries, err := os.ReadDir(root)
	require.NoError(t, err)
	for _, e := range entries {
		require.NotContains(t, e.Name(), base+".partial", "left behind")
	}
}

// TestHostileAbandon: another identity trusted with send cannot make the
// receiver remove the first peer's DEST.partial, whether it names the
// first peer's transfer or another; nor can a peer without send.
func TestHostileAbandon(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "a.dat"), randomBytes(1<<20, 8), 0o644))
	r := startCrashingReceiver(t)
	s := newTestSender(t, r.testReceiver, PermSend)
	hostile := newTestSender(t, r.testReceiver, PermSend)
	reader := newTestSender(t, r.testReceiver, PermRead)
	dest := filepath.Join(r.root, "h")
	before := r.leave(t, s, src, dest, "t-h", "renamed")
	require.NoError(t, os.WriteFile(filepath.Join(dest+".partial", "a.dat"), []byte("the first peer's"), 0o600))

	_, err := hostile.Abandon(ctx, r.addr, r.id.ID, "t-h", dest)
	require.ErrorIs(t, err, protocol.ErrPermission)
	require.ErrorContains(t, err, "not made by this peer")
	st, err := hostile.Abandon(ctx, r.addr, r.id.ID, "t-other", dest)
	require.NoError(t, err)
	require.Equal(t, protocol.AbandonNothing, st)
	_, err = reader.Abandon(ctx, r.addr, r.id.ID, "t-h", dest)
	require.ErrorIs(t, err, protocol.ErrPermission)

	got, err := os.ReadFile(filepath.Join(dest+".partial", "a.dat"))
	require.NoError(t, err)
	require.Equal(t, "the first peer's", string(got))
	v, ok, err := dbGet(r.srv.db, keyDest(dest))
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, before, decodeDestRecord(v), "the record is kept")
}

// TestAbandonSwappedPartial: a DEST.partial replaced, after it was
// recorded, by another directory (of the same owner, in the root) is not
// removed: only the directory the record names is.
func TestAbandonSwappedPartial(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "a.dat"), randomBytes(1<<20, 9), 0o644))
	r := startCrashingReceiver(t)
	s := newTestSender(t, r.testReceiver, PermSend)
	dest := filepath.Join(r.root, "w")
	r.leave(t, s, src, dest, "t-w", "renamed")
	victim := victimDir(t, r.root)
	require.NoError(t, os.Rename(dest+".partial", dest+".moved"))
	require.NoError(t, os.Rename(victim, dest+".partial"))

	_, err := s.Abandon(ctx, r.addr, r.id.ID, "t-w", dest)
	require.ErrorIs(t, err, protocol.ErrConflict)
	require.ErrorContains(t, err, "not the directory this mover created")
	requireVictimIntact(t, dest+".partial")
	require.DirExists(t, dest+".moved")
}

// TestAbandonOldReceiver: a receiver below protocol 12 is sent no Abandon;
// the sender reports it as too old, naming its address and protocol.
func TestAbandonOldReceiver(t *testing.T) {
	r := startReceiver(t, ServerOptions{Reserve: 1})
	s := newTestSender(t, r, PermSend)
	testServerVersion.Store(uint32(protocol.AbandonVersion - 1))
	t.Cleanup(func() { testServerVersion.Store(0) })
	_, err := s.Abandon(context.Background(), r.addr, r.id.ID, "t-o", filepath.Join(r.root, "o"))
	var old *TooOldError
	require.ErrorAs(t, err, &old)
	require.ErrorIs(t, err, protocol.ErrVersion)
	require.Equal(t, "the target mover at "+r.addr+" is too old to remove partial directories (protocol 11); they stay, and the next export to the same destination takes them over", err.Error())
}
