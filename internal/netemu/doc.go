// Package netemu emulates a network link in user space, on the IPv4 packets
// of a TUN device: delay, jitter, loss, reordering, a rate cap, and outages
// that start at once or after a number of bytes. It works on IP packets, so
// TCP, UDP and ICMP cross it alike. The kernels this project runs on have no
// netem; internal/testsupport's Network (the tests' emulated links) and
// bench's WAN path both use this one emulator.
//
// It is not a router: the caller creates the device (OpenTUN) in a namespace
// whose policy routing sends the packets to emulate into it and forwards
// those the emulator writes back.
package netemu
