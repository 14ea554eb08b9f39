package crypt_test

import (
	"fmt"
	"testing"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/internal/synth"
)

var benchSizes = []int{64 << 10, 1 << 20}

func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

// BenchmarkSeal seals incompressible records, the worst case: every plain
// byte is encrypted.
func BenchmarkSeal(b *testing.B) {
	k := crypt.NewMasterKey()
	o := k.ObjectID(chunk.Sum([]byte("x")))
	for _, size := range benchSizes {
		b.Run(sizeName(size), func(b *testing.B) {
			plain := synth.Random(1, size)
			dst := make([]byte, 0, size+crypt.Overhead)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				dst = k.Seal(dst[:0], crypt.KindChunk, string(o[:]), plain)
			}
		})
	}
}

func BenchmarkOpen(b *testing.B) {
	k := crypt.NewMasterKey()
	o := k.ObjectID(chunk.Sum([]byte("x")))
	for _, size := range benchSizes {
		b.Run(sizeName(size), func(b *testing.B) {
			sealed := k.Seal(nil, crypt.KindChunk, string(o[:]), synth.Random(1, size))
			dst := make([]byte, 0, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if dst, err = k.Open(dst[:0], crypt.KindChunk, string(o[:]), sealed); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRecord is what sealing adds to a pack record as chunkstore
// writes and reads one: zstd fastest (the store's default level), against
// zstd fastest then sealing in place; decompressing, against opening in
// place then decompressing. MB/s are of plain bytes. pgbench rows compress
// about 90x, md5 rows 3x, random bytes not at all (stored as they are).
func BenchmarkRecord(b *testing.B) {
	k := crypt.NewMasterKey()
	name := "0123456789abcdef0123456789abcdef"
	data := map[string]func(int) []byte{
		"pgbench": synth.PgbenchRows,
		"md5":     synth.MD5Rows,
		"random":  func(n int) []byte { return synth.Random(2, n) },
	}
	for _, kind := range []string{"pgbench", "md5", "random"} {
		for _, size := range benchSizes {
			plain := data[kind](size)
			buf := make([]byte, 0, crypt.Overhead+size+size/64+64)
			comp, codec := chunk.Compress(nil, plain, chunk.LevelFastest)
			sealed := k.Seal(nil, crypt.KindChunk, name, comp)
			out := make([]byte, 0, size+chunk.DecodeSlack)
			open := make([]byte, len(sealed))
			run := func(op string, fn func(b *testing.B)) {
				b.Run(fmt.Sprintf("%s/%s/%s", kind, sizeName(size), op), func(b *testing.B) {
					b.SetBytes(int64(size))
					b.ReportAllocs()
					fn(b)
					b.ReportMetric(float64(size)/float64(len(comp)), "ratio")
				})
			}
			run("compress", func(b *testing.B) {
				for b.Loop() {
					buf, _ = chunk.Compress(buf[:0], plain, chunk.LevelFastest)
				}
			})
			run("compress+seal", func(b *testing.B) {
				for b.Loop() {
					rec, _ := chunk.Compress(buf[:crypt.HeaderSize], plain, chunk.LevelFastest)
					buf = k.Seal(rec[:0], crypt.KindChunk, name, rec[crypt.HeaderSize:])
				}
			})
			run("decompress", func(b *testing.B) {
				for b.Loop() {
					var err error
					if out, err = chunk.Decompress(out[:0], comp, codec, size); err != nil {
						b.Fatal(err)
					}
				}
			})
			run("open+decompress", func(b *testing.B) {
				for b.Loop() {
					copy(open, sealed) // as read from a pack; OpenInPlace overwrites it
					stored, err := k.OpenInPlace(crypt.KindChunk, name, open)
					if err != nil {
						b.Fatal(err)
					}
					if out, err = chunk.Decompress(out[:0], stored, codec, size); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkObjectID(b *testing.B) {
	k := crypt.NewMasterKey()
	id := chunk.Sum([]byte("x"))
	b.ReportAllocs()
	for b.Loop() {
		id = chunk.ID(k.ObjectID(id))
	}
}
