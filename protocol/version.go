package protocol

import (
	"fmt"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// Protocol versions this build speaks. A connection uses one version, the
// one Negotiate picks from the two Hello messages.
//
// Version 2 (issue 15) adds receiver limits a version 1 sender could
// exceed: chunking parameters with a minimum below MinChunkMin are refused,
// a transfer takes at most MaxDataStreams data streams, and a data frame at
// most the transfer's maximum chunk plus DataFrameOverhead bytes.
//
// Version 3 (issue 16) changes the meaning of FileEnd.Hash: the file's
// chunk-list hash (chunk.FileListHash), no longer the BLAKE3 of its
// content, so that each byte is hashed once on each side. A version 2 peer
// would send or expect the other hash, so it is refused.
//
// Version 4 was reserved for the S2 codec and never used: S2 came after
// version 5, so it is version 6. No build speaks 4.
//
// Version 5 (issue 16) lets a sender spread one transfer over several
// connections: TransferState carries a JoinToken, and JoinTransfer on an
// extra connection of the same peer joins it. One connection's congestion
// control (quic-go's NewReno) is what limits a lossy link. A peer below 5
// gets no token and is sent nothing new.
//
// Version 6 (issue 16) adds codec 2, chunk.CodecS2, in ChunkData. A
// peer below 6 is never sent an S2 chunk (a sender holding one decodes and
// encodes it again, see KnowsCodec), and a receiver refuses one from it.
//
// Version 7 (issue 18) types the job messages: RunJob and JobEvent carry a
// JSON object tagged with its kind and its job version (JobVersion), whose
// fields are defined (job.go) instead of belonging to the orchestrator. A
// mover runs jobs only for a peer of version 7 or later, and an
// orchestrator hands them only to one: an older peer gets a version error.
// Transfers, fetches and space queries are unchanged.
//
// Version 8 (issue 19) lets a sender keep directories: Dir lists each
// directory of the tree with its mode (empty ones included) before the
// first FileHeader, and OpenTransfer.Flags may ask to replace an existing
// Dest (FlagOverwrite). A peer below 8 is sent neither.
//
// Version 9 (issue 20) adds the WAL archive: GetWAL and WALRecord on the
// control stream, for wal-fetch (with GetChunks on a fetch stream), and
// archive streams (StreamArchive) carrying PushWAL, WALNeed, ChunkData and
// WALPushed, for wal-push, under the new archive permission. A peer below
// 9 is sent none of them: wal-fetch and wal-push report a version error.
//
// Version 10 (issue 19) keeps directories' modification times: DirTime
// follows each Dir. A peer below 10 is sent none, and its directories take
// the time of their commit.
//
// Version 11 (issue 16) adds loss repair: a mover of 11 accepts, on its
// listening port, connections whose datagrams are framed in groups with a
// parity each (package mover/fec, docs/PROTOCOL.md "Loss repair"), and
// frames its replies on them. Nothing on the streams changes; a sender
// frames an added connection only for a receiver of 11 or later, since an
// older one drops framed datagrams unread.
//
// Version 12 adds Abandon and Abandoned: a peer that sent a transfer asks
// the receiver to remove the DEST.partial that transfer left (a cancelled
// export). A peer below 12 is sent neither; the caller reports that the
// partial directory stays.
const (
	Version    uint16 = 12
	MinVersion uint16 = 3
	// JoinVersion is the first version with JoinTransfer.
	JoinVersion uint16 = 5
	// S2Version is the first version whose peers decode chunk.CodecS2.
	S2Version uint16 = 6
	// JobsVersion is the first version with typed job messages.
	JobsVersion uint16 = 7
	// DirVersion is the first version with Dir and OpenTransfer.Flags.
	DirVersion uint16 = 8
	// WALVersion is the first version with the WAL archive messages and
	// archive streams.
	WALVersion uint16 = 9
	// DirTimeVersion is the first version with DirTime.
	DirTimeVersion uint16 = 10
	// FECVersion is the first version that accepts framed datagrams.
	FECVersion uint16 = 11
	// AbandonVersion is the first version with Abandon and Abandoned.
	AbandonVersion uint16 = 12
)

// Receiver limits of version 2.
const (
	// MinChunkMin is the smallest chunk minimum a receiver accepts in
	// OpenTransfer: it bounds the positions a manifest of given size makes
	// the receiver track.
	MinChunkMin = 4 << 10
	// MaxDataStreams bounds the data streams of one transfer; the receiver
	// refuses more (the stream is reset with code CloseRefused).
	MaxDataStreams = 32
	// DataFrameOverhead is what a ChunkData frame adds to its payload, at
	// most: the payload of a chunk is never above its plain length.
	DataFrameOverhead = 256
)

// NewHello returns the Hello this build sends, naming software (cut to
// MaxSoftwareLen bytes).
func NewHello(software string) *Hello {
	return &Hello{Version: Version, MinVersion: MinVersion, Software: truncate(software, MaxSoftwareLen)}
}

// Negotiate returns the version a connection uses: the lower of the two
// Version fields, provided it is at least both MinVersion fields. Otherwise
// it returns an error matching ErrVersion; the side that finds it sends
// ToWire(err) and closes the connection with CloseRefused.
func Negotiate(local, remote *Hello) (uint16, error) {
	v := min(local.Version, remote.Version)
	if v == 0 || v < local.MinVersion || v < remote.MinVersion {
		return 0, fmt.Errorf("%w: this side speaks %d to %d, the peer (%q) %d to %d",
			ErrVersion, local.MinVersion, local.Version, truncate(remote.Software, 64), remote.MinVersion, remote.Version)
	}
	return v, nil
}

// KnowsCodec reports whether a peer speaking version v decodes c in
// ChunkData: a sender that holds a chunk encoded with a codec the
// connection's version does not know must decode it and encode it again.
// Every version since 1 knows none and zstd; S2Version and later know S2.
func KnowsCodec(v uint16, c chunk.Codec) bool {
	switch c {
	case chunk.CodecNone, chunk.CodecZstd:
		return v >= 1
	case chunk.CodecS2:
		return v >= S2Version
	}
	return false
}
