package orchestrator

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// serveMoverAt serves a mover with home o.Home at addr (a restart keeps
// the address a plan names), until stop is called or the test ends.
func serveMoverAt(t *testing.T, o mover.ServerOptions, addr string) (m testMover, stop func()) {
	t.Helper()
	_, _, err := mover.InitIdentity(o.Home)
	require.NoError(t, err)
	o.Listen = addr
	srv, err := mover.NewServer(o)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return testMover{home: o.Home, id: srv.ID(), addr: srv.Addr().String()}, stop
}

// interruptedTransfer runs plan until its transfer of shop has made bytes
// durable on the target, then interrupts it, as a killed export would be:
// the target keeps shop.partial.
func interruptedTransfer(t *testing.T, home string, plan Plan) *Session {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newRunner(t, home, func(e Event) {
		if e.Step == TransferStep("shop") && e.Kind == protocol.EventProgress && e.Done > 0 {
			cancel()
		}
	})
	s, err := r.Create(t.Context(), plan)
	require.NoError(t, err)
	_, err = r.Run(ctx, s.ID)
	require.Error(t, err)
	require.DirExists(t, filepath.Join(plan.To, "shop.partial"), "the target keeps what was sent")
	return s
}

// TestCancelRemovesTargetPartial: cancel of an export to a target mover on
// another host, interrupted mid-transfer, has the target remove the
// shop.partial it made (before protocol 12 it stayed, for a later export
// to take over); a later export to the same destination works. A target
// that cannot be reached: the rest is cancelled, the error says what is
// left (exit 4 in the CLI), and a second cancel removes it.
func TestCancelRemovesTargetPartial(t *testing.T) {
	f := newFixture(t)
	home := t.TempDir()
	orchID := identity(t, home)
	plan := func(to, target string) Plan {
		return Plan{Repo: f.repo, Target: target, RestorePoint: "latest", Databases: []string{"shop"}, To: to, BWLimit: 256 << 10}
	}

	t.Run("reachable", func(t *testing.T) {
		to := t.TempDir()
		target, _ := serveMoverAt(t, mover.ServerOptions{Home: t.TempDir(), Roots: []string{to}}, "127.0.0.1:0")
		trust(t, target.home, orchID, mover.PermSend)
		s := interruptedTransfer(t, home, plan(to, target.spec()))

		r := newRunner(t, home, nil)
		s, err := r.Cancel(context.Background(), s.ID)
		require.NoError(t, err)
		require.Equal(t, StateCancelled, s.State)
		require.Equal(t, []string{filepath.Join(to, "shop.partial")}, s.RemovedOnTarget)
		require.Empty(t, s.TargetNotes)
		require.Empty(t, s.Resources.TargetLeft)
		require.NoDirExists(t, filepath.Join(to, "shop.partial"))
		entries, err := os.ReadDir(to)
		require.NoError(t, err)
		require.Empty(t, entries, "nothing of the session is left in --to")
		// The target's record is gone too: asked again, it has nothing.
		sender, err := mover.NewSender(home, nil)
		require.NoError(t, err)
		st, err := sender.Abandon(context.Background(), target.addr, target.id, s.ID+"-"+transferIDPart("shop"), filepath.Join(to, "shop"))
		sender.Close()
		require.NoError(t, err)
		require.Equal(t, protocol.AbandonNothing, st)

		p := plan(to, target.spec())
		p.BWLimit = 0
		s2, err := r.Create(t.Context(), p)
		require.NoError(t, err)
		s2, err = r.Run(context.Background(), s2.ID)
		require.NoError(t, err)
		require.Equal(t, StateDone, s2.State)
		f.restoreAndCompare(t, filepath.Join(to, "shop"), "shop")
	})

	t.Run("unreachable", func(t *testing.T) {
		to, targetHome := t.TempDir(), t.TempDir()
		target, stop := serveMoverAt(t, mover.ServerOptions{Home: targetHome, Roots: []string{to}}, "127.0.0.1:0")
		trust(t, target.home, orchID, mover.PermSend)
		s := interruptedTransfer(t, home, plan(to, target.spec()))
		stop()

		r := newRunner(t, home, nil)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		s, err := r.Cancel(ctx, s.ID)
		require.ErrorIs(t, err, ErrTargetLeft)
		require.ErrorIs(t, err, mover.ErrNoAnswer)
		require.ErrorContains(t, err, filepath.Join(to, "shop.partial"))
		require.Equal(t, StateCancelled, s.State, "what is on this host is released")
		require.Equal(t, []string{"shop"}, s.Resources.TargetLeft)
		require.NoDirExists(t, s.SessionDir())
		require.DirExists(t, filepath.Join(to, "shop.partial"))

		serveMoverAt(t, mover.ServerOptions{Home: targetHome, Roots: []string{to}}, target.addr)
		s, err = r.Cancel(ctx, s.ID)
		require.NoError(t, err)
		require.Equal(t, []string{filepath.Join(to, "shop.partial")}, s.RemovedOnTarget)
		require.Empty(t, s.Resources.TargetLeft)
		require.NoDirExists(t, filepath.Join(to, "shop.partial"))
	})
}

// TestCancelAcrossMoversRemovesTargetPartial: through a staging mover,
// cancel of a session interrupted mid-transfer has the staging mover (the
// identity that sent) ask the target to remove shop.partial, and reports
// it back to the orchestrator.
func TestCancelAcrossMoversRemovesTargetPartial(t *testing.T) {
	f := newFixture(t)
	to, orch := t.TempDir(), t.TempDir()
	repo, staging, target := threeMovers(t, f, to, nil)
	trust(t, staging.home, identity(t, orch), mover.PermOrchestrate)
	plan := Plan{RepoPeer: repo.spec(), Staging: staging.spec(), Target: target.spec(), RestorePoint: "latest",
		Databases: []string{"shop"}, To: to, BWLimit: 256 << 10}
	s := interruptedTransfer(t, orch, plan)

	sj, err := OpenJournal(staging.home)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		ss, err := sj.Get(s.ID)
		return err == nil && ss.State == StateFailed && ss.PID == 0
	}, time.Minute, 20*time.Millisecond)

	s, err = newRunner(t, orch, nil).Cancel(context.Background(), s.ID)
	require.NoError(t, err)
	require.Equal(t, StateCancelled, s.State)
	require.Equal(t, []string{filepath.Join(to, "shop.partial")}, s.RemovedOnTarget)
	require.NoDirExists(t, filepath.Join(to, "shop.partial"))
	ss, err := sj.Get(s.ID)
	require.NoError(t, err)
	require.Equal(t, StateCancelled, ss.State)
}
