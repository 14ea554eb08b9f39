// Package fec repairs isolated packet losses below QUIC, so that a lossy
// path's random drops do not reach quic-go's congestion controller.
//
// quic-go's NewReno halves its window on every loss, which on a long path
// that drops packets at random (0.5 % is common on Wi-Fi and long routes)
// holds a connection to a few tens of packets whatever the path's capacity,
// where Linux's bbr keeps the rate. The congestion controller is not
// pluggable in quic-go; what reaches it is. An Encoder frames every
// datagram a side sends with a group number and its index in the group and
// adds a parity datagram, the XOR of the group's datagrams, after at most
// K of them or MaxSpan of time. A Decoder rebuilds one lost datagram per
// group from the others and the parity, and holds the datagrams that
// follow a gap in a group until the parity repairs it (or a short timeout
// gives up), so that QUIC sees neither the loss nor the reordering. Two
// losses in a group, a burst as a full queue makes, reach QUIC as they
// are: congestion still backs the sender off.
//
// The framing's first byte has its two high bits clear, which no QUIC
// packet has (RFC 9000's fixed bit; quic-go does not grease it), so a
// socket carries framed and plain QUIC datagrams side by side and a mover
// tells them apart by that byte (quic.Transport.ReadNonQUICPacket).
//
// The wire format is in docs/PROTOCOL.md, "Loss repair (FEC)". This package
// is not a general FEC library: one parity per group (XOR), groups of at
// most MaxGroup datagrams, no interleaving.
package fec
