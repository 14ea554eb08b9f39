package netemu

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var testHost = netip.MustParseAddr("198.19.19.2")

// feed passes a made-up packet of n bytes through e's admission at now and
// empties the delay line (no scheduler runs), so that the line never fills.
func feed(e *Emulator, dir, n int, now time.Time) error {
	err := e.enqueue(dir, make([]byte, n), now)
	e.line = e.line[:0]
	return err
}

func TestOutageAfter(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 11, 0, 0, 0, time.UTC)
	e := newEmulator(testHost, Profile{})
	e.OutageAfter(3000, 20*time.Second)
	// Bytes from the host do not count towards the trigger.
	require.NoError(t, feed(e, dirFromHost, 5000, t0))
	require.NoError(t, feed(e, dirToHost, 1500, t0))
	require.True(t, e.Stats().OutageStart.IsZero())
	// The packet that reaches the count passes; the outage starts with it.
	require.NoError(t, feed(e, dirToHost, 1500, t0.Add(time.Second)))
	st := e.Stats()
	require.Equal(t, t0.Add(time.Second), st.OutageStart)
	require.Equal(t, t0.Add(21*time.Second), st.OutageEnd)
	require.Equal(t, int64(3000), st.OutageAfter)
	for _, dir := range []int{dirToHost, dirFromHost} {
		require.ErrorIs(t, feed(e, dir, 100, t0.Add(2*time.Second)), errDropped, "inside the window, both ways")
		require.ErrorIs(t, feed(e, dir, 100, t0.Add(20*time.Second)), errDropped)
	}
	require.NoError(t, feed(e, dirToHost, 100, t0.Add(21*time.Second)), "the window has ended")
	st = e.Stats()
	require.Equal(t, int64(3100), st.Admitted, "dropped packets are not admitted bytes")
	require.Equal(t, int64(2), st.ToHost.Outage)
	require.Equal(t, int64(2), st.FromHost.Outage)
	// It fires once: more bytes start no second outage.
	require.NoError(t, feed(e, dirToHost, 1<<20, t0.Add(22*time.Second)))
	require.Equal(t, t0.Add(time.Second), e.Stats().OutageStart)

	// Disarmed, nothing starts; arming again ends the earlier window.
	e.OutageAfter(-1, 0)
	require.NoError(t, feed(e, dirToHost, 1<<20, t0.Add(23*time.Second)))
	require.True(t, e.Stats().OutageStart.IsZero())
	e.OutageAfter(0, time.Second)
	require.NoError(t, feed(e, dirToHost, 1, t0.Add(30*time.Second)), "a zero count starts with the next packet")
	require.ErrorIs(t, feed(e, dirFromHost, 1, t0.Add(30*time.Second)), errDropped)
}

func TestOutageNow(t *testing.T) {
	e := newEmulator(testHost, Profile{})
	e.OutageAfter(1, time.Hour)
	e.Outage(time.Hour)
	st := e.Stats()
	require.False(t, st.OutageStart.IsZero())
	require.ErrorIs(t, feed(e, dirToHost, 100, time.Now()), errDropped)
	e.OutageAfter(-1, 0)
	require.NoError(t, feed(e, dirToHost, 100, time.Now()), "OutageAfter ends the window")
	require.True(t, e.Stats().OutageStart.IsZero(), "Outage disarmed the trigger")
}

func TestLossSeeded(t *testing.T) {
	t0 := time.Now()
	count := func(p Profile) (lost [2]int) {
		e := newEmulator(testHost, p)
		for i := range 100_000 {
			for dir := range 2 {
				if feed(e, dir, 1500, t0.Add(time.Duration(i))) != nil {
					lost[dir]++
				}
			}
		}
		st := e.Stats()
		require.Equal(t, int64(lost[dirToHost]), st.ToHost.Lost)
		require.Equal(t, int64(lost[dirFromHost]), st.FromHost.Lost)
		return lost
	}
	lost := count(Profile{Loss: 0.05, Seed: 17})
	for dir := range 2 {
		require.InDelta(t, 5000, lost[dir], 400, "5%% of each direction, direction %d", dir)
	}
	require.Equal(t, lost, count(Profile{Loss: 0.05, Seed: 17}), "the same seed drops the same packets")
	require.Equal(t, [2]int{}, count(Profile{}))
}

// TestDelayLineBound guards against a delay line that grows without bound
// while the scheduler cannot keep up: beyond maxLine packets drop.
func TestDelayLineBound(t *testing.T) {
	e := newEmulator(testHost, Profile{Delay: time.Second})
	now := time.Now()
	for range maxLine {
		require.NoError(t, e.enqueue(dirToHost, make([]byte, 20), now))
	}
	require.ErrorIs(t, e.enqueue(dirFromHost, make([]byte, 20), now), errDropped)
	require.Equal(t, int64(1), e.Stats().FromHost.Overflow)
}

func TestProfileValidate(t *testing.T) {
	require.NoError(t, Profile{}.Validate())
	require.NoError(t, Profile{Delay: time.Second, Loss: 1, Rate: 1 << 20}.Validate())
	for _, p := range []Profile{{Delay: -1}, {Jitter: -1}, {Loss: 1.5}, {Reorder: -0.1}, {Rate: -1}, {Queue: -1}} {
		require.Error(t, p.Validate(), "%+v", p)
	}
	p := Profile{Rate: 100 << 20}.withDefaults()
	require.Equal(t, int64(100<<20/50), p.Burst)
	require.Equal(t, int64(100<<20/10), p.Queue)
}
