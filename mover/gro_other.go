//go:build !linux

package mover

import "net"

// quicPacketConn returns c: UDP receive offload is Linux's.
func quicPacketConn(c *net.UDPConn) net.PacketConn { return c }
