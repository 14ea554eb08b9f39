package chunk_test

import (
	"bytes"
	"io"
	"sync"
	"testing"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/synth"
)

const benchSize = 64 << 20

// benchRandom and benchPgbench are built once, on first use: 64 MiB of
// input per benchmark would otherwise dominate -count runs, and tests never
// need them.
var (
	benchRandom  = sync.OnceValue(func() []byte { return synth.Random(1, benchSize) })
	benchPgbench = sync.OnceValue(func() []byte { return synth.PgbenchRows(benchSize) })
	benchMD5     = sync.OnceValue(func() []byte { return synth.MD5Rows(benchSize) })
)

// BenchmarkGearCDC measures cutting alone, with DefaultParams.
func BenchmarkGearCDC(b *testing.B) {
	data := benchRandom()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		err := chunk.Split(data, chunk.DefaultParams, func(chunk.Chunk) error {
			n++
			return nil
		})
		if err != nil || n == 0 {
			b.Fatalf("split: %d chunks, %v", n, err)
		}
	}
}

// BenchmarkGearCDCReader measures the streaming Chunker: cutting plus the
// buffer refills.
func BenchmarkGearCDCReader(b *testing.B) {
	data := benchRandom()
	ch, err := chunk.NewChunker(nil, chunk.DefaultParams)
	if err != nil {
		b.Fatal(err)
	}
	r := bytes.NewReader(data)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(data)
		ch.Reset(r)
		for {
			_, err := ch.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkCDCBlake3 is what a sender does per byte: cut, then hash each chunk.
func BenchmarkCDCBlake3(b *testing.B) {
	data := benchRandom()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	var sink chunk.ID
	for b.Loop() {
		err := chunk.Split(data, chunk.DefaultParams, func(c chunk.Chunk) error {
			id := chunk.Sum(c.Data)
			sink[0] ^= id[0]
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	_ = sink
}

// BenchmarkCompressFastest compresses 64 MiB chunk by chunk at LevelFastest.
func BenchmarkCompressFastest(b *testing.B) {
	benchCompress(b, chunk.LevelFastest)
}

// BenchmarkCompressLevels compresses the same inputs at each level of the
// sender's ladder: S2 (CodecS2), zstd --fast=4, --fast=1, fastest,
// default and better. Its ratios show why the ladder probes before it
// climbs (mover's levelController): on these inputs, chunk by chunk,
// default and better come out larger than fastest.
func BenchmarkCompressLevels(b *testing.B) {
	for l := chunk.LevelS2; l <= chunk.LevelBetter; l++ {
		b.Run(l.String(), func(b *testing.B) { benchCompress(b, l) })
	}
}

type benchInput struct {
	name string
	data []byte
}

// benchInputs are the compression inputs: pgbench rows, md5 text, random
// bytes, and their mix in issue 16's LAN dump's proportions (three parts
// pgbench_accounts to one part md5 text).
func benchInputs() []benchInput {
	pg, md := benchPgbench(), benchMD5()
	mix := make([]byte, 0, benchSize)
	for i := 0; len(mix) < benchSize; i += 1 << 20 {
		mix = append(mix, pg[(3*i)%(benchSize-3<<20):][:3<<20]...)
		mix = append(mix, md[i%(benchSize-1<<20):][:1<<20]...)
	}
	return []benchInput{{"pgbench", pg}, {"md5text", md}, {"random", benchRandom()}, {"mixed", mix[:benchSize]}}
}

func benchChunks(b *testing.B, data []byte) [][]byte {
	var chunks [][]byte
	err := chunk.Split(data, chunk.DefaultParams, func(c chunk.Chunk) error {
		chunks = append(chunks, c.Data)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return chunks
}

// benchCompress compresses each input chunk by chunk at level l.
func benchCompress(b *testing.B, l chunk.Level) {
	for _, bc := range benchInputs() {
		b.Run(bc.name, func(b *testing.B) {
			chunks := benchChunks(b, bc.data)
			buf := make([]byte, 0, chunk.DefaultParams.Max+1024)
			b.SetBytes(int64(len(bc.data)))
			b.ReportAllocs()
			var stored int64
			for b.Loop() {
				stored = 0
				for _, c := range chunks {
					buf, _ = chunk.Compress(buf[:0], c, l)
					stored += int64(len(buf))
				}
			}
			b.ReportMetric(float64(len(bc.data))/float64(stored), "ratio")
		})
	}
}
