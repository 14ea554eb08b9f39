package chunk

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Codec says how a chunk's bytes are encoded at rest or on the wire.
type Codec uint8

const (
	CodecNone Codec = 0 // plain bytes
	CodecZstd Codec = 1 // one zstd frame
	// CodecS2 is one S2 block (klauspost/compress/s2, block format, not the
	// framed stream): a varint of the plain length, then the compressed
	// body. Peers below protocol 6 do not know it (protocol.KnowsCodec).
	CodecS2 Codec = 2
)

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecZstd:
		return "zstd"
	case CodecS2:
		return "s2"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// Valid reports whether c is a codec this build decodes.
func (c Codec) Valid() bool { return c <= CodecS2 }

// Level is a compression effort, in increasing order of effort. LevelNone
// stores chunks as they are. Levels are process-local: what leaves the
// process (send --json, progress lines, Stats) is the String name, never the
// number, so a level may be inserted where its effort puts it.
type Level int

const (
	LevelNone    Level = iota // no compression
	LevelS2                   // S2 (CodecS2): LZ77 without entropy coding, the fastest encoder
	LevelFast4                // zstd --fast=4 (level -4): no entropy coding of literals
	LevelFast1                // zstd --fast=1 (level -1)
	LevelFastest              // zstd fastest (~level 1)
	LevelDefault              // zstd default (~level 3)
	LevelBetter               // zstd better (~level 7)
	LevelBest                 // zstd best (~level 11)
)

// The --fast levels trade ratio for speed: on issue 16's dump (pgbench
// plus md5 text), chunk by chunk with the C library, level 1 encodes 1.55
// GB/s at 16.5x, --fast=1 1.88 GB/s at 9.3x, --fast=4 2.16 GB/s at 7.2x
// (docs/BENCHMARKS.md). A sender short of CPU on a link with room to spare
// moves more with them. Builds without cgo encode them as LevelFastest: the
// Go encoder has no faster level. S2 goes further: on the mix of issue 16's
// dump it encoded 1.2 to 1.5 times as fast as --fast=4 at 5 % less ratio
// (BenchmarkCompressLevels), but it is another codec, which a peer below
// protocol 6 cannot decode.

func (l Level) String() string {
	switch l {
	case LevelNone:
		return "none"
	case LevelS2:
		return "s2"
	case LevelFast4:
		return "fast4"
	case LevelFast1:
		return "fast1"
	case LevelFastest:
		return "fastest"
	case LevelDefault:
		return "default"
	case LevelBetter:
		return "better"
	case LevelBest:
		return "best"
	}
	return fmt.Sprintf("level(%d)", int(l))
}

// ParseLevel parses the names printed by Level.String.
func ParseLevel(s string) (Level, error) {
	for l := LevelNone; l <= LevelBest; l++ {
		if l.String() == s {
			return l, nil
		}
	}
	return 0, fmt.Errorf("chunkstore: unknown compression level %q (want none, s2, fast4, fast1, fastest, default, better or best)", s)
}

var (
	decoderOnce sync.Once
	decoder     *zstd.Decoder
)

func sharedDecoder() *zstd.Decoder {
	decoderOnce.Do(func() {
		// WithDecodeAllCapLimit makes DecodeAll stop at cap(dst): Decompress
		// hands it room for exactly plainLen bytes.
		d, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(MaxChunkCeil),
			zstd.WithDecoderMaxWindow(MaxChunkCeil), zstd.WithDecoderConcurrency(0), zstd.IgnoreChecksum(true),
			zstd.WithDecodeAllCapLimit(true))
		if err != nil {
			panic(fmt.Sprintf("chunkstore: creating zstd decoder: %v", err))
		}
		decoder = d
	})
	return decoder
}

// Compress appends src, encoded at level l, to dst. LevelS2 encodes one S2
// block (CodecS2); the other levels one zstd frame (CodecZstd). Builds with cgo
// encode zstd with the C zstd library (codec_cgo.go), others with
// klauspost/compress (codec_purego.go): the frames are standard zstd
// either way, and every build decodes them with klauspost/compress, whose
// memory and output limits hold against hostile frames. It returns CodecNone and
// dst+src when compression does not save at least 1/32 of the size: such
// chunks cost decode time for nothing. It is safe for concurrent use.
func Compress(dst, src []byte, l Level) ([]byte, Codec) {
	if l == LevelNone || len(src) < 128 {
		return append(dst, src...), CodecNone
	}
	if l < LevelNone || l > LevelBest {
		l = LevelDefault
	}
	n := len(dst)
	codec := CodecZstd
	var out []byte
	var ok bool
	if l == LevelS2 {
		codec = CodecS2
		out, ok = s2Encode(dst, src)
	} else {
		out, ok = zstdEncode(dst, src, l)
	}
	if !ok || len(out)-n >= len(src)-len(src)/32 {
		return append(out[:n], src...), CodecNone
	}
	return out, codec
}

// s2Encode appends src, as one S2 block, to dst.
func s2Encode(dst, src []byte) (_ []byte, ok bool) {
	bound := s2.MaxEncodedLen(len(src))
	if bound < 0 {
		return dst, false // above 4 GiB: not a chunk
	}
	n := len(dst)
	dst = slices.Grow(dst, bound)
	// With room for bound bytes, Encode writes in place at dst[n].
	out := s2.Encode(dst[n:n+bound], src)
	return dst[:n+len(out)], true
}

// DecodeSlack is the room Decompress wants past a zstd chunk's plain
// length in dst: with less, it grows dst (a copy) first. Callers that
// allocate a buffer for one chunk should make it plainLen+DecodeSlack.
const DecodeSlack = 64

// ErrTooLarge is returned when a chunk's plain size is above MaxChunkCeil or
// above what its record claims.
var ErrTooLarge = errors.New("chunkstore: chunk too large")

// Decompress appends the plain form of src to dst. plainLen is the plain size
// the caller expects; decoding never produces more than that, nor more than
// MaxChunkCeil, whatever src says. It is safe for concurrent use.
func Decompress(dst, src []byte, c Codec, plainLen int) ([]byte, error) {
	if plainLen < 0 || plainLen > MaxChunkCeil {
		return dst, fmt.Errorf("%w: %d bytes", ErrTooLarge, plainLen)
	}
	switch c {
	case CodecNone:
		if len(src) != plainLen {
			return dst, fmt.Errorf("chunkstore: plain chunk is %d bytes, expected %d", len(src), plainLen)
		}
		return append(dst, src...), nil
	case CodecZstd:
		n := len(dst)
		dst = slices.Grow(dst, plainLen+DecodeSlack)[:n+plainLen]
		// Decode into an empty slice whose capacity is plainLen+DecodeSlack:
		// the decoder stops there whatever the frame claims (a few KiB of
		// RLE blocks can claim gigabytes), and does not count what dst
		// already holds against its MaxChunkCeil limit, which made a chunk
		// appended to a buffer of other chunks fail. The slack lets it use
		// its fast copies, which write up to 32 bytes past a match, instead
		// of the bounds-exact ones on a chunk's last block (30% more
		// throughput on pgbench heap pages, none on WAL); a frame that
		// fills the slack fails the length check below.
		out, err := sharedDecoder().DecodeAll(src, dst[n:n:n+plainLen+DecodeSlack])
		if err != nil {
			return dst[:n], fmt.Errorf("chunkstore: zstd: %w", err)
		}
		if len(out) != plainLen {
			return dst[:n], fmt.Errorf("chunkstore: zstd chunk decoded to %d bytes, expected %d", len(out), plainLen)
		}
		if plainLen > 0 && &out[0] != &dst[n] {
			copy(dst[n:], out) // the decoder moved to a buffer of its own
		}
		return dst, nil
	case CodecS2:
		// The block's header is its plain length: a block that claims more
		// (or less) than the caller expects is refused before anything is
		// allocated, and the decoder, given room for exactly plainLen
		// bytes, fails unless the body fills them exactly.
		claimed, err := s2.DecodedLen(src)
		if err != nil {
			return dst, fmt.Errorf("chunkstore: s2: %w", err)
		}
		if claimed != plainLen {
			return dst, fmt.Errorf("chunkstore: s2 chunk claims %d bytes, expected %d", claimed, plainLen)
		}
		n := len(dst)
		dst = slices.Grow(dst, plainLen)[:n+plainLen]
		out, err := s2.Decode(dst[n:n:n+plainLen], src)
		if err != nil {
			return dst[:n], fmt.Errorf("chunkstore: s2: %w", err)
		}
		if len(out) != plainLen {
			return dst[:n], fmt.Errorf("chunkstore: s2 chunk decoded to %d bytes, expected %d", len(out), plainLen)
		}
		if plainLen > 0 && &out[0] != &dst[n] {
			copy(dst[n:], out) // cannot happen: Decode uses dst when it fits
		}
		return dst, nil
	}
	return dst, fmt.Errorf("chunkstore: unknown codec %d", uint8(c))
}
