package protocol

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

// seedMessages are the valid sample messages small enough for fuzz corpora,
// at least one of each type. Large seeds make the fuzzer's minimization of
// the inputs it derives from them quadratic: it then stalls for seconds.
func seedMessages() []Message {
	var out []Message
	for _, m := range sampleMessages() {
		if len(m.Append(nil)) <= 512 {
			out = append(out, m)
		}
	}
	return out
}

// FuzzDecode checks that Decode never panics, and that whatever it accepts
// encodes back to the same bytes and decodes to an equal message.
func FuzzDecode(f *testing.F) {
	for _, m := range seedMessages() {
		f.Add(byte(m.Type()), m.Append(nil))
	}
	f.Add(byte(0), []byte{})
	f.Add(byte(TypeFileChunks), []byte{0, 0, 0xff, 0xff, 0x03})
	f.Fuzz(func(t *testing.T, typ byte, payload []byte) {
		m, err := Decode(Type(typ), payload)
		if err != nil {
			// A job message of another version is ErrVersion.
			if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrVersion) {
				t.Fatalf("error %v does not match ErrProtocol or ErrVersion", err)
			}
			return
		}
		if m.Type() != Type(typ) {
			t.Fatalf("decoded a %s from type %d", m.Type(), typ)
		}
		enc := m.Append(nil)
		if !bytes.Equal(enc, payload) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", enc, payload)
		}
		m2, err := Decode(m.Type(), enc)
		if err != nil {
			t.Fatalf("decoding the re-encoding: %v", err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("decode→encode→decode: %+v != %+v", m2, m)
		}
		if err := WriteMessage(io.Discard, m); err != nil {
			t.Fatalf("WriteMessage refused a decoded message: %v", err)
		}
	})
}

// FuzzReader checks that a Reader never panics or grows beyond its max on an
// arbitrary stream, and that every message it returns frames back to the
// bytes it was read from.
func FuzzReader(f *testing.F) {
	const max = 4096
	var all []byte
	for _, m := range seedMessages() {
		frame := AppendFrame(nil, m)
		if len(frame)-frameHeaderSize <= max {
			f.Add(frame)
			all = append(all, frame...)
		}
	}
	f.Add(all)
	f.Add(frameHeader(1<<30, TypeChunkData))
	f.Add(append(frameHeader(3, 200), 1, 2, 3))
	f.Fuzz(func(t *testing.T, stream []byte) {
		r := NewReader(bytes.NewReader(stream), max)
		var again bytes.Buffer
		for {
			m, err := r.Next()
			if cap(r.buf) > max {
				t.Fatalf("buffer grew to %d, above max %d", cap(r.buf), max)
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				// A job message of another version is ErrVersion.
				if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrVersion) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				if _, err2 := r.Next(); err2 != err {
					t.Fatalf("error did not stick: %v then %v", err, err2)
				}
				break
			}
			if err := WriteMessage(&again, m); err != nil {
				t.Fatalf("WriteMessage refused a read message: %v", err)
			}
		}
		if !bytes.HasPrefix(stream, again.Bytes()) {
			t.Fatal("re-framed messages differ from the stream")
		}
	})
}

func TestSeedsCoverEveryType(t *testing.T) {
	seen := map[Type]bool{}
	for _, m := range seedMessages() {
		seen[m.Type()] = true
	}
	for tt := Type(1); tt < 255; tt++ {
		if tt.Known() && !seen[tt] {
			t.Errorf("no fuzz seed of %s", tt)
		}
	}
}
