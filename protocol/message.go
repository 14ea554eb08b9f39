package protocol

import (
	"fmt"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// Type is the type byte of a frame. The numbers are stable wire values listed
// in docs/PROTOCOL.md; 0 and every unlisted number are invalid.
type Type uint8

const (
	TypeHello         Type = 1
	TypeError         Type = 2
	TypeOpenTransfer  Type = 3
	TypeTransferState Type = 4
	TypeFileHeader    Type = 5
	TypeFileChunks    Type = 6
	TypeFileEnd       Type = 7
	TypeManifestEnd   Type = 8
	TypeNeed          Type = 9
	TypeNeedEnd       Type = 10
	TypeSendDone      Type = 11
	TypeChunkData     Type = 12
	TypeProgress      Type = 13
	TypeCommitted     Type = 14
	TypeSpaceQuery    Type = 15
	TypeSpaceReply    Type = 16
	TypeGetChunks     Type = 17
	TypeListPoints    Type = 18
	TypePointList     Type = 19
	TypeGetPoint      Type = 20
	TypePoint         Type = 21
	TypeRunJob        Type = 22
	TypeJobEvent      Type = 23
	TypeJoinTransfer  Type = 24
	TypeDir           Type = 25
	TypeGetWAL        Type = 26
	TypeWALRecord     Type = 27
	TypePushWAL       Type = 28
	TypeWALNeed       Type = 29
	TypeWALPushed     Type = 30
	TypeDirTime       Type = 31
	TypeAbandon       Type = 32
	TypeAbandoned     Type = 33
)

var typeNames = [...]string{
	TypeHello:         "Hello",
	TypeError:         "Error",
	TypeOpenTransfer:  "OpenTransfer",
	TypeTransferState: "TransferState",
	TypeFileHeader:    "FileHeader",
	TypeFileChunks:    "FileChunks",
	TypeFileEnd:       "FileEnd",
	TypeManifestEnd:   "ManifestEnd",
	TypeNeed:          "Need",
	TypeNeedEnd:       "NeedEnd",
	TypeSendDone:      "SendDone",
	TypeChunkData:     "ChunkData",
	TypeProgress:      "Progress",
	TypeCommitted:     "Committed",
	TypeSpaceQuery:    "SpaceQuery",
	TypeSpaceReply:    "SpaceReply",
	TypeGetChunks:     "GetChunks",
	TypeListPoints:    "ListPoints",
	TypePointList:     "PointList",
	TypeGetPoint:      "GetPoint",
	TypePoint:         "Point",
	TypeRunJob:        "RunJob",
	TypeJobEvent:      "JobEvent",
	TypeJoinTransfer:  "JoinTransfer",
	TypeDir:           "Dir",
	TypeGetWAL:        "GetWAL",
	TypeWALRecord:     "WALRecord",
	TypePushWAL:       "PushWAL",
	TypeWALNeed:       "WALNeed",
	TypeWALPushed:     "WALPushed",
	TypeDirTime:       "DirTime",
	TypeAbandon:       "Abandon",
	TypeAbandoned:     "Abandoned",
}

// String returns the message name ("FileHeader"), or "Type(N)" for an
// unknown number.
func (t Type) String() string {
	if t.Known() {
		return typeNames[t]
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Known reports whether t is a message type this build decodes.
func (t Type) Known() bool { return int(t) < len(typeNames) && typeNames[t] != "" }

// Message is one protocol message. Every message type of this package is a
// pointer to a struct (*Hello, *ChunkData, …).
type Message interface {
	// Type returns the frame type byte of the message.
	Type() Type
	// Append appends the encoded payload (without the frame header) to b. It
	// does not validate: WriteMessage does, and refuses invalid messages.
	Append(b []byte) []byte
}

// message is what every Message of this package also implements.
type message interface {
	Message
	decode(d *decoder)
	// check reports the first value outside the protocol's limits, as an
	// error matching ErrProtocol (and ErrBadPath for names).
	check() error
}

func newMessage(t Type) message {
	switch t {
	case TypeHello:
		return new(Hello)
	case TypeError:
		return new(Error)
	case TypeOpenTransfer:
		return new(OpenTransfer)
	case TypeTransferState:
		return new(TransferState)
	case TypeFileHeader:
		return new(FileHeader)
	case TypeFileChunks:
		return new(FileChunks)
	case TypeFileEnd:
		return new(FileEnd)
	case TypeManifestEnd:
		return new(ManifestEnd)
	case TypeNeed:
		return new(Need)
	case TypeNeedEnd:
		return new(NeedEnd)
	case TypeSendDone:
		return new(SendDone)
	case TypeChunkData:
		return new(ChunkData)
	case TypeProgress:
		return new(Progress)
	case TypeCommitted:
		return new(Committed)
	case TypeSpaceQuery:
		return new(SpaceQuery)
	case TypeSpaceReply:
		return new(SpaceReply)
	case TypeGetChunks:
		return new(GetChunks)
	case TypeListPoints:
		return new(ListPoints)
	case TypePointList:
		return new(PointList)
	case TypeGetPoint:
		return new(GetPoint)
	case TypePoint:
		return new(Point)
	case TypeRunJob:
		return new(RunJob)
	case TypeJoinTransfer:
		return new(JoinTransfer)
	case TypeJobEvent:
		return new(JobEvent)
	case TypeDir:
		return new(Dir)
	case TypeGetWAL:
		return new(GetWAL)
	case TypeWALRecord:
		return new(WALRecord)
	case TypePushWAL:
		return new(PushWAL)
	case TypeWALNeed:
		return new(WALNeed)
	case TypeWALPushed:
		return new(WALPushed)
	case TypeDirTime:
		return new(DirTime)
	case TypeAbandon:
		return new(Abandon)
	case TypeAbandoned:
		return new(Abandoned)
	}
	return nil
}

// Decode decodes the payload of a frame of type t. It rejects an unknown
// type, a truncated payload, trailing bytes, a non-minimal varint and any
// value outside the limits documented on each message, with an error
// matching ErrProtocol. Every length and count is checked against its maximum
// and against the bytes remaining before anything is allocated.
//
// The message does not alias payload, except ChunkData.Payload, which does.
// Empty lists and an empty ChunkData.Payload decode as nil.
func Decode(t Type, payload []byte) (Message, error) {
	m := newMessage(t)
	if m == nil {
		return nil, violation("unknown message type %d", uint8(t))
	}
	d := decoder{b: payload}
	m.decode(&d)
	d.end()
	if d.err == nil {
		d.err = m.check()
	}
	if d.err != nil {
		return nil, fmt.Errorf("decoding %s: %w", t, d.err)
	}
	return m, nil
}

// Limits on message fields, beyond those of paths in path.go.
const (
	MaxSoftwareLen     = 256
	MaxErrorMessageLen = 4096
	MaxAlgorithmLen    = 64                        // Params.Algorithm
	MaxChunkRefs       = 65536                     // FileChunks.Chunks
	MaxNeedChunks      = 1 << 20                   // Need.Chunks
	MaxGetChunks       = 4096                      // GetChunks.IDs
	MaxChunkPayload    = chunk.MaxChunkCeil + 1024 // ChunkData.Payload: room for zstd's overhead on incompressible data
	maxMode            = 0o7777
)

// Hello opens every connection: each side sends one as its first message on
// the control stream, then both use Negotiate.
type Hello struct {
	Version    uint16 // highest version the sender speaks
	MinVersion uint16 // lowest version the sender speaks
	Software   string // free text for logs, e.g. "pgporter 0.3.1"; at most MaxSoftwareLen bytes
}

func (*Hello) Type() Type { return TypeHello }

func (m *Hello) Append(b []byte) []byte {
	b = appendUvarint(b, uint64(m.Version))
	b = appendUvarint(b, uint64(m.MinVersion))
	return appendString(b, m.Software)
}

func (m *Hello) decode(d *decoder) {
	m.Version = d.uint16("version")
	m.MinVersion = d.uint16("min version")
	m.Software = d.string("software", MaxSoftwareLen)
}

func (m *Hello) check() error {
	if len(m.Software) > MaxSoftwareLen {
		return violation("software: %d bytes above the limit %d", len(m.Software), MaxSoftwareLen)
	}
	return nil
}

// Error reports a failure to the peer. Build one with ToWire and turn a
// received one into a Go error with Err.
type Error struct {
	Code    Code
	Message string // at most MaxErrorMessageLen bytes
}

func (*Error) Type() Type { return TypeError }

func (m *Error) Append(b []byte) []byte {
	b = appendUvarint(b, uint64(m.Code))
	return appendString(b, m.Message)
}

func (m *Error) decode(d *decoder) {
	m.Code = Code(d.uint16("code"))
	m.Message = d.string("message", MaxErrorMessageLen)
}

func (m *Error) check() error {
	if len(m.Message) > MaxErrorMessageLen {
		return violation("message: %d bytes above the limit %d", len(m.Message), MaxErrorMessageLen)
	}
	return nil
}

// OpenTransfer starts or resumes the transfer TransferID into Dest.
type OpenTransfer struct {
	TransferID string       // ValidTransferID; the same ID resumes
	Dest       string       // ValidAbsPath on the receiver
	Params     chunk.Params // chunking of the manifest; Algorithm at most MaxAlgorithmLen bytes, sizes at most MaxChunkCeil
	Files      uint64       // files in the transfer
	Bytes      uint64       // their total size
	// Flags (version 8) asks for more than writing a new Dest:
	// FlagOverwrite. Zero, and then not on the wire, below version 8.
	Flags uint64
}

// OpenTransfer.Flags (version 8).
const (
	// FlagOverwrite: an existing directory at Dest is replaced when the
	// transfer commits (moved aside, then removed).
	FlagOverwrite uint64 = 1
	// knownFlags are the flags this version defines; others are invalid.
	knownFlags = FlagOverwrite
)

func (*OpenTransfer) Type() Type { return TypeOpenTransfer }

func (m *OpenTransfer) Append(b []byte) []byte {
	b = appendString(b, m.TransferID)
	b = appendString(b, m.Dest)
	b = appendString(b, m.Params.Algorithm)
	b = appendUvarint(b, uint64(m.Params.Min))
	b = appendUvarint(b, uint64(m.Params.Avg))
	b = appendUvarint(b, uint64(m.Params.Max))
	b = appendUvarint(b, m.Files)
	b = appendUvarint(b, m.Bytes)
	if m.Flags != 0 {
		b = appendUvarint(b, m.Flags)
	}
	return b
}

func (m *OpenTransfer) decode(d *decoder) {
	m.TransferID = d.string("transfer ID", MaxTransferIDLen)
	m.Dest = d.string("dest", MaxPathLen)
	m.Params.Algorithm = d.string("algorithm", MaxAlgorithmLen)
	m.Params.Min = int(d.uvarint("min", chunk.MaxChunkCeil))
	m.Params.Avg = int(d.uvarint("avg", chunk.MaxChunkCeil))
	m.Params.Max = int(d.uvarint("max", chunk.MaxChunkCeil))
	m.Files = d.uint64("files")
	m.Bytes = d.uint64("bytes")
	if d.err == nil && len(d.b) > 0 {
		m.Flags = d.uvarint("flags", knownFlags)
		if m.Flags == 0 {
			d.fail("flags: zero on the wire")
		}
	}
}

func (m *OpenTransfer) check() error {
	if err := ValidTransferID(m.TransferID); err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if err := ValidAbsPath(m.Dest); err != nil {
		return fmt.Errorf("%w: dest: %w", ErrProtocol, err)
	}
	p := m.Params
	switch {
	case len(p.Algorithm) > MaxAlgorithmLen:
		return violation("algorithm: %d bytes above the limit %d", len(p.Algorithm), MaxAlgorithmLen)
	case p.Min < 0 || p.Avg < 0 || p.Max < 0 || p.Min > chunk.MaxChunkCeil || p.Avg > chunk.MaxChunkCeil || p.Max > chunk.MaxChunkCeil:
		return violation("chunk sizes %d/%d/%d outside [0, %d]", p.Min, p.Avg, p.Max, chunk.MaxChunkCeil)
	case m.Flags&^knownFlags != 0:
		return violation("unknown flags %#x", m.Flags&^knownFlags)
	}
	return nil
}

// TransferStateKind says where a transfer stands when it is opened.
type TransferStateKind uint8

const (
	StateNew      TransferStateKind = 1 // nothing of it is known to the receiver
	StateResume   TransferStateKind = 2 // some chunks are durable; they will not be asked for
	StateComplete TransferStateKind = 3 // already committed; the receiver will send Committed with AlreadyDone
)

func (k TransferStateKind) String() string {
	switch k {
	case StateNew:
		return "new"
	case StateResume:
		return "resume"
	case StateComplete:
		return "complete"
	}
	return fmt.Sprintf("state(%d)", uint8(k))
}

// TransferState answers OpenTransfer (and JoinTransfer).
type TransferState struct {
	State         TransferStateKind
	DurableBytes  uint64 // plain bytes of this transfer already durable on the receiver
	DurableChunks uint64 // chunks of this transfer already durable on the receiver
	Free          uint64 // free bytes on the receiver's file system holding Dest
	// JoinToken (version 5) lets other connections of the same peer join
	// this attempt of the transfer (JoinTransfer). Zero, and then not on
	// the wire, below version 5 and in answers to JoinTransfer.
	JoinToken [JoinTokenLen]byte
}

// JoinTokenLen is the size of TransferState.JoinToken.
const JoinTokenLen = 16

func (*TransferState) Type() Type { return TypeTransferState }

func (m *TransferState) Append(b []byte) []byte {
	b = appendUvarint(b, uint64(m.State))
	b = appendUvarint(b, m.DurableBytes)
	b = appendUvarint(b, m.DurableChunks)
	b = appendUvarint(b, m.Free)
	if m.JoinToken != ([JoinTokenLen]byte{}) {
		b = append(b, m.JoinToken[:]...)
	}
	return b
}

func (m *TransferState) decode(d *decoder) {
	m.State = TransferStateKind(d.uvarint("state", 255))
	m.DurableBytes = d.uint64("durable bytes")
	m.DurableChunks = d.uint64("durable chunks")
	m.Free = d.uint64("free")
	if d.err == nil && len(d.b) > 0 {
		m.JoinToken = d.token("join token")
		if m.JoinToken == ([JoinTokenLen]byte{}) {
			d.fail("join token: zero on the wire")
		}
	}
}

// JoinTransfer (version 5), the first request on the control stream of an
// extra connection, asks to carry data streams of the transfer that
// another connection of the same peer opened and that answered with
// Token. It is answered with TransferState (with no token) or Error; data
// streams opened after it count against that transfer's MaxDataStreams.
type JoinTransfer struct {
	TransferID string // ValidTransferID
	Token      [JoinTokenLen]byte
}

func (*JoinTransfer) Type() Type { return TypeJoinTransfer }

func (m *JoinTransfer) Append(b []byte) []byte {
	b = appendString(b, m.TransferID)
	return append(b, m.Token[:]...)
}

func (m *JoinTransfer) decode(d *decoder) {
	m.TransferID = d.string("transfer ID", MaxTransferIDLen)
	m.Token = d.token("token")
}

func (m *JoinTransfer) check() error {
	if err := ValidTransferID(m.TransferID); err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return nil
}

func (m *TransferState) check() error {
	if m.State < StateNew || m.State > StateComplete {
		return violation("unknown transfer state %d", uint8(m.State))
	}
	return nil
}

// FileHeader opens the manifest entry of file Index. Indexes count from 0 in
// the order the sender offers files.
type FileHeader struct {
	Index     uint32
	Path      string // ValidPath, relative to Dest
	Mode      uint32 // Unix permission bits, at most 0o7777
	Size      uint64 // plain size in bytes
	MTime     int64  // modification time, Unix nanoseconds
	NumChunks uint32 // chunks in the file if known: between ceil(Size/MaxChunkCeil) and Size; 0 = still being chunked (or an empty file)
	// Growing marks a file its writer is still appending to: Size and
	// NumChunks are then 0, and FileEnd gives the size and mtime.
	Growing bool
}

func (*FileHeader) Type() Type { return TypeFileHeader }

func (m *FileHeader) Append(b []byte) []byte {
	b = appendUvarint(b, uint64(m.Index))
	b = appendString(b, m.Path)
	b = appendUvarint(b, uint64(m.Mode))
	b = appendUvarint(b, m.Size)
	b = appendVarint(b, m.MTime)
	b = appendUvarint(b, uint64(m.NumChunks))
	return appendBool(b, m.Growing)
}

func (m *FileHeader) decode(d *decoder) {
	m.Index = d.uint32("index")
	m.Path = d.string("path", MaxPathLen)
	m.Mode = uint32(d.uvarint("mode", maxMode))
	m.Size = d.uint64("size")
	m.MTime = d.varint("mtime")
	m.NumChunks = d.uint32("chunks")
	m.Growing = d.bool("growing")
}

func (m *FileHeader) check() error {
	if err := ValidPath(m.Path); err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if m.Mode > maxMode {
		return violation("mode %#o has bits beyond %#o", m.Mode, maxMode)
	}
	if m.Growing && (m.Size != 0 || m.NumChunks != 0) {
		return violation("a growing file announces %d bytes, %d chunks", m.Size, m.NumChunks)
	}
	n := uint64(m.NumChunks)
	if n > m.Size || (n > 0 && m.Size > n*chunk.MaxChunkCeil) {
		return violation("%d chunks cannot hold %d bytes", m.NumChunks, m.Size)
	}
	return nil
}

// Dir (version 8) lists a directory of the tree, so that its mode is kept
// and an empty one is created. A sender lists every directory, Dest itself
// as ".", before the first FileHeader.
type Dir struct {
	Path string // ValidPath relative to Dest, or "." for Dest
	Mode uint32 // Unix permission bits, at most 0o7777
}

func (*Dir) Type() Type { return TypeDir }

func (m *Dir) Append(b []byte) []byte {
	b = appendString(b, m.Path)
	return appendUvarint(b, uint64(m.Mode))
}

func (m *Dir) decode(d *decoder) {
	m.Path = d.string("path", MaxPathLen)
	m.Mode = uint32(d.uvarint("mode", maxMode))
}

func (m *Dir) check() error {
	if m.Path != "." {
		if err := ValidPath(m.Path); err != nil {
			return fmt.Errorf("%w: %w", ErrProtocol, err)
		}
	}
	if m.Mode > maxMode {
		return violation("mode %#o has bits beyond %#o", m.Mode, maxMode)
	}
	return nil
}

// DirTime gives a directory listed by Dir its modification time
// (protocol 10): it follows that Dir, before the first FileHeader.
type DirTime struct {
	Path  string // as the Dir's
	MTime int64  // Unix nanoseconds
}

func (*DirTime) Type() Type { return TypeDirTime }

func (m *DirTime) Append(b []byte) []byte {
	b = appendString(b, m.Path)
	return appendVarint(b, m.MTime)
}

func (m *DirTime) decode(d *decoder) {
	m.Path = d.string("path", MaxPathLen)
	m.MTime = d.varint("mtime")
}

func (m *DirTime) check() error {
	if m.Path != "." {
		if err := ValidPath(m.Path); err != nil {
			return fmt.Errorf("%w: %w", ErrProtocol, err)
		}
	}
	return nil
}

// Abandon (protocol 12) asks a receiver to remove what transfer
// TransferID left at Dest: its DEST.partial, the temporary directories of
// one being made, and its records. The receiver removes them only if they
// are this peer's, for this transfer (section 7.7 of docs/PROTOCOL.md),
// never a committed Dest.
type Abandon struct {
	TransferID string // ValidTransferID
	Dest       string // ValidAbsPath on the receiver, as the transfer's OpenTransfer named it
}

func (*Abandon) Type() Type { return TypeAbandon }

func (m *Abandon) Append(b []byte) []byte {
	b = appendString(b, m.TransferID)
	return appendString(b, m.Dest)
}

func (m *Abandon) decode(d *decoder) {
	m.TransferID = d.string("transfer ID", MaxTransferIDLen)
	m.Dest = d.string("dest", MaxPathLen)
}

func (m *Abandon) check() error {
	if err := ValidTransferID(m.TransferID); err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if err := ValidAbsPath(m.Dest); err != nil {
		return fmt.Errorf("%w: dest: %w", ErrProtocol, err)
	}
	return nil
}

// AbandonState is what Abandoned reports.
type AbandonState uint8

const (
	// AbandonRemoved: the transfer's DEST.partial (or the temporary
	// directory of one being made) was removed, with its records.
	AbandonRemoved AbandonState = 1
	// AbandonNothing: this peer's transfer left nothing at Dest (never
	// opened here, committed, removed already, or taken over by another
	// transfer).
	AbandonNothing AbandonState = 2
)

// Abandoned (protocol 12) answers Abandon.
type Abandoned struct {
	State AbandonState
}

func (*Abandoned) Type() Type { return TypeAbandoned }

func (m *Abandoned) Append(b []byte) []byte { return appendUvarint(b, uint64(m.State)) }

func (m *Abandoned) decode(d *decoder) {
	m.State = AbandonState(d.uvarint("state", uint64(AbandonNothing)))
}

func (m *Abandoned) check() error {
	if m.State != AbandonRemoved && m.State != AbandonNothing {
		return violation("abandon state %d is not 1 or 2", m.State)
	}
	return nil
}

// ChunkRef is one chunk of a file's manifest.
type ChunkRef struct {
	ID  chunk.ID
	Len uint32 // plain length, 1 to MaxChunkCeil
}

// FileChunks lists chunks First, First+1, … of file Index. A file's list may
// span several FileChunks messages, in order.
type FileChunks struct {
	Index  uint32
	First  uint32     // index of Chunks[0] in the file's chunk list
	Chunks []ChunkRef // at most MaxChunkRefs; First+len(Chunks) at most 1<<32
}

func (*FileChunks) Type() Type { return TypeFileChunks }

func (m *FileChunks) Append(b []byte) []byte {
	b = appendUvarint(b, uint64(m.Index))
	b = appendUvarint(b, uint64(m.First))
	return appendChunkRefs(b, m.Chunks)
}

func (m *FileChunks) decode(d *decoder) {
	m.Index = d.uint32("index")
	m.First = d.uint32("first")
	m.Chunks = d.chunkRefs(MaxChunkRefs)
}

func (m *FileChunks) check() error {
	if len(m.Chunks) > MaxChunkRefs {
		return violation("%d chunks above the limit %d", len(m.Chunks), MaxChunkRefs)
	}
	if uint64(m.First)+uint64(len(m.Chunks)) > 1<<32 {
		return violation("chunks %d+%d beyond 1<<32", m.First, len(m.Chunks))
	}
	for i, c := range m.Chunks {
		if c.Len == 0 || c.Len > chunk.MaxChunkCeil {
			return violation("chunk %d: length %d outside [1, %d]", uint64(m.First)+uint64(i), c.Len, chunk.MaxChunkCeil)
		}
	}
	return nil
}

// FileEnd closes the manifest entry of file Index. Size and MTime repeat the
// header's, or give them for a Growing file.
type FileEnd struct {
	Index uint32
	Size  uint64   // plain size in bytes: the chunks' lengths add up to it
	MTime int64    // modification time, Unix nanoseconds
	Hash  [32]byte // the file's chunk-list hash, chunk.FileListHash (version 3)
}

func (*FileEnd) Type() Type { return TypeFileEnd }

func (m *FileEnd) Append(b []byte) []byte {
	b = appendUvarint(b, uint64(m.Index))
	b = appendUvarint(b, m.Size)
	b = appendVarint(b, m.MTime)
	return append(b, m.Hash[:]...)
}

func (m *FileEnd) decode(d *decoder) {
	m.Index = d.uint32("index")
	m.Size = d.uint64("size")
	m.MTime = d.varint("mtime")
	m.Hash = d.hash("hash")
}

func (m *FileEnd) check() error { return nil }

// ManifestEnd follows the last FileEnd: the manifest has Files files.
type ManifestEnd struct {
	Files uint32
}

func (*ManifestEnd) Type() Type { return TypeManifestEnd }

func (m *ManifestEnd) Append(b []byte) []byte { return appendUvarint(b, uint64(m.Files)) }

func (m *ManifestEnd) decode(d *decoder) { m.Files = d.uint32("files") }

func (m *ManifestEnd) check() error { return nil }

// Need asks the sender for chunks of file Index, by their index in the
// file's chunk list. A file's needs may span several Need messages. Decided,
// when not 0, says that the receiver has decided about chunks [0, Decided) of
// the file: those it needs were asked for in this Need or earlier ones, and
// it will not ask for the others in this connection. A receiver sends a Need
// after each FileChunks it has processed, with no Chunks if it needs none,
// so that the sender can let go of the bytes it keeps for chunks not asked
// for (every Chunks index is then below Decided).
type Need struct {
	Index   uint32
	Chunks  []uint32 // at most MaxNeedChunks, in any order
	Decided uint32
}

func (*Need) Type() Type { return TypeNeed }

func (m *Need) Append(b []byte) []byte {
	b = appendUvarint(b, uint64(m.Index))
	b = appendUvarint(b, uint64(len(m.Chunks)))
	for _, c := range m.Chunks {
		b = appendUvarint(b, uint64(c))
	}
	return appendUvarint(b, uint64(m.Decided))
}

func (m *Need) decode(d *decoder) {
	m.Index = d.uint32("index")
	if n := d.count("chunks", MaxNeedChunks, 1); n > 0 {
		m.Chunks = make([]uint32, n)
		for i := range m.Chunks {
			m.Chunks[i] = d.uint32("chunk index")
		}
	}
	m.Decided = d.uint32("decided")
}

func (m *Need) check() error {
	if len(m.Chunks) > MaxNeedChunks {
		return violation("%d chunks above the limit %d", len(m.Chunks), MaxNeedChunks)
	}
	if m.Decided != 0 {
		for _, c := range m.Chunks {
			if c >= m.Decided {
				return violation("chunk %d asked for is not below decided %d", c, m.Decided)
			}
		}
	}
	return nil
}

// NeedEnd tells the sender that no more Need messages will follow.
type NeedEnd struct{}

func (*NeedEnd) Type() Type             { return TypeNeedEnd }
func (*NeedEnd) Append(b []byte) []byte { return b }
func (*NeedEnd) decode(*decoder)        {}
func (*NeedEnd) check() error           { return nil }

// SendDone tells the receiver that every needed chunk has been written to
// the data streams: Chunks ChunkData frames on this connection. The
// receiver, whose data streams may lag the control stream, waits for that
// many before it concludes that a chunk is missing.
type SendDone struct {
	Chunks uint64
}

func (*SendDone) Type() Type               { return TypeSendDone }
func (m *SendDone) Append(b []byte) []byte { return appendUvarint(b, m.Chunks) }
func (m *SendDone) decode(d *decoder)      { m.Chunks = d.uint64("chunks") }
func (*SendDone) check() error             { return nil }

// ChunkData carries one chunk on a data stream.
type ChunkData struct {
	ID       chunk.ID    // BLAKE3-256 of the plain content; the receiver verifies it
	Codec    chunk.Codec // how Payload is encoded; must be Valid
	PlainLen uint32      // plain length, at most MaxChunkCeil; equals len(Payload) for CodecNone
	// Payload is the encoded chunk, at most MaxChunkPayload bytes. A decoded
	// Payload aliases the decoded buffer: for a Reader, it is valid only
	// until the next call to Next.
	Payload []byte
}

func (*ChunkData) Type() Type { return TypeChunkData }

func (m *ChunkData) Append(b []byte) []byte {
	b = append(b, m.ID[:]...)
	b = appendUvarint(b, uint64(m.Codec))
	b = appendUvarint(b, uint64(m.PlainLen))
	return appendBytes(b, m.Payload)
}

func (m *ChunkData) decode(d *decoder) {
	m.ID = d.hash("chunk ID")
	m.Codec = chunk.Codec(d.uvarint("codec", 255))
	m.PlainLen = uint32(d.uvarint("plain length", chunk.MaxChunkCeil))
	m.Payload = d.bytes("payload", MaxChunkPayload)
}

func (m *ChunkData) check() error {
	switch {
	case !m.Codec.Valid():
		return violation("unknown codec %d", uint8(m.Codec))
	case m.PlainLen > chunk.MaxChunkCeil:
		return violation("plain length %d above the limit %d", m.PlainLen, chunk.MaxChunkCeil)
	case len(m.Payload) > MaxChunkPayload:
		return violation("payload of %d bytes above the limit %d", len(m.Payload), MaxChunkPayload)
	case m.Codec == chunk.CodecNone && len(m.Payload) != int(m.PlainLen):
		return violation("plain payload of %d bytes, plain length %d", len(m.Payload), m.PlainLen)
	}
	return nil
}

// Progress reports how much of the transfer the receiver holds durably.
type Progress struct {
	DurableChunks uint64
	DurableBytes  uint64
}

func (*Progress) Type() Type { return TypeProgress }

func (m *Progress) Append(b []byte) []byte {
	b = appendUvarint(b, m.DurableChunks)
	return appendUvarint(b, m.DurableBytes)
}

func (m *Progress) decode(d *decoder) {
	m.DurableChunks = d.uint64("durable chunks")
	m.DurableBytes = d.uint64("durable bytes")
}

func (m *Progress) check() error { return nil }

// Committed ends a transfer: Dest holds every file, verified and synced.
type Committed struct {
	Files        uint64
	Bytes        uint64
	ManifestHash [32]byte // BLAKE3-256 naming the committed manifest (package mover defines its input)
	AlreadyDone  bool     // the transfer had been committed before this connection
}

func (*Committed) Type() Type { return TypeCommitted }

func (m *Committed) Append(b []byte) []byte {
	b = appendUvarint(b, m.Files)
	b = appendUvarint(b, m.Bytes)
	b = append(b, m.ManifestHash[:]...)
	return appendBool(b, m.AlreadyDone)
}

func (m *Committed) decode(d *decoder) {
	m.Files = d.uint64("files")
	m.Bytes = d.uint64("bytes")
	m.ManifestHash = d.hash("manifest hash")
	m.AlreadyDone = d.bool("already done")
}

func (m *Committed) check() error { return nil }

// SpaceQuery asks for the free space of the file system holding Path.
type SpaceQuery struct {
	Path string // ValidAbsPath on the peer, or "" for its default root
}

func (*SpaceQuery) Type() Type { return TypeSpaceQuery }

func (m *SpaceQuery) Append(b []byte) []byte { return appendString(b, m.Path) }

func (m *SpaceQuery) decode(d *decoder) { m.Path = d.string("path", MaxPathLen) }

func (m *SpaceQuery) check() error {
	if m.Path == "" {
		return nil
	}
	if err := ValidAbsPath(m.Path); err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return nil
}

// SpaceReply answers SpaceQuery, in bytes.
type SpaceReply struct {
	Free  uint64 // available to the mover's user
	Total uint64 // size of the file system
}

func (*SpaceReply) Type() Type { return TypeSpaceReply }

func (m *SpaceReply) Append(b []byte) []byte {
	b = appendUvarint(b, m.Free)
	return appendUvarint(b, m.Total)
}

func (m *SpaceReply) decode(d *decoder) {
	m.Free = d.uint64("free")
	m.Total = d.uint64("total")
}

func (m *SpaceReply) check() error { return nil }

// GetChunks asks a repository mover for chunks by ID. It is the request of
// a fetch stream (StreamFetch), which carries any number of them; the
// answers come back on the same stream, one per ID in order: a ChunkData of
// that ID, or an Error saying why that chunk cannot be read.
type GetChunks struct {
	IDs []chunk.ID // at most MaxGetChunks
}

func (*GetChunks) Type() Type { return TypeGetChunks }

func (m *GetChunks) Append(b []byte) []byte {
	b = appendUvarint(b, uint64(len(m.IDs)))
	for i := range m.IDs {
		b = append(b, m.IDs[i][:]...)
	}
	return b
}

func (m *GetChunks) decode(d *decoder) {
	n := d.count("IDs", MaxGetChunks, chunk.IDSize)
	if n == 0 {
		return
	}
	m.IDs = make([]chunk.ID, n)
	for i := range m.IDs {
		m.IDs[i] = d.hash("chunk ID")
	}
}

func (m *GetChunks) check() error {
	if len(m.IDs) > MaxGetChunks {
		return violation("%d IDs above the limit %d", len(m.IDs), MaxGetChunks)
	}
	return nil
}

var (
	_ message = (*Hello)(nil)
	_ message = (*Error)(nil)
	_ message = (*OpenTransfer)(nil)
	_ message = (*TransferState)(nil)
	_ message = (*FileHeader)(nil)
	_ message = (*FileChunks)(nil)
	_ message = (*FileEnd)(nil)
	_ message = (*ManifestEnd)(nil)
	_ message = (*Need)(nil)
	_ message = (*NeedEnd)(nil)
	_ message = (*SendDone)(nil)
	_ message = (*ChunkData)(nil)
	_ message = (*Progress)(nil)
	_ message = (*Committed)(nil)
	_ message = (*SpaceQuery)(nil)
	_ message = (*SpaceReply)(nil)
	_ message = (*GetChunks)(nil)
)
