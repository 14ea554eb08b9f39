package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"runtime"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/stretchr/testify/require"
)

func TestReaderStream(t *testing.T) {
	msgs := []Message{
		NewHello("a"),
		&OpenTransfer{TransferID: "t1", Dest: "/srv/d", Params: chunk.DefaultParams, Files: 2, Bytes: 7},
		&FileHeader{Index: 0, Path: "toc.dat", Mode: 0o600, Size: 7, MTime: 42, NumChunks: 1},
		&FileChunks{Index: 0, Chunks: []ChunkRef{{ID: testID(1), Len: 7}}},
		&FileEnd{Index: 0},
		&ChunkData{ID: testID(1), PlainLen: 7, Payload: []byte("payload")},
		&ChunkData{ID: testID(2), PlainLen: 2, Payload: []byte("pa")},
		&NeedEnd{},
		&ManifestEnd{Files: 1},
	}
	var buf bytes.Buffer
	for _, m := range msgs {
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatal(err)
		}
	}
	r := NewReader(&buf, MaxControlFrameSize)
	for i, want := range msgs {
		got, err := r.Next()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("message %d = %+v, want %+v", i, got, want)
		}
		if cd, ok := got.(*ChunkData); ok && cap(cd.Payload) != len(cd.Payload) {
			// Regression guard: appending to an aliased payload must not
			// overwrite the Reader's buffer.
			t.Fatalf("ChunkData payload has spare capacity %d", cap(cd.Payload)-len(cd.Payload))
		}
	}
	for range 2 {
		if _, err := r.Next(); err != io.EOF {
			t.Fatalf("after the last frame: %v, want io.EOF", err)
		}
	}
}

// ChunkData payloads alias the Reader's buffer, as documented: the next call
// reuses it.
func TestReaderReusesBuffer(t *testing.T) {
	var buf bytes.Buffer
	for _, p := range []string{"first", "later"} {
		if err := WriteMessage(&buf, &ChunkData{PlainLen: uint32(len(p)), Payload: []byte(p)}); err != nil {
			t.Fatal(err)
		}
	}
	r := NewReader(&buf, 0)
	m1, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	p1 := m1.(*ChunkData).Payload
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if string(p1) != "later" {
		t.Fatalf("payload after Next = %q: the buffer was not reused", p1)
	}
}

func frameHeader(n uint32, t Type) []byte {
	var h [frameHeaderSize]byte
	binary.BigEndian.PutUint32(h[:], n)
	h[4] = byte(t)
	return h[:]
}

// Regression guard: a peer must not make a Reader allocate what a length
// header claims before the length is checked against max.
func TestReaderRejectsOversizeWithoutAllocating(t *testing.T) {
	hdr := frameHeader(1<<30, TypeChunkData)
	for _, max := range []int{MaxFrameSize, MaxControlFrameSize, 64 << 10} {
		const runs = 100
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs {
			if _, err := NewReader(bytes.NewReader(hdr), max).Next(); !errors.Is(err, ErrTooLarge) {
				t.Fatalf("max %d: %v, want ErrTooLarge", max, err)
			}
		}
		runtime.ReadMemStats(&after)
		// Building the error takes a few hundred bytes; the claimed size
		// would be 1 GiB, and even a max-sized buffer 64 KiB to 16 MiB.
		if d := (after.TotalAlloc - before.TotalAlloc) / runs; d > 16<<10 {
			t.Fatalf("max %d: %d bytes allocated per rejected frame", max, d)
		}
	}

	// Just above a small max, and exactly at it.
	small := 100
	big := AppendFrame(nil, &ChunkData{PlainLen: 66, Payload: make([]byte, 66)})
	if n := len(big) - frameHeaderSize; n != small+1 {
		t.Fatalf("test frame is %d bytes", n)
	}
	if _, err := NewReader(bytes.NewReader(big), small).Next(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("frame of max+1: %v", err)
	}
	if _, err := NewReader(bytes.NewReader(big), small+1).Next(); err != nil {
		t.Fatalf("frame of max: %v", err)
	}
}

func TestReaderTruncated(t *testing.T) {
	frame := AppendFrame(nil, &FileHeader{Path: "a/b", Size: 3, NumChunks: 1})
	for n := 1; n < len(frame); n++ {
		_, err := NewReader(bytes.NewReader(frame[:n]), 0).Next()
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("frame cut to %d bytes: %v, want io.ErrUnexpectedEOF", n, err)
		}
	}
	if _, err := NewReader(bytes.NewReader(nil), 0).Next(); err != io.EOF {
		t.Fatalf("empty stream: %v, want io.EOF", err)
	}
}

func TestReaderBadFrames(t *testing.T) {
	tests := []struct {
		name   string
		stream []byte
		want   error
	}{
		{"unknown type", frameHeader(0, 99), ErrProtocol},
		{"type zero", frameHeader(0, 0), ErrProtocol},
		{"unknown type with payload", append(frameHeader(3, 200), 1, 2, 3), ErrProtocol},
		{"bad payload", append(frameHeader(1, TypeNeedEnd), 0), ErrProtocol},
		{"payload shorter than its length", append(frameHeader(4, TypeManifestEnd), 1), io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tc.stream), 0)
			_, err := r.Next()
			if !errors.Is(err, tc.want) {
				t.Fatalf("Next = %v, want %v", err, tc.want)
			}
			// The position in the stream is lost: the error sticks.
			if _, err2 := r.Next(); err2 != err {
				t.Fatalf("second Next = %v, want the same error", err2)
			}
		})
	}
}

type countingWriter struct {
	mu     sync.Mutex // guards writes, buf
	writes int
	buf    bytes.Buffer
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return w.buf.Write(p)
}

// Data streams are shared by goroutines: one Write per frame keeps frames
// whole. Run with -race, this also exercises the buffer pool.
func TestWriteMessageOneWritePerFrame(t *testing.T) {
	w := &countingWriter{}
	const n = 64
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			p := bytes.Repeat([]byte{byte(i)}, 1000*i)
			if err := WriteMessage(w, &ChunkData{ID: chunk.Sum(p), PlainLen: uint32(len(p)), Payload: p}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if w.writes != n {
		t.Fatalf("%d writes for %d frames", w.writes, n)
	}
	r := NewReader(&w.buf, MaxFrameSize)
	seen := map[int]bool{}
	for {
		m, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		cd := m.(*ChunkData)
		if chunk.VerifyContent(cd.ID, cd.Payload) != nil {
			t.Fatal("frames interleaved")
		}
		seen[len(cd.Payload)/1000] = true
	}
	if len(seen) != n {
		t.Fatalf("read %d distinct frames, want %d", len(seen), n)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestWriteMessageReportsWriteError(t *testing.T) {
	if err := WriteMessage(failingWriter{}, &NeedEnd{}); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("WriteMessage = %v", err)
	}
}

func TestStreamKind(t *testing.T) {
	for _, k := range []StreamKind{StreamControl, StreamData, StreamFetch, StreamArchive} {
		var buf bytes.Buffer
		if err := WriteStreamKind(&buf, k); err != nil {
			t.Fatal(err)
		}
		if buf.Len() != 1 || buf.Bytes()[0] != byte(k) {
			t.Fatalf("%s written as %x", k, buf.Bytes())
		}
		got, err := ReadStreamKind(&buf)
		if err != nil || got != k {
			t.Fatalf("ReadStreamKind = %v, %v", got, err)
		}
	}
	if StreamControl != 1 || StreamData != 2 || StreamFetch != 3 || StreamArchive != 4 {
		t.Fatal("stream kinds are wire values")
	}
	if _, err := ReadStreamKind(bytes.NewReader([]byte{5})); !errors.Is(err, ErrProtocol) {
		t.Fatalf("kind 5: %v", err)
	}
	if _, err := ReadStreamKind(bytes.NewReader(nil)); !errors.Is(err, io.EOF) {
		t.Fatalf("empty stream: %v", err)
	}
}

// TestReaderGrowsAsBytesArrive guards against allocating a frame's announced
// length before its bytes come (issue 15: 48 data streams that each sent only
// a 16 MiB header raised the heap from 1 to 781 MiB). A header announcing
// MaxFrameSize followed by 1000 bytes costs about a growStep, not 16 MiB;
// a frame that does arrive whole still decodes.
func TestReaderGrowsAsBytesArrive(t *testing.T) {
	hdr := binary.BigEndian.AppendUint32(nil, MaxFrameSize)
	hdr = append(hdr, byte(TypeChunkData))
	in := append(hdr, make([]byte, 1000)...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := NewReader(bytes.NewReader(in), MaxFrameSize).Next()
	runtime.ReadMemStats(&after)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20), "allocated ahead of the bytes that arrived")

	payload := bytes.Repeat([]byte("x"), 3<<20)
	cd := &ChunkData{ID: chunk.Sum(payload), Codec: chunk.CodecNone, PlainLen: uint32(len(payload)), Payload: payload}
	var buf bytes.Buffer
	require.NoError(t, WriteMessage(&buf, cd))
	require.NoError(t, WriteMessage(&buf, cd))
	rd := NewReader(iotest.OneByteReader(&buf), 0)
	for range 2 {
		m, err := rd.Next()
		require.NoError(t, err)
		require.Equal(t, payload, m.(*ChunkData).Payload)
	}
}
