package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestUDPPortHolders finds the process bound to a UDP port, and
// waitPortReleased does not wait for a holder that is not exiting.
func TestUDPPortHolders(t *testing.T) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer c.Close()
	port := c.LocalAddr().(*net.UDPAddr).Port
	require.Contains(t, udpPortHolders(port), os.Getpid())

	start := time.Now()
	waitPortReleased(context.Background(), "127.0.0.1:"+strconv.Itoa(port), time.Minute, slog.Default())
	require.Less(t, time.Since(start), 10*time.Second, "waited for a live holder")

	require.NoError(t, c.Close())
	require.NotContains(t, udpPortHolders(port), os.Getpid())
}
