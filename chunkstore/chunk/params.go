package chunk

import (
	"fmt"
	"math/bits"
)

// AlgorithmGearV1 names the chunking algorithm implemented by Chunker: FastCDC
// with normalized chunking (level 2) over a 64-bit gear hash whose table is
// fixed forever (see gear.go), testing the hash's high bits. Changing the
// table or the mask rule requires a new name.
const AlgorithmGearV1 = "fastcdc-gear-v1"

// Params are the chunking parameters. They are recorded with every manifest
// so that both sides of a transfer, and every later backup, cut the same way.
type Params struct {
	Algorithm string `json:"algorithm"`
	Min       int    `json:"min"` // no cut before Min bytes
	Avg       int    `json:"avg"` // target mean; a power of two
	Max       int    `json:"max"` // forced cut at Max bytes
}

// DefaultParams are tuned for pg_dump directory output: small enough that a
// hundred scattered row updates touch a few MB of chunks, large enough that
// per-chunk overhead stays well under the cost of hashing them.
var DefaultParams = Params{Algorithm: AlgorithmGearV1, Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}

// Limits on Params accepted from manifests and the wire.
const (
	MinChunkFloor = 64
	MaxChunkCeil  = 8 << 20 // also the largest chunk any decoder accepts
)

// WithDefaults fills a zero Params with DefaultParams.
func (p Params) WithDefaults() Params {
	if p == (Params{}) {
		return DefaultParams
	}
	if p.Algorithm == "" {
		p.Algorithm = AlgorithmGearV1
	}
	return p
}

// Validate reports whether p describes a chunker this build implements.
func (p Params) Validate() error {
	p = p.WithDefaults()
	switch {
	case p.Algorithm != AlgorithmGearV1:
		return fmt.Errorf("chunkstore: unknown chunking algorithm %q", p.Algorithm)
	case p.Min < MinChunkFloor:
		return fmt.Errorf("chunkstore: chunk min %d below %d", p.Min, MinChunkFloor)
	case p.Max > MaxChunkCeil:
		return fmt.Errorf("chunkstore: chunk max %d above %d", p.Max, MaxChunkCeil)
	case !(p.Min < p.Avg && p.Avg < p.Max):
		return fmt.Errorf("chunkstore: chunk sizes must satisfy min < avg < max, got %d/%d/%d", p.Min, p.Avg, p.Max)
	case bits.OnesCount(uint(p.Avg)) != 1:
		return fmt.Errorf("chunkstore: chunk avg %d is not a power of two", p.Avg)
	case p.Avg < 256:
		return fmt.Errorf("chunkstore: chunk avg %d below 256", p.Avg)
	}
	return nil
}

// String returns "algorithm min/avg/max".
func (p Params) String() string {
	p = p.WithDefaults()
	return fmt.Sprintf("%s %d/%d/%d", p.Algorithm, p.Min, p.Avg, p.Max)
}
