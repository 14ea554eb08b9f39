package chunk_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/synth"
)

var allLevels = []chunk.Level{
	chunk.LevelNone, chunk.LevelS2, chunk.LevelFast4, chunk.LevelFast1, chunk.LevelFastest, chunk.LevelDefault, chunk.LevelBetter, chunk.LevelBest,
}

func TestLevelNames(t *testing.T) {
	for _, l := range allLevels {
		got, err := chunk.ParseLevel(l.String())
		require.NoError(t, err)
		require.Equal(t, l, got)
	}
	require.Equal(t, "level(9)", chunk.Level(9).String())
	for _, s := range []string{"", "fast", "Fastest", "level(1)", "3"} {
		_, err := chunk.ParseLevel(s)
		require.Error(t, err, "%q", s)
	}
}

func TestCodecNames(t *testing.T) {
	require.Equal(t, "none", chunk.CodecNone.String())
	require.Equal(t, "zstd", chunk.CodecZstd.String())
	require.Equal(t, "s2", chunk.CodecS2.String())
	require.Equal(t, "codec(7)", chunk.Codec(7).String())
	require.True(t, chunk.CodecNone.Valid())
	require.True(t, chunk.CodecZstd.Valid())
	require.True(t, chunk.CodecS2.Valid())
	require.False(t, chunk.Codec(3).Valid())
	require.Equal(t, chunk.Codec(2), chunk.CodecS2, "the codec byte is on disk and on the wire")
}

// TestLevelOrder: the levels go by effort, S2 below zstd --fast=4, which the
// sender's ladder steps through one at a time.
func TestLevelOrder(t *testing.T) {
	require.Equal(t, "s2", chunk.LevelS2.String())
	require.Less(t, chunk.LevelNone, chunk.LevelS2)
	require.Equal(t, chunk.LevelS2+1, chunk.LevelFast4)
}

// roundTrip compresses data at l after a prefix, decompresses it after
// another prefix, and returns the codec and the encoded size.
func roundTrip(t testing.TB, data []byte, l chunk.Level) (chunk.Codec, int) {
	t.Helper()
	prefix := []byte("prefix")
	enc, codec := chunk.Compress(append([]byte{}, prefix...), data, l)
	require.Equal(t, prefix, enc[:len(prefix)], "Compress must append to dst")
	enc = enc[len(prefix):]
	require.True(t, codec.Valid())

	dec, err := chunk.Decompress(append([]byte{}, prefix...), enc, codec, len(data))
	require.NoError(t, err)
	require.Equal(t, prefix, dec[:len(prefix)], "Decompress must append to dst")
	require.True(t, bytes.Equal(data, dec[len(prefix):]), "round trip changed the data")

	dec, err = chunk.Decompress(nil, enc, codec, len(data))
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, dec), "round trip into nil changed the data")
	return codec, len(enc)
}

func TestCompressRoundTrip(t *testing.T) {
	inputs := []struct {
		name         string
		data         []byte
		compressible bool
	}{
		{"pgbench", synth.PgbenchRows(200 << 10), true},
		{"text-max-chunk", bytes.Repeat([]byte("INSERT INTO t VALUES (1, 'abc');\n"), chunk.MaxChunkCeil/33+1)[:chunk.MaxChunkCeil], true},
		{"zeros", make([]byte, 64<<10), true},
		{"random", synth.Random(31, 64<<10), false},
		{"small", bytes.Repeat([]byte{'a'}, 100), false}, // below 128 B: never worth a zstd frame
		{"127", bytes.Repeat([]byte{'a'}, 127), false},
		{"128", bytes.Repeat([]byte{'a'}, 128), true},
		{"one", []byte{0}, false},
		{"empty", nil, false},
		{"half-random", append(synth.Random(32, 32<<10), make([]byte, 32<<10)...), true},
	}
	for _, in := range inputs {
		for _, l := range append(allLevels, chunk.Level(-1), chunk.Level(99)) {
			if len(in.data) > 1<<20 && l > chunk.LevelFastest {
				continue // slow at high levels, and no different
			}
			t.Run(in.name+"/"+l.String(), func(t *testing.T) {
				codec, n := roundTrip(t, in.data, l)
				if l == chunk.LevelNone || !in.compressible {
					require.Equal(t, chunk.CodecNone, codec)
					require.Equal(t, len(in.data), n)
					return
				}
				want := chunk.CodecZstd
				if l == chunk.LevelS2 {
					want = chunk.CodecS2
				}
				require.Equal(t, want, codec)
				require.Less(t, n, len(in.data)-len(in.data)/32)
			})
		}
	}
}

func TestCompressIncompressibleStoredPlain(t *testing.T) {
	data := synth.Random(33, 256<<10)
	dst := make([]byte, 0, 1<<20)
	out, codec := chunk.Compress(dst, data, chunk.LevelBest)
	require.Equal(t, chunk.CodecNone, codec)
	require.True(t, bytes.Equal(data, out))
	require.Equal(t, &dst[:1][0], &out[0], "spare capacity of dst is used")
}

func zstdFrame(t testing.TB, data []byte) []byte {
	t.Helper()
	enc, codec := chunk.Compress(nil, data, chunk.LevelDefault)
	require.Equal(t, chunk.CodecZstd, codec)
	return enc
}

// rleBomb builds a zstd frame by hand: total bytes of 'x' in RLE blocks of
// 128 KiB, four bytes each, so a few KiB of input claim any size. fcs is the
// frame content size to declare, or -1 for none (as a streaming encoder
// writes).
func rleBomb(total int, fcs int64) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd}
	if fcs < 0 {
		b = append(b, 0x00, 0x50) // no content size; window 1 MiB
	} else {
		b = append(b, 0xc0, 0x50) // 8-byte content size; window 1 MiB
		b = binary.LittleEndian.AppendUint64(b, uint64(fcs))
	}
	const block = 128 << 10
	for total > 0 {
		n := min(total, block)
		total -= n
		last := 0
		if total == 0 {
			last = 1
		}
		hdr := uint32(n)<<3 | 1<<1 | uint32(last) // RLE block
		b = append(b, byte(hdr), byte(hdr>>8), byte(hdr>>16), 'x')
	}
	return b
}

func TestRLEBombIsValidZstd(t *testing.T) {
	// The bombs below are only meaningful if they are frames zstd accepts.
	d, err := zstd.NewReader(nil)
	require.NoError(t, err)
	defer d.Close()
	for _, fcs := range []int64{-1, 300 << 10} {
		out, err := d.DecodeAll(rleBomb(300<<10, fcs), nil)
		require.NoError(t, err)
		require.Equal(t, bytes.Repeat([]byte{'x'}, 300<<10), out)
	}
	out, err := chunk.Decompress(nil, rleBomb(300<<10, -1), chunk.CodecZstd, 300<<10)
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{'x'}, 300<<10), out)
}

func TestDecompressRejects(t *testing.T) {
	data := synth.PgbenchRows(100 << 10)
	frame := zstdFrame(t, data)
	for _, tc := range []struct {
		name     string
		src      []byte
		codec    chunk.Codec
		plainLen int
		is       error // if set, the error must match it
	}{
		{"plain short", data, chunk.CodecNone, len(data) + 1, nil},
		{"plain long", data, chunk.CodecNone, len(data) - 1, nil},
		{"zstd plainLen too big", frame, chunk.CodecZstd, len(data) + 1, nil},
		{"zstd plainLen too small", frame, chunk.CodecZstd, len(data) - 1, nil},
		{"zstd plainLen zero", frame, chunk.CodecZstd, 0, nil},
		{"plainLen above ceiling", frame, chunk.CodecZstd, chunk.MaxChunkCeil + 1, chunk.ErrTooLarge},
		{"plain above ceiling", make([]byte, chunk.MaxChunkCeil+1), chunk.CodecNone, chunk.MaxChunkCeil + 1, chunk.ErrTooLarge},
		{"plainLen negative", frame, chunk.CodecZstd, -1, chunk.ErrTooLarge},
		{"unknown codec", data, chunk.Codec(3), len(data), nil},
		{"unknown codec 255", data, chunk.Codec(255), len(data), nil},
		{"garbage", synth.Random(34, 1000), chunk.CodecZstd, 1000, nil},
		{"magic only", frame[:4], chunk.CodecZstd, len(data), nil},
		{"truncated", frame[:len(frame)-1], chunk.CodecZstd, len(data), nil},
		{"trailing garbage", append(append([]byte{}, frame...), 1, 2, 3, 4, 5, 6, 7, 8), chunk.CodecZstd, len(data), nil},
		{"two frames", append(append([]byte{}, frame...), frame...), chunk.CodecZstd, len(data), nil},
		{"corrupt body", func() []byte { b := append([]byte{}, frame...); b[len(b)/2] ^= 0xff; return b }(), chunk.CodecZstd, len(data), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("keep")
			out, err := chunk.Decompress(append([]byte{}, prefix...), tc.src, tc.codec, tc.plainLen)
			if tc.name == "corrupt body" && err == nil {
				// A flipped byte may still decode; it must then be caught
				// by length or, in the store, by the hash.
				require.Len(t, out, len(prefix)+tc.plainLen)
				return
			}
			require.Error(t, err)
			if tc.is != nil {
				require.ErrorIs(t, err, tc.is)
			}
			require.Equal(t, prefix, out, "on error dst comes back as it was")
		})
	}
}

func s2Block(t testing.TB, data []byte) []byte {
	t.Helper()
	enc, codec := chunk.Compress(nil, data, chunk.LevelS2)
	require.Equal(t, chunk.CodecS2, codec)
	return enc
}

// withS2Header replaces block's plain length header with n: the body is
// left as it was.
func withS2Header(block []byte, n uint64) []byte {
	_, hl := binary.Uvarint(block)
	return append(binary.AppendUvarint(nil, n), block[hl:]...)
}

// TestDecompressS2Rejects feeds S2 blocks that lie about their length, are
// cut short or corrupt: each fails, dst comes back as it was, and nothing
// near what a block claims is allocated.
func TestDecompressS2Rejects(t *testing.T) {
	data := synth.PgbenchRows(100 << 10)
	block := s2Block(t, data)
	for _, tc := range []struct {
		name     string
		src      []byte
		plainLen int
		is       error
	}{
		{"claims more than plainLen", block, len(data) - 1, nil},
		{"claims less than plainLen", block, len(data) + 1, nil},
		{"claims 1 GiB", withS2Header(block, 1<<30), len(data), nil},
		{"claims 4 GiB", withS2Header(block, 1<<32-1), 4096, nil},
		{"header past 32 bits", withS2Header(block, 1<<40), 4096, nil},
		{"body decodes short of its header", withS2Header(block, uint64(len(data)+1)), len(data) + 1, nil},
		{"body decodes past its header", withS2Header(block, uint64(len(data)-1)), len(data) - 1, nil},
		{"truncated", block[:len(block)-1], len(data), nil},
		{"header only", block[:3], len(data), nil},
		{"empty", nil, len(data), nil},
		{"unterminated varint", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 4096, nil},
		{"trailing garbage", append(append([]byte{}, block...), 1, 2, 3), len(data), nil},
		{"zstd frame labelled s2", zstdFrame(t, data), len(data), nil},
		{"plainLen above ceiling", withS2Header(block, chunk.MaxChunkCeil+1), chunk.MaxChunkCeil + 1, chunk.ErrTooLarge},
		{"corrupt body", func() []byte { b := append([]byte{}, block...); b[len(b)/2] ^= 0xff; return b }(), len(data), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("keep")
			var out []byte
			var err error
			alloc := heapAllocated(func() {
				out, err = chunk.Decompress(append([]byte{}, prefix...), tc.src, chunk.CodecS2, tc.plainLen)
			})
			// At most the output buffer the caller asked for, whatever the
			// block claims.
			require.Less(t, alloc, uint64(2*max(tc.plainLen, 0))+1<<20, "allocated %d bytes", alloc)
			if tc.name == "corrupt body" && err == nil {
				// A flipped byte may still decode to the right length; the
				// hash then catches it.
				require.Len(t, out, len(prefix)+tc.plainLen)
				return
			}
			require.Error(t, err)
			if tc.is != nil {
				require.ErrorIs(t, err, tc.is)
			}
			require.Equal(t, prefix, out, "on error dst comes back as it was")
		})
	}
}

// TestDecompressS2ClaimBeforeAlloc: a block of a few bytes claiming the
// largest chunk allocates nothing when the caller expects less.
func TestDecompressS2ClaimBeforeAlloc(t *testing.T) {
	bomb := binary.AppendUvarint(nil, chunk.MaxChunkCeil)
	bomb = append(bomb, 0, 0, 0, 0)
	alloc := heapAllocated(func() {
		_, err := chunk.Decompress(nil, bomb, chunk.CodecS2, 4096)
		require.Error(t, err)
	})
	require.Less(t, alloc, uint64(64<<10), "allocated %d bytes", alloc)
}

func TestDecompressS2AfterPrefix(t *testing.T) {
	data := synth.PgbenchRows(300 << 10)
	block := s2Block(t, data)
	for _, spare := range []int{0, len(data) - 1, len(data), 1 << 20} {
		prefix := bytes.Repeat([]byte("p"), 1000)
		dst := append(make([]byte, 0, len(prefix)+spare), prefix...)
		out, err := chunk.Decompress(dst, block, chunk.CodecS2, len(data))
		require.NoError(t, err)
		require.Len(t, out, len(prefix)+len(data))
		require.True(t, bytes.Equal(prefix, out[:len(prefix)]))
		require.True(t, bytes.Equal(data, out[len(prefix):]))
		if spare >= len(data) {
			require.Equal(t, &dst[:1][0], &out[0], "spare capacity of dst is used")
		}
	}
}

// heapAllocated returns the bytes allocated while f ran.
func heapAllocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestDecompressBomb feeds small frames that expand to 1 GiB: decoding must
// stop near the size the caller expects, not allocate what the frame claims.
func TestDecompressBomb(t *testing.T) {
	const huge = 1 << 30
	for _, tc := range []struct {
		name     string
		src      []byte
		plainLen int
	}{
		{"no content size", rleBomb(huge, -1), 4096},
		{"no content size, max plainLen", rleBomb(huge, -1), chunk.MaxChunkCeil},
		{"content size lies low", rleBomb(huge, 4096), 4096},
		{"content size huge", rleBomb(huge, huge), 4096},
		{"content size huge, short body", rleBomb(4096, huge), 4096},
		{"content size at ceiling", rleBomb(chunk.MaxChunkCeil, chunk.MaxChunkCeil), 4096},
		{"frames summing past ceiling", bytes.Repeat(rleBomb(chunk.MaxChunkCeil/2, chunk.MaxChunkCeil/2), 4), chunk.MaxChunkCeil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Less(t, len(tc.src), 1<<20)
			var err error
			alloc := heapAllocated(func() {
				_, err = chunk.Decompress(nil, tc.src, chunk.CodecZstd, tc.plainLen)
			})
			require.Error(t, err)
			t.Logf("%d bytes of input, plainLen %d: allocated %d KiB: %v", len(tc.src), tc.plainLen, alloc>>10, err)
			// The output buffer, plus one reallocation of it (the block that
			// overflows it is appended before the size check), plus the
			// decoder's working set, which the race detector's pool
			// draining inflates. Far below 1 GiB.
			require.Less(t, alloc, uint64(4*tc.plainLen)+4<<20, "allocated %d bytes", alloc)
		})
	}
}

// TestDecompressAfterLargePrefix guards against the decoder's size limit
// counting bytes already in dst: a chunk appended to a buffer that holds
// other chunks is still one chunk.
func TestDecompressAfterLargePrefix(t *testing.T) {
	data := synth.PgbenchRows(1 << 20)
	frame := zstdFrame(t, data)
	for _, prefixLen := range []int{chunk.MaxChunkCeil - 1000, 2*chunk.MaxChunkCeil + 1} {
		prefix := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz"), prefixLen/36+1)[:prefixLen]
		for _, spare := range []int{0, len(data), 10 << 20} {
			t.Run(fmt.Sprintf("prefix%d/spare%d", prefixLen, spare), func(t *testing.T) {
				dst := append(make([]byte, 0, prefixLen+spare), prefix...)
				out, err := chunk.Decompress(dst, frame, chunk.CodecZstd, len(data))
				require.NoError(t, err)
				require.Len(t, out, prefixLen+len(data))
				require.True(t, bytes.Equal(prefix, out[:prefixLen]))
				require.True(t, bytes.Equal(data, out[prefixLen:]))
			})
		}
	}
}

func TestDecompressEmpty(t *testing.T) {
	out, err := chunk.Decompress(nil, nil, chunk.CodecNone, 0)
	require.NoError(t, err)
	require.Empty(t, out)

	// An encoder may write a frame for empty input; it decodes to nothing.
	e, err := zstd.NewWriter(nil, zstd.WithZeroFrames(true))
	require.NoError(t, err)
	frame := e.EncodeAll(nil, nil)
	require.NotEmpty(t, frame)
	out, err = chunk.Decompress([]byte("p"), frame, chunk.CodecZstd, 0)
	require.NoError(t, err)
	require.Equal(t, []byte("p"), out)
	_, err = chunk.Decompress(nil, frame, chunk.CodecZstd, 1)
	require.Error(t, err)
}

// TestCodecConcurrent shares the package's encoders and decoder between
// goroutines; run it with -race.
func TestCodecConcurrent(t *testing.T) {
	inputs := [][]byte{synth.PgbenchRows(300 << 10), synth.Random(36, 100<<10), synth.PgbenchRows(100), append(synth.Random(37, 50<<10), make([]byte, 50<<10)...)}
	const workers = 8
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			var enc, dec []byte
			for i := range 40 {
				data := inputs[(w+i)%len(inputs)]
				l := allLevels[(w*7+i)%len(allLevels)]
				var codec chunk.Codec
				enc, codec = chunk.Compress(enc[:0], data, l)
				var err error
				dec, err = chunk.Decompress(dec[:0], enc, codec, len(data))
				if err != nil {
					errs[w] = fmt.Errorf("worker %d, round %d, level %s: %w", w, i, l, err)
					return
				}
				if !bytes.Equal(data, dec) {
					errs[w] = fmt.Errorf("worker %d, round %d, level %s: round trip changed the data", w, i, l)
					return
				}
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
}

// FuzzDecompress feeds arbitrary bytes to the zstd decoder with an arbitrary
// expected size: it must not panic, and must return either an error with dst
// unchanged or exactly plainLen more bytes. What decodes must survive
// encode and decode again.
func FuzzDecompress(f *testing.F) {
	data := synth.PgbenchRows(5000)
	frame := zstdFrame(f, data)
	f.Add(frame, len(data))
	f.Add(frame, len(data)-1)
	f.Add(frame[:len(frame)/2], len(data))
	f.Add(zstdFrame(f, bytes.Repeat([]byte("ab"), 64)), 128)
	f.Add(zstdFrame(f, make([]byte, 200)), 200)
	f.Add(rleBomb(1<<20, -1), 4096)
	f.Add(rleBomb(1000, 1000), 1000)
	f.Add(rleBomb(1000, 1<<40), 1000)
	f.Add([]byte{}, 0)
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd}, 0)
	f.Add(synth.Random(62, 100), 100)
	f.Add(frame, chunk.MaxChunkCeil+1)
	f.Add(frame, -1)
	f.Fuzz(func(t *testing.T, src []byte, plainLen int) {
		prefix := []byte("prefix")
		out, err := chunk.Decompress(append([]byte{}, prefix...), src, chunk.CodecZstd, plainLen)
		if err != nil {
			require.Equal(t, prefix, out, "on error dst comes back as it was")
			return
		}
		require.Len(t, out, len(prefix)+plainLen)
		require.Equal(t, prefix, out[:len(prefix)])
		plain := out[len(prefix):]

		enc, codec := chunk.Compress(nil, plain, chunk.LevelFastest)
		again, err := chunk.Decompress(nil, enc, codec, len(plain))
		require.NoError(t, err)
		require.True(t, bytes.Equal(plain, again))
	})
}

// FuzzDecompressS2 is FuzzDecompress for S2 blocks.
func FuzzDecompressS2(f *testing.F) {
	data := synth.PgbenchRows(5000)
	block := s2Block(f, data)
	f.Add(block, len(data))
	f.Add(block, len(data)-1)
	f.Add(block[:len(block)/2], len(data))
	f.Add(withS2Header(block, 1<<30), len(data))
	f.Add(withS2Header(block, uint64(len(data)+1)), len(data)+1)
	f.Add(s2Block(f, make([]byte, 200)), 200)
	f.Add([]byte{}, 0)
	f.Add([]byte{0}, 0)
	f.Add(synth.Random(64, 100), 100)
	f.Fuzz(func(t *testing.T, src []byte, plainLen int) {
		prefix := []byte("prefix")
		out, err := chunk.Decompress(append([]byte{}, prefix...), src, chunk.CodecS2, plainLen)
		if err != nil {
			require.Equal(t, prefix, out, "on error dst comes back as it was")
			return
		}
		require.Len(t, out, len(prefix)+plainLen)
		require.Equal(t, prefix, out[:len(prefix)])
		plain := out[len(prefix):]
		enc, codec := chunk.Compress(nil, plain, chunk.LevelS2)
		again, err := chunk.Decompress(nil, enc, codec, len(plain))
		require.NoError(t, err)
		require.True(t, bytes.Equal(plain, again))
	})
}

// FuzzCompress round-trips arbitrary data at every level, including out of
// range ones.
func FuzzCompress(f *testing.F) {
	f.Add([]byte{}, uint8(0))
	f.Add(synth.PgbenchRows(3000), uint8(1))
	f.Add(synth.Random(63, 3000), uint8(4))
	f.Add(bytes.Repeat([]byte{'a'}, 127), uint8(2))
	f.Add(bytes.Repeat([]byte{'a'}, 128), uint8(200))
	f.Fuzz(func(t *testing.T, data []byte, level uint8) {
		l := chunk.Level(level % 9)
		enc, codec := chunk.Compress([]byte("p"), data, l)
		require.Equal(t, byte('p'), enc[0])
		require.True(t, codec.Valid())
		require.LessOrEqual(t, len(enc)-1, len(data), "compression never grows a chunk")
		dec, err := chunk.Decompress([]byte("q"), enc[1:], codec, len(data))
		require.NoError(t, err)
		require.Equal(t, byte('q'), dec[0])
		require.True(t, bytes.Equal(data, dec[1:]))
	})
}
