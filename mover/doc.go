// Package mover is pgporter's data mover daemon: its identity and trust list,
// the QUIC endpoint (mutual TLS 1.3, ALPN pgporter/1), and both sides of a
// transfer (the sender that chunks and offers a directory, the receiver that
// asks only for missing chunks and commits the tree atomically).
//
// It is not the wire format (package protocol) nor the chunk engine (package
// chunkstore); it composes them.
package mover
