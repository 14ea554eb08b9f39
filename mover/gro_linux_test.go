//go:build linux

package mover

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// sendGSO sends payload from c to to in one sendmsg, cut by the kernel into
// datagrams of seg bytes (UDP_SEGMENT, as quic-go sends).
func sendGSO(t *testing.T, c *net.UDPConn, to *net.UDPAddr, payload []byte, seg int) {
	t.Helper()
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(seg))
	_, _, err := c.WriteMsgUDP(payload, oob, to)
	require.NoError(t, err)
}

// quicMessages are messages as quic-go's oobConn hands them to ReadBatch.
func quicMessages(n int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1452)}
		ms[i].OOB = make([]byte, 128)
	}
	return ms
}

// TestGROSplitsDatagrams: what the kernel coalesces (a GSO send of 3.4
// datagrams, which loopback delivers whole to a GRO socket) reaches the
// reader as the datagrams that were sent, each with the control messages
// quic-go asked for (the TOS byte for ECN), over calls that take fewer
// messages than one read returned; a datagram larger than the caller's
// buffer is cut and flagged MSG_TRUNC, as recvmmsg would.
func TestGROSplitsDatagrams(t *testing.T) {
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer rx.Close()
	raw, err := rx.SyscallConn()
	require.NoError(t, err)
	require.NoError(t, raw.Control(func(fd uintptr) {
		require.NoError(t, unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1))
	}))
	pc := quicPacketConn(rx)
	g, ok := pc.(*groConn)
	require.True(t, ok, "this kernel has UDP_GRO (Linux 5.0)")

	tx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer tx.Close()
	to := rx.LocalAddr().(*net.UDPAddr)

	payload := make([]byte, 3*1200+400)
	for i := range payload {
		payload[i] = byte(i / 1200) // the datagram's index in each of its bytes
	}
	sendGSO(t, tx, to, payload, 1200)
	_, err = tx.WriteToUDP(bytes.Repeat([]byte{9}, 77), to)
	require.NoError(t, err)
	_, err = tx.WriteToUDP(bytes.Repeat([]byte{7}, 2000), to)
	require.NoError(t, err)

	var got [][]byte
	coalesced := false
	ms := quicMessages(2)
	for len(got) < 6 {
		n, err := g.ReadBatch(ms, 0)
		require.NoError(t, err)
		require.Positive(t, n)
		for _, s := range g.seg[:g.n] {
			coalesced = coalesced || s > 0
		}
		for _, m := range ms[:n] {
			require.Equal(t, tx.LocalAddr().String(), m.Addr.String())
			h, body, _, err := unix.ParseOneSocketControlMessage(m.OOB[:m.NN])
			require.NoError(t, err)
			require.Equal(t, [2]int32{unix.IPPROTO_IP, unix.IP_TOS}, [2]int32{h.Level, h.Type}, "the UDP_GRO message is not passed on")
			require.Len(t, body, 1)
			if len(got) == 5 {
				require.NotZero(t, m.Flags&unix.MSG_TRUNC)
			} else {
				require.Zero(t, m.Flags&unix.MSG_TRUNC)
			}
			got = append(got, bytes.Clone(m.Buffers[0][:m.N]))
		}
	}
	require.True(t, coalesced, "the GSO send arrived as one read")
	for i := range 3 {
		require.Equal(t, bytes.Repeat([]byte{byte(i)}, 1200), got[i])
	}
	require.Equal(t, bytes.Repeat([]byte{3}, 400), got[3])
	require.Equal(t, bytes.Repeat([]byte{9}, 77), got[4])
	require.Equal(t, bytes.Repeat([]byte{7}, 1452), got[5])
}

// TestGROFallback: where the kernel refuses UDP_GRO (before Linux 5.0), or
// $PGPORTER_DISABLE_GRO says so, quic-go reads the socket itself, and a
// transfer works both ways.
func TestGROFallback(t *testing.T) {
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer udp.Close()

	t.Run("env", func(t *testing.T) {
		t.Setenv("PGPORTER_DISABLE_GRO", "1")
		require.Same(t, udp, quicPacketConn(udp))
	})
	t.Run("kernel refuses", func(t *testing.T) {
		refuseGRO(t)
		require.Same(t, udp, quicPacketConn(udp))
	})
	t.Run("transfer without GRO", func(t *testing.T) {
		refuseGRO(t)
		r := startReceiver(t, ServerOptions{})
		s := newTestSender(t, r, PermSend)
		src := t.TempDir()
		makeTree(t, src, 3, 1)
		dest := filepath.Join(r.root, "dumps", "db1")
		_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest})
		require.NoError(t, err)
		requireSameTree(t, src, dest)
	})
}

// TestWholeControl: control messages passed on are whole, or left out.
func TestWholeControl(t *testing.T) {
	tos := make([]byte, unix.CmsgSpace(1))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&tos[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TOS
	h.SetLen(unix.CmsgLen(1))
	two := append(bytes.Clone(tos), tos...)
	require.Equal(t, two, wholeControl(two, 128))
	require.Equal(t, tos, wholeControl(two, len(two)-1))
	require.Empty(t, wholeControl(two, len(tos)-1))
	require.Empty(t, wholeControl(nil, 128))
}

func refuseGRO(t *testing.T) {
	old := setGRO
	setGRO = func(int) error { return unix.ENOPROTOOPT }
	t.Cleanup(func() { setGRO = old })
}
