package chunkstore

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/bytesize"
)

// Stats summarises how a set of streams chunks, dedupes and compresses.
type Stats struct {
	Params       chunk.Params  `json:"params"`
	Files        int           `json:"files"`
	Bytes        int64         `json:"bytes"`  // total plain bytes
	Chunks       int           `json:"chunks"` // total chunks
	UniqueChunks int           `json:"unique_chunks"`
	UniqueBytes  int64         `json:"unique_bytes"`
	StoredBytes  int64         `json:"stored_bytes"` // unique chunks after compression at Level
	Level        string        `json:"level"`
	Sizes        SizeSummary   `json:"sizes"`
	Elapsed      time.Duration `json:"elapsed_ns"` // chunking and hashing only
	sizes        []int
}

// SizeSummary describes a chunk size distribution in bytes.
type SizeSummary struct {
	Min  int `json:"min"`
	P10  int `json:"p10"`
	P50  int `json:"p50"`
	P90  int `json:"p90"`
	Max  int `json:"max"`
	Mean int `json:"mean"`
}

// DedupeRatio is total bytes over unique bytes (1 when nothing repeats).
func (s *Stats) DedupeRatio() float64 { return ratio(s.Bytes, s.UniqueBytes) }

// CompressRatio is unique bytes over stored bytes.
func (s *Stats) CompressRatio() float64 { return ratio(s.UniqueBytes, s.StoredBytes) }

// MBps is the chunk-and-hash throughput in MB/s (10^6 bytes).
func (s *Stats) MBps() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Bytes) / 1e6 / s.Elapsed.Seconds()
}

func ratio(a, b int64) float64 {
	if b == 0 {
		return 1
	}
	return float64(a) / float64(b)
}

// Analyzer accumulates Stats over streams.
type Analyzer struct {
	p     chunk.Params
	level chunk.Level
	seen  map[chunk.ID]struct{}
	st    Stats
	buf   []byte
}

// NewAnalyzer returns an Analyzer cutting with p and compressing unique
// chunks at level.
func NewAnalyzer(p chunk.Params, level chunk.Level) (*Analyzer, error) {
	p = p.WithDefaults()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &Analyzer{p: p, level: level, seen: map[chunk.ID]struct{}{}, st: Stats{Params: p, Level: level.String()}}, nil
}

// Add chunks r (one file) into the totals.
func (a *Analyzer) Add(ctx context.Context, r io.Reader) error {
	ch, err := chunk.NewChunker(r, a.p)
	if err != nil {
		return err
	}
	a.st.Files++
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		t0 := time.Now()
		c, err := ch.Next()
		if err == io.EOF {
			a.st.Elapsed += time.Since(t0)
			return nil
		}
		if err != nil {
			return err
		}
		id := chunk.Sum(c.Data)
		a.st.Elapsed += time.Since(t0)
		a.st.Chunks++
		a.st.Bytes += int64(len(c.Data))
		a.st.sizes = append(a.st.sizes, len(c.Data))
		if _, dup := a.seen[id]; dup {
			continue
		}
		a.seen[id] = struct{}{}
		a.st.UniqueChunks++
		a.st.UniqueBytes += int64(len(c.Data))
		a.buf, _ = chunk.Compress(a.buf[:0], c.Data, a.level)
		a.st.StoredBytes += int64(len(a.buf))
	}
}

// Stats returns the totals so far.
func (a *Analyzer) Stats() Stats {
	st := a.st
	s := slices.Clone(a.st.sizes)
	slices.Sort(s)
	if n := len(s); n > 0 {
		st.Sizes = SizeSummary{Min: s[0], P10: s[n/10], P50: s[n/2], P90: s[n*9/10], Max: s[n-1], Mean: int(st.Bytes / int64(n))}
	}
	st.sizes = nil
	return st
}

// String renders the stats for people.
func (s Stats) String() string {
	return fmt.Sprintf(`params:        %s
files:         %d
bytes:         %d
chunks:        %d (unique %d)
chunk sizes:   min %d  p10 %d  p50 %d  p90 %d  max %d  mean %d
dedupe ratio:  %.3f (unique bytes %d)
compress:      %.3f at %s (stored bytes %d)
chunk+hash:    %s
`, s.Params, s.Files, s.Bytes, s.Chunks, s.UniqueChunks,
		s.Sizes.Min, s.Sizes.P10, s.Sizes.P50, s.Sizes.P90, s.Sizes.Max, s.Sizes.Mean,
		s.DedupeRatio(), s.UniqueBytes, s.CompressRatio(), s.Level, s.StoredBytes, bytesize.Rate(s.Bytes, s.Elapsed.Seconds()))
}
