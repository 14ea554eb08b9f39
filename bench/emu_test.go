package bench

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPathStateOutage(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 11, 0, 0, 0, time.UTC)
	s := newPathState(EmuProfile{})
	s.arm(3000, 20*time.Second)
	// Bytes towards the sender do not count towards the trigger.
	require.Equal(t, pass, s.admit(toSender, 5000, t0))
	require.Equal(t, pass, s.admit(toReceiver, 1500, t0))
	require.True(t, s.outageStart.IsZero())
	// The packet that reaches the count passes; the outage starts with it.
	require.Equal(t, pass, s.admit(toReceiver, 1500, t0.Add(time.Second)))
	require.Equal(t, t0.Add(time.Second), s.outageStart)
	require.Equal(t, int64(3000), s.outageAfter)
	for _, dir := range []int{toReceiver, toSender} {
		require.Equal(t, dropOutage, s.admit(dir, 100, t0.Add(2*time.Second)), "inside the window, both ways")
		require.Equal(t, dropOutage, s.admit(dir, 100, t0.Add(20*time.Second)))
	}
	require.Equal(t, pass, s.admit(toReceiver, 100, t0.Add(21*time.Second)), "the window has ended")
	require.Equal(t, int64(3100), s.fwdBytes, "dropped packets are not admitted bytes")
	// It fires once: more bytes start no second outage.
	require.Equal(t, pass, s.admit(toReceiver, 1<<20, t0.Add(22*time.Second)))
	require.Equal(t, t0.Add(time.Second), s.outageStart)

	// Disarmed, nothing starts; arming again ends the earlier window.
	s.arm(-1, 0)
	require.Equal(t, pass, s.admit(toReceiver, 1<<20, t0.Add(23*time.Second)))
	require.True(t, s.outageStart.IsZero())
	s.arm(0, time.Second)
	require.Equal(t, pass, s.admit(toReceiver, 1, t0.Add(30*time.Second)), "a zero count starts with the next packet")
	require.Equal(t, dropOutage, s.admit(toSender, 1, t0.Add(30*time.Second)))
}

func TestPathStateLoss(t *testing.T) {
	t0 := time.Now()
	count := func(p EmuProfile) (lost [2]int) {
		s := newPathState(p)
		for i := range 100_000 {
			for dir := range 2 {
				if s.admit(dir, 1500, t0.Add(time.Duration(i))) == dropLoss {
					lost[dir]++
				}
			}
		}
		return lost
	}
	lost := count(EmuProfile{Loss: 0.05, Seed: 17})
	for dir := range 2 {
		require.InDelta(t, 5000, lost[dir], 400, "5%% of each direction, direction %d", dir)
	}
	require.Equal(t, lost, count(EmuProfile{Loss: 0.05, Seed: 17}), "the same seed drops the same packets")
	require.Equal(t, [2]int{}, count(EmuProfile{}))
}

func TestEmuProfile(t *testing.T) {
	require.Equal(t, "100mbit, 40ms RTT, 0.5% loss each way", ProfileWAN.String())
	require.Equal(t, "100mbit, 400ms RTT, 5% loss each way", ProfileLossy.String())
	require.NoError(t, ProfileWAN.Validate())
	require.Error(t, EmuProfile{Loss: 1}.Validate())
	require.Error(t, EmuProfile{Delay: -time.Second}.Validate())
}

func TestOutagePosition(t *testing.T) {
	t0 := time.Now()
	s0 := EmuStats{Forward: 1000}
	at, err := outagePosition(s0, EmuStats{Forward: 3000, OutageStart: t0.Add(time.Second), OutageAfter: 2000}, t0)
	require.NoError(t, err)
	require.InDelta(t, 50, at, 1e-9)
	_, err = outagePosition(s0, EmuStats{Forward: 3000}, t0)
	require.ErrorContains(t, err, "never began")
	_, err = outagePosition(s0, EmuStats{Forward: 3000, OutageStart: t0.Add(-time.Second), OutageAfter: 2000}, t0)
	require.ErrorContains(t, err, "never began", "an outage of an earlier run does not count")
}
