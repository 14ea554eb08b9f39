// Package protocol implements the wire format spoken between pgporter movers:
// the versioned hello, length-prefixed frames whose size is checked before
// any allocation, the message types and their encoders and decoders, and the
// error codes that map both ways to Go errors. docs/PROTOCOL.md is its
// normative description.
//
// It does no I/O policy of its own (no dialing, retries, or trust): package
// mover does that.
package protocol
