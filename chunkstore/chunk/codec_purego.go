//go:build !cgo

package chunk

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// CEncoder reports whether Compress uses the C zstd library.
const CEncoder = false

var (
	encodersMu sync.Mutex // guards encoders
	encoders   [LevelBest + 1]*zstd.Encoder
)

func encoder(l Level) *zstd.Encoder {
	encodersMu.Lock()
	defer encodersMu.Unlock()
	if encoders[l] == nil {
		zl := map[Level]zstd.EncoderLevel{
			LevelFast4: zstd.SpeedFastest, LevelFast1: zstd.SpeedFastest,
			LevelFastest: zstd.SpeedFastest, LevelDefault: zstd.SpeedDefault,
			LevelBetter: zstd.SpeedBetterCompression, LevelBest: zstd.SpeedBestCompression,
		}[l]
		// Chunks are at most a few MiB: a window beyond that buys nothing and
		// costs memory per concurrent encoder. No CRC: BLAKE3 covers content.
		e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zl), zstd.WithWindowSize(MaxChunkCeil),
			zstd.WithEncoderCRC(false), zstd.WithZeroFrames(true), zstd.WithLowerEncoderMem(true))
		if err != nil {
			panic(fmt.Sprintf("chunkstore: creating zstd encoder: %v", err)) // options are constant
		}
		encoders[l] = e
	}
	return encoders[l]
}

// zstdEncode appends src, as one zstd frame at level l, to dst.
func zstdEncode(dst, src []byte, l Level) ([]byte, bool) {
	return encoder(l).EncodeAll(src, dst), true
}
