//go:build !linux

package mover

import "net"

// quicPacketConn returns c: UDP receive offload is Linux's.
func quicPacketConn(c *net.UDPConn) net.PacketConn { return c }

// serverPacketConn returns c, and false: frames are read through quic-go's
// ReadNonQUICPacket instead.
func serverPacketConn(c *net.UDPConn, divert func(frame []byte, addr net.Addr)) (net.PacketConn, bool) {
	return c, false
}
