package chunkstore

import (
	"bytes"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

func testRecord(t testing.TB, data []byte, l chunk.Level) []byte {
	t.Helper()
	stored, c := chunk.Compress(nil, data, l)
	h := recordHeader{ID: chunk.Sum(data), Codec: c, PlainLen: uint32(len(data)), StoredLen: uint32(len(stored))}
	return appendRecord(nil, h, stored)
}

func TestRecordRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		data  []byte
		codec chunk.Codec
	}{
		{"empty", nil, chunk.CodecNone},
		{"small", []byte("hello"), chunk.CodecNone},
		{"compressible", bytes.Repeat([]byte("1\t1\t0\t        \n"), 1000), chunk.CodecZstd},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := testRecord(t, tc.data, chunk.LevelFastest)
			h, stored, err := decodeRecord(rec)
			require.NoError(t, err)
			require.Equal(t, chunk.Sum(tc.data), h.ID)
			require.Equal(t, tc.codec, h.Codec)
			require.Equal(t, int64(len(rec)), h.size())
			plain, err := chunk.Decompress(nil, stored, h.Codec, int(h.PlainLen))
			require.NoError(t, err)
			require.Equal(t, len(tc.data), len(plain))
			require.True(t, bytes.Equal(tc.data, plain))
		})
	}
}

// The lengths in a header are checked before anything is allocated from
// them, even when the header's checksum is right.
func TestDecodeRecordHeaderRejects(t *testing.T) {
	good := recordHeader{ID: chunk.Sum([]byte("x")), Codec: chunk.CodecZstd, PlainLen: 100, StoredLen: 10}
	enc := func(h recordHeader) []byte {
		b := make([]byte, recordHeaderSize)
		putRecordHeader(b, h)
		return b
	}
	_, err := decodeRecordHeader(enc(good))
	require.NoError(t, err)

	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"short", enc(good)[:recordHeaderSize-1]},
		{"bad magic", func() []byte { b := enc(good); b[0] ^= 1; return b }()},
		{"bad checksum", func() []byte { b := enc(good); b[40] ^= 1; return b }()},
		{"plain too large", enc(recordHeader{Codec: chunk.CodecZstd, PlainLen: chunk.MaxChunkCeil + 1, StoredLen: 10})},
		{"stored too large", enc(recordHeader{Codec: chunk.CodecZstd, PlainLen: 10, StoredLen: math.MaxUint32})},
		{"unknown codec", enc(recordHeader{Codec: 7, PlainLen: 10, StoredLen: 10})},
		{"none with lengths differing", enc(recordHeader{Codec: chunk.CodecNone, PlainLen: 10, StoredLen: 9})},
		{"empty zstd", enc(recordHeader{Codec: chunk.CodecZstd, PlainLen: 10, StoredLen: 0})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeRecordHeader(tc.b)
			require.ErrorIs(t, err, errBadRecord)
		})
	}
}

func TestDecodeRecordLength(t *testing.T) {
	rec := testRecord(t, []byte("some chunk"), chunk.LevelNone)
	_, _, err := decodeRecord(rec[:len(rec)-1])
	require.ErrorIs(t, err, errBadRecord)
	_, _, err = decodeRecord(append(rec, 0))
	require.ErrorIs(t, err, errBadRecord)
}

func TestScanRecords(t *testing.T) {
	var pack []byte
	var offs []int64
	for i := range 5 {
		offs = append(offs, int64(len(pack)))
		pack = append(pack, testRecord(t, bytes.Repeat([]byte{byte(i)}, 1000*i), chunk.LevelFastest)...)
	}
	whole := int64(len(pack))
	torn := append(bytes.Clone(pack), testRecord(t, []byte("torn away"), chunk.LevelNone)[:30]...)
	garbage := append(bytes.Clone(pack), bytes.Repeat([]byte{0xff}, 200)...)

	for _, tc := range []struct {
		name string
		b    []byte
	}{{"whole", pack}, {"torn", torn}, {"garbage", garbage}} {
		t.Run(tc.name, func(t *testing.T) {
			var got []int64
			end, err := scanRecords(bytes.NewReader(tc.b), 0, int64(len(tc.b)), func(off int64, h recordHeader) error {
				got = append(got, off)
				return nil
			})
			require.NoError(t, err)
			require.Equal(t, whole, end)
			require.Equal(t, offs, got)
		})
	}
}

func TestPackName(t *testing.T) {
	require.Equal(t, "0000002a.pack", packName(42))
	require.Equal(t, "ffffffff.pack", packName(math.MaxUint32))
	require.Equal(t, "8000000000000001.pack", packName(1<<63|1))
	for name, want := range map[string]uint64{"0000002a.pack": 42, "8000000000000001.pack": 1<<63 | 1} {
		n, ok := parsePackName(name)
		require.True(t, ok, name)
		require.Equal(t, want, n)
	}
	for _, bad := range []string{"0000002A.pack", "2a.pack", "0000002a.pack.tmp", "+000002a.pack", "000000000000002a.pack", "idx"} {
		_, ok := parsePackName(bad)
		require.False(t, ok, bad)
	}
}

func TestV1LocRoundTrip(t *testing.T) {
	loc := chunkLoc{Pack: 7, Offset: 1 << 33, StoredLen: 1000, PlainLen: 5000, Codec: chunk.CodecZstd}
	b := appendV1Loc(nil, loc)
	require.Len(t, b, v1LocSize)
	got, err := decodeV1Loc(b)
	require.NoError(t, err)
	require.Equal(t, loc, got)

	bad := appendV1Loc(nil, chunkLoc{Codec: chunk.CodecZstd, PlainLen: chunk.MaxChunkCeil + 1, StoredLen: 1})
	_, err = decodeV1Loc(bad)
	require.ErrorIs(t, err, errBadIndex)
	_, err = decodeV1Loc(b[:v1LocSize-1])
	require.ErrorIs(t, err, errBadIndex)
}

func FuzzRecordHeader(f *testing.F) {
	f.Add(testRecord(f, []byte("hello"), chunk.LevelNone))
	f.Add(testRecord(f, bytes.Repeat([]byte("abc"), 100), chunk.LevelFastest)[:recordHeaderSize])
	f.Add([]byte(recordMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeRecordHeader(b)
		if err != nil {
			return
		}
		enc := make([]byte, recordHeaderSize)
		putRecordHeader(enc, h)
		require.Equal(t, b[:recordHeaderSize], enc)
		h2, err := decodeRecordHeader(enc)
		require.NoError(t, err)
		require.Equal(t, h, h2)
	})
}

// FuzzRecordHeaderFields reaches the length and codec checks, which random
// bytes rarely do past the header checksum.
func FuzzRecordHeaderFields(f *testing.F) {
	f.Add([]byte("id"), uint8(chunk.CodecZstd), uint32(100), uint32(10))
	f.Add([]byte{}, uint8(chunk.CodecNone), uint32(chunk.MaxChunkCeil), uint32(chunk.MaxChunkCeil))
	f.Add([]byte{1}, uint8(chunk.CodecNone), uint32(chunk.MaxChunkCeil+1), uint32(chunk.MaxChunkCeil+1))
	f.Fuzz(func(t *testing.T, id []byte, codec uint8, plain, stored uint32) {
		h := recordHeader{Codec: chunk.Codec(codec), PlainLen: plain, StoredLen: stored}
		copy(h.ID[:], id)
		b := make([]byte, recordHeaderSize)
		putRecordHeader(b, h)
		got, err := decodeRecordHeader(b)
		if err != nil {
			require.ErrorIs(t, err, errBadRecord)
			require.Error(t, h.validate())
			return
		}
		require.Equal(t, h, got)
		require.LessOrEqual(t, got.PlainLen, uint32(chunk.MaxChunkCeil))
		require.LessOrEqual(t, got.StoredLen, uint32(chunk.MaxChunkCeil))
	})
}

func FuzzRecord(f *testing.F) {
	f.Add(testRecord(f, nil, chunk.LevelNone))
	f.Add(testRecord(f, []byte("hello"), chunk.LevelNone))
	f.Add(testRecord(f, bytes.Repeat([]byte("abc"), 100), chunk.LevelFastest))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, stored, err := decodeRecord(b)
		if err != nil {
			return
		}
		enc := appendRecord(nil, h, stored)
		require.Equal(t, b, enc)
		h2, stored2, err := decodeRecord(enc)
		require.NoError(t, err)
		require.Equal(t, h, h2)
		require.Equal(t, stored, stored2)
		// What a pack read does next must not panic either.
		_, _ = chunk.Decompress(nil, stored, h.Codec, int(h.PlainLen))
	})
}

func FuzzScanRecords(f *testing.F) {
	two := append(testRecord(f, []byte("one"), chunk.LevelNone), testRecord(f, bytes.Repeat([]byte("two"), 100), chunk.LevelFastest)...)
	f.Add(two)
	f.Add(two[:len(two)-3])
	f.Add(append(bytes.Clone(two), 0xff, 0xfe))
	f.Fuzz(func(t *testing.T, b []byte) {
		prev := int64(-1)
		end, err := scanRecords(bytes.NewReader(b), 0, int64(len(b)), func(off int64, h recordHeader) error {
			require.Greater(t, off, prev)
			prev = off
			require.LessOrEqual(t, off+h.size(), int64(len(b)))
			_, _, err := decodeRecord(b[off : off+h.size()])
			require.NoError(t, err)
			return nil
		})
		require.NoError(t, err)
		require.GreaterOrEqual(t, end, int64(0))
		require.LessOrEqual(t, end, int64(len(b)))
	})
}

func FuzzV1Loc(f *testing.F) {
	f.Add(appendV1Loc(nil, chunkLoc{Pack: 1, Offset: 4096, StoredLen: 10, PlainLen: 100, Codec: chunk.CodecZstd}))
	f.Add(appendV1Loc(nil, chunkLoc{}))
	f.Fuzz(func(t *testing.T, b []byte) {
		loc, err := decodeV1Loc(b)
		if err != nil {
			return
		}
		enc := appendV1Loc(nil, loc)
		require.Equal(t, b, enc)
		loc2, err := decodeV1Loc(enc)
		require.NoError(t, err)
		require.Equal(t, loc, loc2)
	})
}
