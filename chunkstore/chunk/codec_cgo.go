//go:build cgo

package chunk

import (
	"slices"
	"sync"

	ddzstd "github.com/DataDog/zstd"
)

// The C zstd library compresses dump-like data about twice as fast as
// klauspost/compress at level 1 with the same ratio (BenchmarkCompressFastest,
// docs/BENCHMARKS.md), and compression is the sender's largest cost. It
// encodes only: decoding stays in Go, where hostile frames meet a memory cap.

// cLevels maps Level to the C library's levels, which the Go encoder's
// levels approximate.
var cLevels = [LevelBest + 1]int{LevelFast4: -4, LevelFast1: -1, LevelFastest: 1, LevelDefault: 3, LevelBetter: 7, LevelBest: 11}

// cctxs pools compression contexts: one is not safe for concurrent use,
// and making one costs allocations a chunk should not pay.
var cctxs = sync.Pool{New: func() any { return ddzstd.NewCtx() }}

// CEncoder reports whether Compress uses the C zstd library.
const CEncoder = true

// zstdEncode appends src, as one zstd frame at level l, to dst; ok is
// false, and dst unchanged, if the library failed (out of memory).
func zstdEncode(dst, src []byte, l Level) (_ []byte, ok bool) {
	n, bound := len(dst), ddzstd.CompressBound(len(src))
	dst = slices.Grow(dst, bound)
	ctx := cctxs.Get().(ddzstd.Ctx)
	defer cctxs.Put(ctx)
	// With room for bound bytes, CompressLevel writes in place at dst[n].
	out, err := ctx.CompressLevel(dst[n:n+bound], src, cLevels[l])
	if err != nil {
		return dst[:n], false
	}
	return dst[:n+len(out)], true
}
