//go:build linux

package mover

import (
	"encoding/binary"
	"net"
	"os"
	"strconv"

	"github.com/pgporter/pgporter/mover/fec"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// groBatch is how many buffers one recvmmsg fills, as quic-go's own batch
// (8); each holds up to groBufSize bytes: 512 KiB a socket.
const (
	groBatch   = 8
	groBufSize = 1 << 16 // the largest UDP payload a GRO read returns
	// groOOBSize holds every control message a dual-stack socket can get
	// with quic-go's options (TOS, TCLASS, both packet infos) and UDP_GRO's.
	groOOBSize = 256
)

// setGRO turns UDP_GRO on for the socket fd (Linux 5.0 and later); a
// variable so that tests can refuse it as an older kernel does.
var setGRO = func(fd int) error {
	return unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1)
}

// quicPacketConn returns the connection a quic.Transport should read c
// through: c with UDP receive offload (GRO) when the kernel has it and
// $PGPORTER_DISABLE_GRO is not true, else c itself (quic-go's own reads).
// quic-go sends with GSO, up to 14 packets per sendmsg, but has no GRO:
// without it the kernel hands every packet up on its own, and when the
// sender batched them (GSO over veth or loopback), the receiving socket
// first splits each batch back into packets in softirq.
func quicPacketConn(c *net.UDPConn) net.PacketConn {
	if off, err := strconv.ParseBool(os.Getenv("PGPORTER_DISABLE_GRO")); err == nil && off {
		return c
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return c
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = setGRO(int(fd)) }); err != nil || serr != nil {
		return c
	}
	return newGROConn(c)
}

// groConn is a UDP socket with UDP_GRO on, for quic-go: quic-go reads
// through ReadBatch when its connection has one, in batches of
// quic-go-sized (1452-byte) buffers. With GRO the kernel returns a run of
// same-sized datagrams of one sender as one buffer of up to 64 KiB, with
// the datagram size in a UDP_GRO control message (the last may be
// shorter); ReadBatch reads such buffers with recvmmsg and hands them out
// one datagram per message, with the control messages (ECN, packet info)
// of its buffer, so quic-go sees what it would have read without GRO.
// Everything else (writes with GSO, buffer sizes, SyscallConn) is the
// *net.UDPConn's.
//
// ReadBatch must not be called concurrently (quic-go's Transport calls it
// from its one read loop); a datagram the caller's buffer cannot hold is
// truncated and flagged MSG_TRUNC, as the kernel does.
type groConn struct {
	*net.UDPConn
	batch *ipv4.PacketConn
	// divert, if set, takes the datagrams that are loss repair frames
	// (fec.IsFrame) instead of quic-go.
	divert func(frame []byte, addr net.Addr)

	msgs []ipv4.Message // the last recvmmsg: n of them read
	seg  []int          // datagram size of msgs[i], 0 for a single datagram
	oob  [][]byte       // control messages of msgs[i] without UDP_GRO's
	n    int
	next int // the first of msgs not yet handed out entirely
	off  int // where the next datagram starts in msgs[next]
}

func newGROConn(c *net.UDPConn) *groConn {
	g := &groConn{
		UDPConn: c,
		batch:   ipv4.NewPacketConn(c),
		msgs:    make([]ipv4.Message, groBatch),
		seg:     make([]int, groBatch),
		oob:     make([][]byte, groBatch),
	}
	for i := range g.msgs {
		g.msgs[i].Buffers = [][]byte{make([]byte, groBufSize)}
		g.msgs[i].OOB = make([]byte, groOOBSize)
		g.oob[i] = make([]byte, 0, groOOBSize)
	}
	return g
}

// serverPacketConn returns the connection a mover's listening
// quic.Transport reads c through: c with GRO when the kernel has it (as
// quicPacketConn), whose reads divert the loss repair frames of framed
// connections to divert, in the read loop itself: quic-go's own queue of
// such datagrams (ReadNonQUICPacket) holds 32, less than one GRO read.
// It reports false if it cannot divert, when c's descriptor cannot be
// reached.
func serverPacketConn(c *net.UDPConn, divert func(frame []byte, addr net.Addr)) (net.PacketConn, bool) {
	raw, err := c.SyscallConn()
	if err != nil {
		return c, false
	}
	if off, perr := strconv.ParseBool(os.Getenv("PGPORTER_DISABLE_GRO")); perr != nil || !off {
		_ = raw.Control(func(fd uintptr) { _ = setGRO(int(fd)) }) // without GRO each read is one datagram
	}
	g := newGROConn(c)
	g.divert = divert
	return g, true
}

// ReadBatch fills ms with one datagram each, reading from the socket only
// when every datagram of the last read has been handed out.
func (g *groConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	for {
		n, err := g.readBatch(ms, flags)
		if n > 0 || err != nil {
			return n, err
		}
		// Every datagram of the read was diverted: read again.
	}
}

func (g *groConn) readBatch(ms []ipv4.Message, flags int) (int, error) {
	if g.next == g.n {
		for i := range g.msgs {
			g.msgs[i].OOB = g.msgs[i].OOB[:cap(g.msgs[i].OOB)]
		}
		n, err := g.batch.ReadBatch(g.msgs, flags)
		if err != nil || n == 0 {
			return 0, err
		}
		g.n, g.next, g.off = n, 0, 0
		for i := range n {
			g.seg[i], g.oob[i] = splitGROControl(g.msgs[i].OOB[:g.msgs[i].NN], g.oob[i][:0])
		}
	}
	k := 0
	for k < len(ms) && g.next < g.n {
		m := &g.msgs[g.next]
		d := m.Buffers[0][g.off:m.N]
		if s := g.seg[g.next]; s > 0 && len(d) > s {
			d = d[:s]
		}
		if g.divert != nil && len(d) > 0 && fec.IsFrame(d[0]) {
			g.divert(d, m.Addr)
			if g.off += len(d); g.off >= m.N {
				g.next++
				g.off = 0
			}
			continue
		}
		out := &ms[k]
		out.N = copy(out.Buffers[0], d)
		oob := wholeControl(g.oob[g.next], len(out.OOB))
		out.NN = copy(out.OOB, oob)
		out.Flags = m.Flags
		if out.N < len(d) {
			out.Flags |= unix.MSG_TRUNC
		}
		if len(oob) < len(g.oob[g.next]) {
			out.Flags |= unix.MSG_CTRUNC
		}
		out.Addr = m.Addr
		k++
		if g.off += len(d); g.off >= m.N {
			g.next++
			g.off = 0
		}
	}
	return k, nil
}

// splitGROControl returns the datagram size of a UDP_GRO control message
// in oob (0 without one: the buffer is one datagram) and appends the other
// control messages of oob, whole, to dst.
func splitGROControl(oob, dst []byte) (int, []byte) {
	seg := 0
	for len(oob) > 0 {
		h, body, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			break
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && len(body) >= 4 {
			seg = int(int32(binary.NativeEndian.Uint32(body)))
		} else {
			dst = append(dst, oob[:len(oob)-len(rest)]...)
		}
		oob = rest
	}
	return seg, dst
}

// wholeControl returns the longest prefix of the control messages in oob
// that fits in n bytes without cutting one: quic-go fails its read loop on
// a control message cut short.
func wholeControl(oob []byte, n int) []byte {
	end := 0
	for rest := oob; len(rest) > 0; {
		_, _, next, err := unix.ParseOneSocketControlMessage(rest)
		if err != nil {
			break
		}
		l := len(rest) - len(next)
		if end+l > n {
			break
		}
		end += l
		rest = next
	}
	return oob[:end]
}
