package bench

import (
	"testing"
	"time"

	"github.com/pgporter/pgporter/internal/netemu"
	"github.com/stretchr/testify/require"
)

func TestEmuProfile(t *testing.T) {
	require.Equal(t, "100mbit, 40ms RTT, 0.5% loss each way", ProfileWAN.String())
	require.Equal(t, "100mbit, 400ms RTT, 5% loss each way", ProfileLossy.String())
	require.NoError(t, ProfileWAN.Validate())
	require.Error(t, EmuProfile{Loss: 1}.Validate())
	require.Error(t, EmuProfile{Delay: -time.Second}.Validate())
	require.Equal(t, netemu.Profile{Delay: 20 * time.Millisecond, Loss: 0.005, Seed: 17}, ProfileWAN.link(), "the rate is tc's, not the emulator's")
}

func TestOutagePosition(t *testing.T) {
	t0 := time.Now()
	s0 := netemu.Stats{Admitted: 1000}
	at, err := outagePosition(s0, netemu.Stats{Admitted: 3000, OutageStart: t0.Add(time.Second), OutageAfter: 2000}, t0)
	require.NoError(t, err)
	require.InDelta(t, 50, at, 1e-9)
	_, err = outagePosition(s0, netemu.Stats{Admitted: 3000}, t0)
	require.ErrorContains(t, err, "never began")
	_, err = outagePosition(s0, netemu.Stats{Admitted: 3000, OutageStart: t0.Add(-time.Second), OutageAfter: 2000}, t0)
	require.ErrorContains(t, err, "never began", "an outage of an earlier run does not count")
}
