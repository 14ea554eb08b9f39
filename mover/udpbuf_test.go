package mover

import (
	"context"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

// TestUDPBuffersWarn: below what quic-go asks for on either side, one
// warning that names the sysctl to run; none otherwise.
func TestUDPBuffersWarn(t *testing.T) {
	for _, c := range []struct {
		name       string
		b          UDPBuffers
		small      bool
		recv, send int
	}{
		{"both large", UDPBuffers{Recv: WantUDPBuffer, Send: 2 * WantUDPBuffer}, false, 0, 0},
		{"receive small", UDPBuffers{Recv: 425984, Send: WantUDPBuffer}, true, 425984, WantUDPBuffer},
		{"send small", UDPBuffers{Recv: WantUDPBuffer, Send: WantUDPBuffer - 1}, true, WantUDPBuffer, WantUDPBuffer - 1},
		{"distro defaults", UDPBuffers{Recv: 212992 * 2, Send: 212992 * 2}, true, 425984, 425984},
	} {
		t.Run(c.name, func(t *testing.T) {
			require.Equal(t, c.small, c.b.Small())
			var logs testsupport.Buffer
			c.b.Warn(slog.New(slog.NewTextHandler(&logs, nil)), "send")
			lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
			if !c.small {
				require.Empty(t, logs.String())
				return
			}
			require.Len(t, lines, 1)
			require.Contains(t, lines[0], "level=WARN")
			require.Contains(t, lines[0], "sysctl -w net.core.rmem_max=7500000 net.core.wmem_max=7500000")
			require.Contains(t, lines[0], "udp_rcvbuf="+strconv.Itoa(c.recv))
			require.Contains(t, lines[0], "udp_sndbuf="+strconv.Itoa(c.send))
		})
	}
}

// TestUDPBuffersReadBack: the check reads what the kernel granted, not what
// was asked for: a socket shrunk to a few KiB is small, and sizing it asks
// for quic-go's 7 MiB (granted to root whatever net.core.rmem_max says).
func TestUDPBuffersReadBack(t *testing.T) {
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer udp.Close()
	require.NoError(t, udp.SetReadBuffer(4096))
	require.NoError(t, udp.SetWriteBuffer(4096))
	b, err := readUDPBuffers(udp)
	require.NoError(t, err)
	require.True(t, b.Small(), "%+v", b)
	require.Less(t, b.Recv, 64<<10)

	sized, err := sizeUDPBuffers(udp)
	require.NoError(t, err)
	require.Greater(t, sized.Recv, b.Recv)
	require.Greater(t, sized.Send, b.Send)
	if os.Geteuid() == 0 {
		require.False(t, sized.Small(), "root may exceed the sysctl limits: %+v", sized)
	}
}

// TestUDPBuffersReported: send's result and the daemon's gauges carry the
// sizes read back from their sockets.
func TestUDPBuffersReported(t *testing.T) {
	noJoinsForLoss(t) // one connection, as counted below
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 11, 1)
	res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "u")})
	require.NoError(t, err)
	require.Positive(t, res.UDPRcvBuf)
	require.Positive(t, res.UDPSndBuf)
	require.NotNil(t, res.Path)
	require.Equal(t, 1, res.Path.Connections)
	require.Positive(t, res.Path.PacketsSent)

	rec := httptest.NewRecorder()
	r.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, name := range []string{"pgporter_mover_udp_rcvbuf_bytes", "pgporter_mover_udp_sndbuf_bytes"} {
		m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(rec.Body.String())
		require.NotNil(t, m, name)
		v, err := strconv.ParseFloat(m[1], 64)
		require.NoError(t, err)
		require.Positive(t, v, name)
	}
}
