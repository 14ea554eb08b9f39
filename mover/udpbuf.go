package mover

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/pgporter/pgporter/mover/fec"
	"github.com/quic-go/quic-go"
	"golang.org/x/sys/unix"
)

// UDPBuffers are a UDP socket's kernel buffer sizes as read back with
// SO_RCVBUF and SO_SNDBUF (Linux reports twice what was granted, as
// quic-go's own check counts them).
type UDPBuffers struct {
	Recv, Send int
}

// WantUDPBuffer is the buffer size quic-go asks for on each side of its
// socket. Below it, bursts at high rates overflow the receive buffer and
// QUIC takes the drops for congestion.
const WantUDPBuffer = 7 << 20

// UDPBufferHint is the command that raises the kernel's limits (as root;
// SO_RCVBUFFORCE lets root exceed them anyway).
const UDPBufferHint = "sysctl -w net.core.rmem_max=7500000 net.core.wmem_max=7500000"

// Small reports whether either buffer is below WantUDPBuffer.
func (b UDPBuffers) Small() bool { return b.Recv < WantUDPBuffer || b.Send < WantUDPBuffer }

// Warn logs one warning naming UDPBufferHint if b is small; who says which
// socket ("mover serve", "send").
func (b UDPBuffers) Warn(log *slog.Logger, who string) {
	if !b.Small() {
		return
	}
	log.Warn("UDP socket buffers are smaller than QUIC needs on fast or long links; raise the kernel's limits",
		"socket", who, "udp_rcvbuf", b.Recv, "udp_sndbuf", b.Send, "want", WantUDPBuffer, "hint", UDPBufferHint)
}

// sizeUDPBuffers asks for WantUDPBuffer on both of c's buffers, as quic-go
// does (which then finds them large enough and stays silent), and reads
// back what the kernel granted. Errors setting them are not errors: what
// counts is what is read back.
func sizeUDPBuffers(c *net.UDPConn) (UDPBuffers, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return UDPBuffers{}, err
	}
	b, err := readUDPBuffers(c)
	if err != nil || !b.Small() {
		return b, err
	}
	_ = c.SetReadBuffer(WantUDPBuffer)
	_ = c.SetWriteBuffer(WantUDPBuffer)
	if b, err = readUDPBuffers(c); err != nil || !b.Small() {
		return b, err
	}
	// Above net.core.rmem_max only with CAP_NET_ADMIN.
	raw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, WantUDPBuffer)
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, WantUDPBuffer)
	})
	return readUDPBuffers(c)
}

// readUDPBuffers reads back c's buffer sizes.
func readUDPBuffers(c *net.UDPConn) (UDPBuffers, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return UDPBuffers{}, err
	}
	var b UDPBuffers
	var rerr, serr error
	if err := raw.Control(func(fd uintptr) {
		b.Recv, rerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		b.Send, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
	}); err != nil {
		return UDPBuffers{}, err
	}
	if rerr != nil || serr != nil {
		return UDPBuffers{}, fmt.Errorf("reading UDP buffer sizes: %w", errors.Join(rerr, serr))
	}
	return b, nil
}

// dialQUIC dials addr from a UDP socket of its own with buffers sized by
// sizeUDPBuffers, through a quic.Transport that is closed with the
// connection (as quic.DialAddr does with the socket it makes). With fecK
// above 0 the socket frames its datagrams for loss repair in groups of
// fecK (lossrepair.go).
func dialQUIC(ctx context.Context, addr string, tc *tls.Config, qc *quic.Config, fecK int) (*quic.Conn, UDPBuffers, error) {
	ua, err := resolveAddr(addr)
	if err != nil {
		return nil, UDPBuffers{}, err
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		return nil, UDPBuffers{}, err
	}
	bufs, err := sizeUDPBuffers(udp)
	if err != nil {
		udp.Close()
		return nil, UDPBuffers{}, err
	}
	var pc net.PacketConn
	if fecK > 0 {
		pc = fec.NewConn(udp, ua, fecK)
		qc = fecQUICConfig(qc)
	} else {
		pc = quicPacketConn(udp)
	}
	tr := &quic.Transport{Conn: pc}
	conn, err := tr.Dial(ctx, ua, tc, qc)
	if err != nil {
		tr.Close()
		pc.Close()
		udp.Close()
		if noAnswer(err) {
			err = &NoAnswerError{Addr: addr, After: qc.HandshakeIdleTimeout, Err: err}
		}
		return nil, bufs, err
	}
	go func() {
		<-conn.Context().Done()
		tr.Close()
		pc.Close()
		udp.Close()
	}()
	return conn, bufs, nil
}
