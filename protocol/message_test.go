package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// testID returns a distinct, cheap ID (not the hash of anything).
func testID(i int) chunk.ID {
	var id chunk.ID
	binary.BigEndian.PutUint64(id[:], uint64(i))
	id[31] = 0xa5
	return id
}

// sampleMessages returns valid messages of every type, including each at the
// limits of its fields and with empty lists.
func sampleMessages() map[string]Message {
	refs := make([]ChunkRef, MaxChunkRefs)
	for i := range refs {
		refs[i] = ChunkRef{ID: testID(i), Len: uint32(i%chunk.MaxChunkCeil) + 1}
	}
	refs[len(refs)-1].Len = chunk.MaxChunkCeil
	need := make([]uint32, MaxNeedChunks)
	for i := range need {
		need[i] = uint32(i) * 4093
	}
	need[0] = 1<<32 - 1
	ids := make([]chunk.ID, MaxGetChunks)
	for i := range ids {
		ids[i] = testID(i)
	}
	pointIDs := make([]string, MaxPoints)
	for i := range pointIDs {
		pointIDs[i] = fmt.Sprintf("%0*d", MaxPointIDLen, i)
	}
	text := strings.Repeat("t", MaxPointTextLen)
	dbs := make([]PointDB, MaxPointDatabases)
	for i := range dbs {
		dbs[i] = PointDB{Name: text, OID: 1<<32 - 1, Size: 1<<64 - 1}
	}
	tree := make([]chunk.ID, MaxPointTreeChunks)
	for i := range tree {
		tree[i] = testID(i)
	}
	plain := bytes.Repeat([]byte("pg"), 1000)
	packed, codec := chunk.Compress(nil, plain, chunk.LevelDefault)
	s2Packed, _ := chunk.Compress(nil, plain, chunk.LevelS2)
	maxPath := strings.Repeat(strings.Repeat("x", MaxPathElemLen)+"/", 15) + strings.Repeat("y", 254) + "/z"
	hash := [32]byte(testID(7))
	walMax := make([]ChunkRef, MaxWALChunks)
	for i := range walMax {
		walMax[i] = ChunkRef{ID: testID(i), Len: MaxWALSize / MaxWALChunks}
	}
	walNeedMax := make([]uint32, MaxWALChunks)
	for i := range walNeedMax {
		walNeedMax[i] = uint32(i)
	}
	walName := "000000010000000000000002.00000028.backup"

	return map[string]Message{
		"Hello":                     NewHello("pgporter test"),
		"Hello/max":                 &Hello{Version: 1<<16 - 1, MinVersion: 1<<16 - 1, Software: strings.Repeat("é", MaxSoftwareLen/2)},
		"Hello/zero":                &Hello{},
		"Error":                     &Error{Code: CodeNoSpace, Message: "not enough space on /srv"},
		"Error/unknown":             &Error{Code: 1<<16 - 1, Message: strings.Repeat("m", MaxErrorMessageLen)},
		"Error/empty":               &Error{Code: CodeInternal},
		"OpenTransfer":              &OpenTransfer{TransferID: "t-2026.11_25", Dest: "/srv/dumps/app", Params: chunk.DefaultParams, Files: 12, Bytes: 1 << 40},
		"OpenTransfer/max":          &OpenTransfer{TransferID: strings.Repeat("Az09._-", 19)[:MaxTransferIDLen], Dest: "/" + maxPath[1:], Params: chunk.Params{Algorithm: strings.Repeat("a", MaxAlgorithmLen), Min: chunk.MaxChunkCeil, Avg: chunk.MaxChunkCeil, Max: chunk.MaxChunkCeil}, Files: 1<<64 - 1, Bytes: 1<<64 - 1},
		"OpenTransfer/min":          &OpenTransfer{TransferID: "a", Dest: "/"},
		"OpenTransfer/overwrite":    &OpenTransfer{TransferID: "t-1", Dest: "/srv/dumps/app", Params: chunk.DefaultParams, Files: 1, Bytes: 1, Flags: FlagOverwrite},
		"Dir":                       &Dir{Path: "app/data", Mode: 0o755},
		"DirTime":                   &DirTime{Path: "app/data", MTime: 1764979200123456789},
		"DirTime/root":              &DirTime{Path: ".", MTime: -1},
		"Abandon":                   &Abandon{TransferID: "s-20261207-ab12-app", Dest: "/srv/dumps/app"},
		"Abandon/max":               &Abandon{TransferID: strings.Repeat("Az09._-", 19)[:MaxTransferIDLen], Dest: "/" + maxPath[1:]},
		"Abandoned":                 &Abandoned{State: AbandonRemoved},
		"Abandoned/nothing":         &Abandoned{State: AbandonNothing},
		"Dir/dest":                  &Dir{Path: ".", Mode: 0o700},
		"Dir/max":                   &Dir{Path: maxPath, Mode: 0o7777},
		"TransferState":             &TransferState{State: StateResume, DurableBytes: 1 << 33, DurableChunks: 131072, Free: 1 << 50},
		"TransferState/c":           &TransferState{State: StateComplete},
		"TransferState/join":        &TransferState{State: StateNew, Free: 1 << 40, JoinToken: [JoinTokenLen]byte{1, 2, 3, 15: 0xff}},
		"JoinTransfer":              &JoinTransfer{TransferID: "t-0123456789abcdef", Token: [JoinTokenLen]byte{9, 15: 1}},
		"FileHeader":                &FileHeader{Index: 3, Path: "app/toc.dat", Mode: 0o644, Size: 1 << 30, MTime: 1764100000123456789, NumChunks: 16384},
		"FileHeader/still-chunking": &FileHeader{Index: 4, Path: "3001.dat", Mode: 0o600, Size: 1 << 40},
		"FileHeader/max":            &FileHeader{Index: 1<<32 - 1, Path: maxPath, Mode: 0o7777, Size: (1<<32 - 1) * chunk.MaxChunkCeil, MTime: -1 << 63, NumChunks: 1<<32 - 1},
		"FileHeader/empty":          &FileHeader{Path: "empty", MTime: -1},
		"FileHeader/growing":        &FileHeader{Index: 5, Path: "3002.dat", Mode: 0o600, MTime: 1764100000123456789, Growing: true},
		"FileChunks":                &FileChunks{Index: 3, First: 16384, Chunks: refs[:3]},
		"FileChunks/max":            &FileChunks{Index: 1<<32 - 1, First: 1<<32 - MaxChunkRefs, Chunks: refs},
		"FileChunks/empty":          &FileChunks{Index: 1, First: 1<<32 - 1},
		"FileEnd":                   &FileEnd{Index: 3, Size: 1 << 30, MTime: 1764100000123456789, Hash: hash},
		"FileEnd/max":               &FileEnd{Index: 1<<32 - 1, Size: 1<<64 - 1, MTime: -1 << 63, Hash: hash},
		"ManifestEnd":               &ManifestEnd{Files: 12},
		"ManifestEnd/max":           &ManifestEnd{Files: 1<<32 - 1},
		"Need":                      &Need{Index: 2, Chunks: []uint32{0, 5, 3}},
		"Need/decided":              &Need{Index: 2, Chunks: []uint32{0, 5, 3}, Decided: 6},
		"Need/decided only":         &Need{Index: 2, Decided: 64},
		"Need/max":                  &Need{Index: 1<<32 - 1, Chunks: need},
		"Need/empty":                &Need{Index: 2},
		"NeedEnd":                   &NeedEnd{},
		"SendDone":                  &SendDone{Chunks: 12345},
		"ChunkData":                 &ChunkData{ID: chunk.Sum(plain), Codec: codec, PlainLen: uint32(len(plain)), Payload: packed},
		"ChunkData/s2":              &ChunkData{ID: chunk.Sum(plain), Codec: chunk.CodecS2, PlainLen: uint32(len(plain)), Payload: s2Packed},
		"ChunkData/plain":           &ChunkData{ID: chunk.Sum([]byte("abc")), Codec: chunk.CodecNone, PlainLen: 3, Payload: []byte("abc")},
		"ChunkData/max":             &ChunkData{Codec: chunk.CodecZstd, PlainLen: chunk.MaxChunkCeil, Payload: make([]byte, MaxChunkPayload)},
		"ChunkData/empty":           &ChunkData{ID: chunk.Sum(nil)},
		"Progress":                  &Progress{DurableChunks: 100, DurableBytes: 6400000},
		"Committed":                 &Committed{Files: 12, Bytes: 1 << 40, ManifestHash: hash, AlreadyDone: true},
		"Committed/new":             &Committed{Files: 1, Bytes: 1},
		"SpaceQuery":                &SpaceQuery{Path: "/srv/dumps"},
		"SpaceQuery/root":           &SpaceQuery{},
		"SpaceReply":                &SpaceReply{Free: 1 << 40, Total: 1 << 42},
		"GetChunks":                 &GetChunks{IDs: ids[:2]},
		"GetChunks/max":             &GetChunks{IDs: ids},
		"GetChunks/empty":           &GetChunks{},
		"ListPoints":                &ListPoints{},
		"PointList":                 &PointList{IDs: []string{"rp-20261125T231500Z-ab12cd", "rp-20261126T010000Z-00ff00"}},
		"PointList/max":             &PointList{IDs: pointIDs},
		"PointList/empty":           &PointList{},
		"GetPoint":                  &GetPoint{ID: "rp-20261125T231500Z-ab12cd"},
		"GetPoint/latest":           &GetPoint{ID: "latest"},
		"Point":                     &Point{ID: "rp-20261125T231500Z-ab12cd", Time: 1764112500123456789, PGVersion: "15", SystemID: "7441234567890123456", SourceHost: "db1", Size: 1 << 34, StoredSize: 1 << 32, Files: 1500, Params: chunk.DefaultParams, Databases: []PointDB{{Name: "app", OID: 16384, Size: 1 << 30}, {OID: 1}}, Tree: ids[:3]},
		"Point/max":                 &Point{ID: strings.Repeat("r", MaxPointIDLen), Time: -1 << 63, PGVersion: text, SystemID: text, SourceHost: text, Size: 1<<64 - 1, StoredSize: 1<<64 - 1, Files: 1<<64 - 1, Params: chunk.Params{Algorithm: strings.Repeat("a", MaxAlgorithmLen), Min: chunk.MaxChunkCeil, Avg: chunk.MaxChunkCeil, Max: chunk.MaxChunkCeil}, Databases: dbs, Tree: tree},
		"Point/min":                 &Point{ID: "p"},
		"RunJob":                    &RunJob{Kind: JobExport, Version: JobVersion, Session: "x-1", Plan: &JobPlan{RepoPeer: "127.0.0.1:7000#AAAA", Databases: []string{"a", "<&>"}, To: "/srv/dumps", Jobs: 2}, Password: "pw"},
		"RunJob/filter": &RunJob{Kind: JobExport, Version: JobVersion, Session: "x-2", Plan: &JobPlan{Databases: []string{"shop"}, To: "/srv/dumps",
			Filter: &JobFilter{Tables: []string{"public.orders", `"Mixed".*`}, ExcludeTables: []string{"*_log"}, DataOnly: true}}},
		"RunJob/at": &RunJob{Kind: JobExport, Version: JobVersion, Session: "x-3", Plan: &JobPlan{Databases: []string{"shop"}, To: "/srv/dumps",
			At: &JobPointInTime{Time: time.Date(2026, 12, 1, 14, 32, 0, 0, time.UTC), Timeline: "current"}}},
		"RunJob/list":       &RunJob{Kind: JobListPublications, Version: JobVersion},
		"RunJob/publish":    &RunJob{Kind: JobPublish, Version: JobVersion, Publish: &PublishSpec{Repo: "/r", RetryFor: time.Minute, Port: 5433, At: &JobPointInTime{LSN: "0/3000148"}}},
		"RunJob/unpublish":  &RunJob{Kind: JobUnpublish, Version: JobVersion, Publication: "p-1"},
		"JobEvent":          &JobEvent{Kind: EventDone, Version: JobVersion, Step: "dump:a", Done: 123, WireBytes: 45, Text: "3 tables", Manifest: "ab12"},
		"JobEvent/end":      &JobEvent{Kind: EventEnd, Version: JobVersion, Error: "no", Code: "not-found", Reason: "not-repo"},
		"GetWAL":            &GetWAL{Name: "000000010000000000000001"},
		"GetWAL/max":        &GetWAL{Name: strings.Repeat("0", MaxWALNameLen)},
		"WALRecord":         &WALRecord{Name: "000000010000000000000001", Size: 3 + 1 + chunk.MaxChunkCeil, Hash: hash, Chunks: []ChunkRef{refs[2], refs[0], refs[len(refs)-1]}},
		"WALRecord/empty":   &WALRecord{Name: "00000002.history", Hash: hash},
		"WALRecord/max":     &WALRecord{Name: walName, Size: MaxWALSize, Hash: hash, Chunks: walMax},
		"PushWAL":           &PushWAL{WALRecord{Name: walName, Size: 3, Hash: hash, Chunks: refs[2:3]}},
		"PushWAL/max":       &PushWAL{WALRecord{Name: walName, Size: MaxWALSize, Hash: hash, Chunks: walMax}},
		"WALNeed":           &WALNeed{Chunks: []uint32{0, 2, 7}},
		"WALNeed/empty":     &WALNeed{},
		"WALNeed/max":       &WALNeed{Chunks: walNeedMax},
		"WALPushed":         &WALPushed{},
		"WALPushed/already": &WALPushed{Already: true},
		"JobEvent/result":   &JobEvent{Kind: EventResult, Version: JobVersion, Publications: []JobPublication{{ID: "p-1", State: "up", Port: 5433, Created: time.Date(2026, 12, 6, 13, 0, 0, 0, time.UTC)}}},
	}
}

func TestRoundTrip(t *testing.T) {
	seen := map[Type]bool{}
	for name, m := range sampleMessages() {
		t.Run(name, func(t *testing.T) {
			seen[m.Type()] = true
			payload := m.Append(nil)
			got, err := Decode(m.Type(), payload)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Fatalf("Decode(Append(m)) = %+v, want %+v", abbrev(got), abbrev(m))
			}
			if again := got.Append(nil); !bytes.Equal(again, payload) {
				t.Fatalf("re-encoding differs: %d bytes, want %d", len(again), len(payload))
			}
			var buf bytes.Buffer
			if err := WriteMessage(&buf, m); err != nil {
				t.Fatalf("WriteMessage: %v", err)
			}
			if !bytes.Equal(buf.Bytes(), AppendFrame(nil, m)) {
				t.Fatal("WriteMessage and AppendFrame disagree")
			}
			got, err = NewReader(&buf, MaxFrameSize).Next()
			if err != nil {
				t.Fatalf("Reader.Next: %v", err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Fatalf("Reader.Next = %+v, want %+v", abbrev(got), abbrev(m))
			}
		})
	}
	for tt := Type(0); tt < 255; tt++ {
		if tt.Known() && !seen[tt] {
			t.Errorf("no sample of %s", tt)
		}
	}
}

// abbrev keeps failure messages about huge messages readable.
func abbrev(m Message) string {
	s := fmt.Sprintf("%+v", m)
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// Regression guard: every control message at its limits must fit the frame
// limit control-stream readers use, or a large file's manifest would be
// refused by the receiver.
func TestControlMessagesFitFrameLimits(t *testing.T) {
	for name, m := range sampleMessages() {
		n := len(m.Append(nil))
		limit := MaxControlFrameSize
		if m.Type() == TypeChunkData {
			limit = MaxFrameSize
		}
		if n > limit {
			t.Errorf("%s: %d bytes above %d", name, n, limit)
		}
	}
	// The worst Need: every index takes 5 bytes.
	worst := &Need{Index: 1<<32 - 1, Chunks: make([]uint32, MaxNeedChunks), Decided: 1<<32 - 1}
	for i := range worst.Chunks {
		worst.Chunks[i] = 1<<32 - 1
	}
	if n := len(worst.Append(nil)); n > MaxControlFrameSize {
		t.Errorf("worst Need: %d bytes above %d", n, MaxControlFrameSize)
	}
}

func TestTypeNumbersAreStable(t *testing.T) {
	want := map[Type]string{1: "Hello", 2: "Error", 3: "OpenTransfer", 4: "TransferState", 5: "FileHeader",
		6: "FileChunks", 7: "FileEnd", 8: "ManifestEnd", 9: "Need", 10: "NeedEnd", 11: "SendDone", 12: "ChunkData",
		13: "Progress", 14: "Committed", 15: "SpaceQuery", 16: "SpaceReply", 17: "GetChunks",
		18: "ListPoints", 19: "PointList", 20: "GetPoint", 21: "Point", 22: "RunJob", 23: "JobEvent", 24: "JoinTransfer", 25: "Dir",
		26: "GetWAL", 27: "WALRecord", 28: "PushWAL", 29: "WALNeed", 30: "WALPushed", 31: "DirTime",
		32: "Abandon", 33: "Abandoned"}
	for tt := Type(0); ; tt++ {
		name, ok := want[tt]
		if tt.Known() != ok {
			t.Errorf("Type(%d).Known() = %v", tt, tt.Known())
		}
		if ok {
			if tt.String() != name {
				t.Errorf("Type(%d) = %s, want %s", tt, tt, name)
			}
			if m := newMessage(tt); m == nil || m.Type() != tt {
				t.Errorf("newMessage(%d) = %v", tt, m)
			}
		} else if tt.String() != fmt.Sprintf("Type(%d)", tt) {
			t.Errorf("unknown Type(%d).String() = %s", tt, tt)
		}
		if tt == 255 {
			break
		}
	}
}

func uv(v uint64) []byte { return appendUvarint(nil, v) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func str(s string) []byte { return appendString(nil, s) }

func TestDecodeRejects(t *testing.T) {
	id := testID(1)
	validHeader := (&FileHeader{Path: "a", Size: 10, NumChunks: 1}).Append(nil)
	tests := []struct {
		name    string
		typ     Type
		payload []byte
		also    error // a second sentinel the error must match
	}{
		{"unknown type 0", 0, nil, nil},
		{"unknown type 31", 31, nil, nil},
		{"unknown type 255", 255, nil, nil},
		{"empty Hello", TypeHello, nil, nil},
		{"trailing byte", TypeNeedEnd, []byte{0}, nil},
		{"trailing after FileHeader", TypeFileHeader, append(validHeader, 0), nil},
		{"TransferState with a short join token", TypeTransferState, append((&TransferState{State: StateNew}).Append(nil), 1, 2, 3), nil},
		{"TransferState with a zero join token", TypeTransferState, append((&TransferState{State: StateNew}).Append(nil), make([]byte, JoinTokenLen)...), nil},
		{"TransferState with bytes after the token", TypeTransferState, append((&TransferState{State: StateNew, JoinToken: [JoinTokenLen]byte{1}}).Append(nil), 0), nil},
		{"truncated JoinTransfer", TypeJoinTransfer, (&JoinTransfer{TransferID: "t-1", Token: [JoinTokenLen]byte{1}}).Append(nil)[:10], nil},
		{"truncated FileHeader", TypeFileHeader, validHeader[:len(validHeader)-1], nil},
		{"non-minimal varint", TypeManifestEnd, []byte{0x81, 0x00}, nil},
		{"non-minimal zero", TypeManifestEnd, []byte{0x80, 0x00}, nil},
		{"varint overflow", TypeProgress, cat(bytes.Repeat([]byte{0xff}, 10), []byte{0x01}, uv(0)), nil},
		{"uint16 overflow", TypeHello, cat(uv(1<<16), uv(1), str("")), nil},
		{"uint32 overflow", TypeManifestEnd, uv(1 << 32), nil},
		{"string above max", TypeHello, cat(uv(1), uv(1), uv(MaxSoftwareLen+1), make([]byte, MaxSoftwareLen+1)), nil},
		{"string length beyond payload", TypeError, cat(uv(1), uv(100), []byte("short")), nil},
		{"huge string length", TypeError, cat(uv(1), uv(1<<62)), nil},
		{"bad transfer ID", TypeOpenTransfer, (&OpenTransfer{TransferID: "a/b", Dest: "/x"}).Append(nil), ErrBadPath},
		{"dot transfer ID", TypeOpenTransfer, (&OpenTransfer{TransferID: "..", Dest: "/x"}).Append(nil), ErrBadPath},
		{"relative dest", TypeOpenTransfer, (&OpenTransfer{TransferID: "t", Dest: "x"}).Append(nil), ErrBadPath},
		{"unclean dest", TypeOpenTransfer, (&OpenTransfer{TransferID: "t", Dest: "/x/../etc"}).Append(nil), ErrBadPath},
		{"chunk min above ceiling", TypeOpenTransfer, (&OpenTransfer{TransferID: "t", Dest: "/x", Params: chunk.Params{Min: chunk.MaxChunkCeil + 1}}).Append(nil), nil},
		{"zero flags on the wire", TypeOpenTransfer, append((&OpenTransfer{TransferID: "t", Dest: "/x"}).Append(nil), 0), nil},
		{"unknown flag", TypeOpenTransfer, append((&OpenTransfer{TransferID: "t", Dest: "/x"}).Append(nil), 2), nil},
		{"bytes after the flags", TypeOpenTransfer, append((&OpenTransfer{TransferID: "t", Dest: "/x", Flags: FlagOverwrite}).Append(nil), 0), nil},
		{"dir traversal", TypeDir, (&Dir{Path: "../etc", Mode: 0o755}).Append(nil), ErrBadPath},
		{"dir absolute", TypeDir, (&Dir{Path: "/etc", Mode: 0o755}).Append(nil), ErrBadPath},
		{"dir empty path", TypeDir, (&Dir{Mode: 0o755}).Append(nil), ErrBadPath},
		{"dir unclean", TypeDir, (&Dir{Path: "a/./b"}).Append(nil), ErrBadPath},
		{"dir mode with type bits", TypeDir, (&Dir{Path: "a", Mode: 0o40755}).Append(nil), nil},
		{"dir truncated", TypeDir, str("a"), nil},
		{"transfer state 0", TypeTransferState, (&TransferState{}).Append(nil), nil},
		{"transfer state 4", TypeTransferState, (&TransferState{State: 4}).Append(nil), nil},
		{"traversal path", TypeFileHeader, (&FileHeader{Path: "../etc/passwd"}).Append(nil), ErrBadPath},
		{"absolute path", TypeFileHeader, (&FileHeader{Path: "/etc/passwd"}).Append(nil), ErrBadPath},
		{"mode with type bits", TypeFileHeader, (&FileHeader{Path: "a", Mode: 0o10644}).Append(nil), nil},
		{"more chunks than bytes", TypeFileHeader, (&FileHeader{Path: "a", Size: 1, NumChunks: 2}).Append(nil), nil},
		{"chunks too small for size", TypeFileHeader, (&FileHeader{Path: "a", Size: chunk.MaxChunkCeil + 1, NumChunks: 1}).Append(nil), nil},
		{"chunk count above max", TypeFileChunks, cat(uv(0), uv(0), uv(MaxChunkRefs+1)), nil},
		{"chunk count beyond payload", TypeFileChunks, cat(uv(0), uv(0), uv(2), id[:], uv(1)), nil},
		{"zero-length chunk", TypeFileChunks, (&FileChunks{Chunks: []ChunkRef{{ID: id}}}).Append(nil), nil},
		{"chunk above ceiling", TypeFileChunks, (&FileChunks{Chunks: []ChunkRef{{ID: id, Len: chunk.MaxChunkCeil + 1}}}).Append(nil), nil},
		{"chunk indexes overflow", TypeFileChunks, (&FileChunks{First: 1<<32 - 1, Chunks: []ChunkRef{{ID: id, Len: 1}, {ID: id, Len: 1}}}).Append(nil), nil},
		{"short hash", TypeFileEnd, cat(uv(0), uv(5), uv(0), id[:31]), nil},
		{"FileEnd without size", TypeFileEnd, cat(uv(0), id[:]), nil},
		{"growing file with a size", TypeFileHeader, (&FileHeader{Path: "a", Size: 10, Growing: true}).Append(nil), nil},
		{"growing file with chunks", TypeFileHeader, (&FileHeader{Path: "a", NumChunks: 1, Growing: true}).Append(nil), nil},
		{"growing flag not a bool", TypeFileHeader, append(validHeader[:len(validHeader)-1], 2), nil},
		{"need count above max", TypeNeed, cat(uv(0), uv(MaxNeedChunks+1)), nil},
		{"need count beyond payload", TypeNeed, cat(uv(0), uv(3), uv(1), uv(2)), nil},
		{"unknown codec", TypeChunkData, (&ChunkData{Codec: 3}).Append(nil), nil},
		{"plain length above ceiling", TypeChunkData, (&ChunkData{Codec: chunk.CodecZstd, PlainLen: chunk.MaxChunkCeil + 1}).Append(nil), nil},
		{"plain payload length mismatch", TypeChunkData, (&ChunkData{PlainLen: 4, Payload: []byte("abc")}).Append(nil), nil},
		{"payload above max", TypeChunkData, cat(id[:], uv(1), uv(1), uv(MaxChunkPayload+1)), nil},
		{"bool byte 2", TypeCommitted, cat(uv(0), uv(0), id[:], []byte{2}), nil},
		{"relative space path", TypeSpaceQuery, str("srv"), ErrBadPath},
		{"get count above max", TypeGetChunks, uv(MaxGetChunks + 1), nil},
		{"get count beyond payload", TypeGetChunks, cat(uv(2), id[:]), nil},
		{"trailing after ListPoints", TypeListPoints, []byte{0}, nil},
		{"point count above max", TypePointList, uv(MaxPoints + 1), nil},
		{"point count beyond payload", TypePointList, cat(uv(3), str("a"), str("b")), nil},
		{"empty point ID in list", TypePointList, cat(uv(2), str(""), str("ab")), ErrBadPath},
		{"traversal point ID in list", TypePointList, cat(uv(1), str("..")), ErrBadPath},
		{"point ID above max", TypeGetPoint, str(strings.Repeat("r", MaxPointIDLen+1)), nil},
		{"slash in point ID", TypeGetPoint, str("rp/x"), ErrBadPath},
		{"empty GetPoint", TypeGetPoint, nil, nil},
		{"point named latest", TypePoint, (&Point{ID: "latest"}).Append(nil), nil},
		{"point text above max", TypePoint, (&Point{ID: "p", SourceHost: strings.Repeat("h", MaxPointTextLen+1)}).Append(nil), nil},
		{"point params above ceiling", TypePoint, (&Point{ID: "p", Params: chunk.Params{Max: chunk.MaxChunkCeil + 1}}).Append(nil), nil},
		{"database count above max", TypePoint, cat((&Point{ID: "p"}).Append(nil)[:len((&Point{ID: "p"}).Append(nil))-2], uv(MaxPointDatabases+1)), nil},
		{"database count beyond payload", TypePoint, cat((&Point{ID: "p"}).Append(nil)[:len((&Point{ID: "p"}).Append(nil))-2], uv(2), str("a"), uv(1), uv(1), uv(0)), nil},
		{"tree count above max", TypePoint, cat((&Point{ID: "p"}).Append(nil)[:len((&Point{ID: "p"}).Append(nil))-1], uv(MaxPointTreeChunks+1)), nil},
		{"tree count beyond payload", TypePoint, cat((&Point{ID: "p"}).Append(nil)[:len((&Point{ID: "p"}).Append(nil))-1], uv(2), id[:]), nil},
		{"trailing after Point", TypePoint, append((&Point{ID: "p"}).Append(nil), 0), nil},
		{"WAL name traversal", TypeGetWAL, str("../000000010000000000000001"), ErrBadPath},
		{"WAL name with a slash", TypePushWAL, (&WALRecord{Name: "a/b"}).Append(nil), ErrBadPath},
		{"WAL name above max", TypeGetWAL, str(strings.Repeat("0", MaxWALNameLen+1)), nil},
		{"empty WAL name", TypeWALRecord, (&WALRecord{}).Append(nil), ErrBadPath},
		{"WAL file above 1 GiB", TypePushWAL, (&WALRecord{Name: "w", Size: MaxWALSize + 1}).Append(nil), nil},
		{"WAL chunk count above max", TypePushWAL, cat(str("w"), uv(0), id[:], uv(MaxWALChunks+1)), nil},
		{"WAL chunk count beyond payload", TypePushWAL, cat(str("w"), uv(2), id[:], uv(2), id[:], uv(1)), nil},
		{"WAL chunk of 0 bytes", TypePushWAL, (&WALRecord{Name: "w", Chunks: []ChunkRef{{ID: id}}}).Append(nil), nil},
		{"WAL chunk above ceiling", TypeWALRecord, cat(str("w"), uv(chunk.MaxChunkCeil+1), id[:], uv(1), id[:], uv(chunk.MaxChunkCeil+1)), nil},
		{"WAL lengths not adding up", TypePushWAL, (&WALRecord{Name: "w", Size: 5, Chunks: []ChunkRef{{ID: id, Len: 4}}}).Append(nil), nil},
		{"WAL lengths above size", TypePushWAL, (&WALRecord{Name: "w", Size: 3, Chunks: []ChunkRef{{ID: id, Len: 4}}}).Append(nil), nil},
		{"WALNeed count above max", TypeWALNeed, uv(MaxWALChunks + 1), nil},
		{"WALNeed count beyond payload", TypeWALNeed, cat(uv(3), uv(0), uv(1)), nil},
		{"WALNeed index above max", TypeWALNeed, cat(uv(1), uv(MaxWALChunks)), nil},
		{"WALNeed twice the same", TypeWALNeed, (&WALNeed{Chunks: []uint32{1, 1}}).Append(nil), nil},
		{"WALNeed not increasing", TypeWALNeed, (&WALNeed{Chunks: []uint32{2, 1}}).Append(nil), nil},
		{"WALPushed bool byte 2", TypeWALPushed, []byte{2}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Decode(tc.typ, tc.payload)
			if err == nil {
				t.Fatalf("Decode accepted %+v", m)
			}
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not match ErrProtocol", err)
			}
			if tc.also != nil && !errors.Is(err, tc.also) {
				t.Fatalf("error %v does not match %v", err, tc.also)
			}
			if ToWire(err).Code != CodeProtocol && (tc.also == nil || ToWire(err).Code != codeOf(tc.also)) {
				t.Fatalf("ToWire code %s", ToWire(err).Code)
			}
		})
	}
}

// Regression guard: a length or count from the wire must be checked before
// it sizes an allocation.
func TestDecodeDoesNotAllocateClaimedSizes(t *testing.T) {
	payloads := map[Type][]byte{
		TypeError:      cat(uv(1), uv(MaxErrorMessageLen)),
		TypeFileChunks: cat(uv(0), uv(0), uv(MaxChunkRefs)),
		TypeNeed:       cat(uv(0), uv(MaxNeedChunks)),
		TypeGetChunks:  uv(MaxGetChunks),
		TypePointList:  uv(MaxPoints),
		TypePoint:      cat((&Point{ID: "p"}).Append(nil)[:len((&Point{ID: "p"}).Append(nil))-1], uv(MaxPointTreeChunks)),
		TypeChunkData:  cat(make([]byte, 32), uv(1), uv(1), uv(MaxChunkPayload)),
		TypeWALRecord:  cat(str("w"), uv(MaxWALSize), make([]byte, 32), uv(MaxWALChunks)),
		TypePushWAL:    cat(str("w"), uv(MaxWALSize), make([]byte, 32), uv(MaxWALChunks)),
		TypeWALNeed:    uv(MaxWALChunks),
	}
	for typ, p := range payloads {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range 100 {
			if _, err := Decode(typ, p); err == nil {
				t.Fatalf("%s: Decode accepted a truncated list", typ)
			}
		}
		runtime.ReadMemStats(&after)
		// A few small allocations build the error; none may be the claimed
		// string or list.
		if d := (after.TotalAlloc - before.TotalAlloc) / 100; d > 2048 {
			t.Errorf("%s: %d bytes allocated per Decode", typ, d)
		}
	}
}

func TestWriteMessageRejectsInvalid(t *testing.T) {
	tests := []struct {
		name string
		m    Message
		want error
	}{
		{"nil", nil, ErrInternal},
		{"foreign", foreign{}, ErrInternal},
		{"software too long", &Hello{Software: strings.Repeat("s", MaxSoftwareLen+1)}, ErrProtocol},
		{"message too long", &Error{Message: strings.Repeat("s", MaxErrorMessageLen+1)}, ErrProtocol},
		{"bad path", &FileHeader{Path: "a/../../b"}, ErrBadPath},
		{"too many refs", &FileChunks{Chunks: make([]ChunkRef, MaxChunkRefs+1)}, ErrProtocol},
		{"too many needs", &Need{Chunks: make([]uint32, MaxNeedChunks+1)}, ErrProtocol},
		{"need past decided", &Need{Chunks: []uint32{3, 4}, Decided: 4}, ErrProtocol},
		{"too many IDs", &GetChunks{IDs: make([]chunk.ID, MaxGetChunks+1)}, ErrProtocol},
		{"too many points", &PointList{IDs: make([]string, MaxPoints+1)}, ErrProtocol},
		{"bad point ID", &GetPoint{ID: "../x"}, ErrBadPath},
		{"too many tree chunks", &Point{ID: "p", Tree: make([]chunk.ID, MaxPointTreeChunks+1)}, ErrProtocol},
		{"too many databases", &Point{ID: "p", Databases: make([]PointDB, MaxPointDatabases+1)}, ErrProtocol},
		{"payload too large", &ChunkData{Codec: chunk.CodecZstd, PlainLen: 1, Payload: make([]byte, MaxChunkPayload+1)}, ErrProtocol},
		{"negative params", &OpenTransfer{TransferID: "t", Dest: "/d", Params: chunk.Params{Min: -1}}, ErrProtocol},
		{"bad WAL name", &GetWAL{Name: ".."}, ErrBadPath},
		{"too many WAL chunks", &PushWAL{WALRecord{Name: "w", Chunks: make([]ChunkRef, MaxWALChunks+1)}}, ErrProtocol},
		{"WAL lengths not adding up", &WALRecord{Name: "w", Size: 2, Chunks: []ChunkRef{{Len: 1}}}, ErrProtocol},
		{"WAL need out of order", &WALNeed{Chunks: []uint32{3, 2}}, ErrProtocol},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := WriteMessage(&buf, tc.m)
			if !errors.Is(err, tc.want) {
				t.Fatalf("WriteMessage = %v, want %v", err, tc.want)
			}
			if buf.Len() != 0 {
				t.Fatalf("wrote %d bytes of an invalid message", buf.Len())
			}
		})
	}
}

type foreign struct{}

func (foreign) Type() Type             { return TypeNeedEnd }
func (foreign) Append(b []byte) []byte { return b }

func TestSampleLimitsAreExact(t *testing.T) {
	m := sampleMessages()
	if n := len(m["FileHeader/max"].(*FileHeader).Path); n != MaxPathLen {
		t.Fatalf("max path is %d bytes", n)
	}
	if n := len(m["OpenTransfer/max"].(*OpenTransfer).TransferID); n != MaxTransferIDLen {
		t.Fatalf("max transfer ID is %d bytes", n)
	}
}

// A job message is a peer's: anything but a JSON object of this job
// version, with known fields, in the one encoding of docs/PROTOCOL.md, is
// refused before it reaches a job runner.
func TestJobMessagesRefused(t *testing.T) {
	body := func(s string) []byte { return appendBytes(nil, []byte(s)) }
	for _, tc := range []struct {
		name string
		typ  Type
		body string
		is   error
		says string
	}{
		{"empty", TypeRunJob, "", ErrProtocol, "not a JSON object"},
		{"list", TypeRunJob, "[]", ErrProtocol, "not a JSON object"},
		{"string", TypeRunJob, `"x"`, ErrProtocol, "not a JSON object"},
		{"truncated", TypeRunJob, "{", ErrProtocol, "not a JSON object"},
		{"trailing", TypeRunJob, `{"kind":"list-publications","v":2}x`, ErrProtocol, "not a JSON object"},
		{"null", TypeRunJob, "null", ErrVersion, "version 0"},
		{"no version", TypeRunJob, `{"session":"x-1","plan":{}}`, ErrVersion, "job of version 0"},
		{"future version", TypeRunJob, `{"kind":"export","v":3,"session":"x-1","plan":{"databases":["a"]},"new_field":1}`, ErrVersion, "job of version 3; this build speaks job version 2"},
		{"future event version", TypeJobEvent, `{"kind":"end","v":3}`, ErrVersion, "job event of version 3"},
		{"unknown kind", TypeRunJob, `{"kind":"rm-rf","v":2}`, ErrProtocol, `unknown job kind "rm-rf"`},
		{"unknown event kind", TypeJobEvent, `{"kind":"explode","v":2}`, ErrProtocol, `unknown job event kind "explode"`},
		{"unknown field", TypeRunJob, `{"kind":"list-publications","v":2,"x":1}`, ErrProtocol, `unknown field "x"`},
		{"fields out of order", TypeRunJob, `{"v":2,"kind":"list-publications"}`, ErrProtocol, "not in the encoding"},
		{"whitespace", TypeRunJob, `{"kind":"list-publications", "v":2}`, ErrProtocol, "not in the encoding"},
		{"empty list", TypeRunJob, `{"kind":"export","v":2,"session":"x-1","plan":{"databases":[]}}`, ErrProtocol, "not in the encoding"},
		{"export without plan", TypeRunJob, `{"kind":"export","v":2,"session":"x-1"}`, ErrProtocol, `job kind "export" needs a plan`},
		{"cancel with plan", TypeRunJob, `{"kind":"cancel-export","v":2,"session":"x-1","plan":{}}`, ErrProtocol, `job kind "cancel-export" does not take a plan`},
		{"password for a list", TypeRunJob, `{"kind":"list-publications","v":2,"password":"pw"}`, ErrProtocol, "does not take a password"},
		{"error in a step event", TypeJobEvent, `{"kind":"done","v":2,"error":"x"}`, ErrProtocol, `a job event of kind "done" carries an error`},
		{"empty filter pattern", TypeRunJob, `{"kind":"export","v":2,"session":"x-1","plan":{"databases":["a"],"filter":{"tables":[""]}}}`, ErrProtocol, "dump filter pattern is empty"},
		{"NUL in a filter pattern", TypeRunJob, `{"kind":"export","v":2,"session":"x-1","plan":{"databases":["a"],"filter":{"schemas":["a\u0000b"]}}}`, ErrProtocol, "dump filter pattern"},
		{"two targets", TypeRunJob, `{"kind":"export","v":2,"session":"x-1","plan":{"databases":["a"],"at":{"lsn":"0/1","name":"n"}}}`, ErrProtocol, "more than one of a time, an LSN and a name"},
		{"quote in a target", TypeRunJob, `{"kind":"export","v":2,"session":"x-1","plan":{"databases":["a"],"at":{"name":"x'; DROP"}}}`, ErrProtocol, "NUL, newline or quote"},
		{"data-only and schema-only", TypeRunJob, `{"kind":"export","v":2,"session":"x-1","plan":{"databases":["a"],"filter":{"data_only":true,"schema_only":true}}}`, ErrProtocol, "data-only and schema-only"},
		{"publications in an end event", TypeJobEvent, `{"kind":"end","v":2,"publications":[]}`, ErrProtocol, "not in the encoding"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(tc.typ, body(tc.body))
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("got %v, want %v saying %q", err, tc.is, tc.says)
			}
		})
	}
	if _, err := Decode(TypeJobEvent, appendUvarint(nil, MaxJobBody+1)); !errors.Is(err, ErrProtocol) {
		t.Errorf("oversize body: %v", err)
	}
	// What this build would send wrong, it refuses to send.
	for _, m := range []Message{
		&RunJob{Kind: JobExport, Session: "x-1", Plan: &JobPlan{}},
		&RunJob{Kind: "rm-rf", Version: JobVersion},
		&JobEvent{Kind: EventDone, Version: JobVersion + 1},
		&JobEvent{Kind: EventDone, Version: JobVersion, Text: strings.Repeat("x", MaxJobBody)},
	} {
		if err := WriteMessage(io.Discard, m); err == nil {
			t.Errorf("WriteMessage sent %+v", m)
		}
	}
}
