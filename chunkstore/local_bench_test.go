package chunkstore_test

import (
	"context"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/chunkstore/storetest"
	"github.com/pgporter/pgporter/internal/s3test"
)

// benchCorpusSize is large enough that a run crosses the default FlushBytes
// once the data is compressed only a little, and that per-store setup is
// small beside it.
const benchCorpusSize = 64 << 20

var benchCorpus = sync.OnceValues(func() ([][]byte, []chunk.ID) {
	// pg_dump -Fd output of pgbench: mostly pgbench_accounts COPY rows
	// ("aid\tbid\t0\t" + 84 blanks), some varied rows (see storetest.Text).
	r := rand.New(rand.NewPCG(42, 42))
	return splitCorpus(append([]byte("COPY public.pgbench_accounts (aid, bid, abalance, filler) FROM stdin;\n"),
		storetest.Text(r, benchCorpusSize)...))
})

// splitCorpus cuts data into chunks as a backup does, with their IDs.
func splitCorpus(data []byte) ([][]byte, []chunk.ID) {
	var chunks [][]byte
	var ids []chunk.ID
	err := chunk.Split(data, chunk.DefaultParams, func(c chunk.Chunk) error {
		chunks = append(chunks, c.Data)
		ids = append(ids, chunk.Sum(c.Data))
		return nil
	})
	if err != nil {
		panic(err)
	}
	return chunks, ids
}

func corpusBytes(chunks [][]byte) int64 {
	var n int64
	for _, c := range chunks {
		n += int64(len(c))
	}
	return n
}

// BenchmarkLocalPut measures Put (hash check, zstd fastest, pack append)
// plus the final Flush into an empty store. Run with -cpu 1 for the
// one-core figure.
func BenchmarkLocalPut(b *testing.B) {
	chunks, ids := benchCorpus()
	b.SetBytes(corpusBytes(chunks))
	b.ReportAllocs()
	var stored int64
	for b.Loop() {
		b.StopTimer()
		dir, err := os.MkdirTemp(b.TempDir(), "put")
		require.NoError(b, err)
		l, err := chunkstore.OpenLocal(dir, chunkstore.LocalOptions{Level: chunk.LevelFastest})
		require.NoError(b, err)
		b.StartTimer()
		putFlush(b, l, chunks, ids)
		b.StopTimer()
		stored = 0
		require.NoError(b, l.Iterate(b.Context(), func(_ chunk.ID, info chunkstore.Info) error {
			stored += int64(info.StoredLen)
			return nil
		}))
		require.NoError(b, l.Close())
		require.NoError(b, os.RemoveAll(dir))
		b.StartTimer()
	}
	b.ReportMetric(float64(corpusBytes(chunks))/float64(stored), "compress-ratio")
	b.ReportMetric(float64(len(chunks)), "chunks/op")
}

// putFlush puts every chunk into l, then flushes: what the Put benchmarks
// time.
func putFlush(b *testing.B, l *chunkstore.Local, chunks [][]byte, ids []chunk.ID) {
	for i, c := range chunks {
		if err := l.Put(b.Context(), ids[i], c); err != nil {
			b.Fatal(err)
		}
	}
	require.NoError(b, l.Flush(b.Context()))
}

// BenchmarkLocalGet measures Get (read, zstd decode, BLAKE3 check) of every
// chunk of a flushed store, served from the page cache.
func BenchmarkLocalGet(b *testing.B) {
	chunks, ids := benchCorpus()
	benchGet(b, chunkstore.LocalOptions{}, chunks, ids)
}

// benchGet times Get of every chunk of a store opened with opts that holds
// them, flushed.
func benchGet(b *testing.B, opts chunkstore.LocalOptions, chunks [][]byte, ids []chunk.ID) {
	l, err := chunkstore.OpenLocal(b.TempDir(), opts)
	require.NoError(b, err)
	defer l.Close()
	putFlush(b, l, chunks, ids)
	b.SetBytes(corpusBytes(chunks))
	b.ReportAllocs()
	buf := make([]byte, 0, chunk.DefaultParams.Max)
	for b.Loop() {
		for _, id := range ids {
			if buf, err = l.Get(b.Context(), id, buf[:0]); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkLocalLookup measures Has of chunks held and not held in a store
// of 400k chunks flushed every 1 MiB (so indexed in many runs, or in a
// pebble LSM for builds before runs), the dedupe lookups of a backup.
func BenchmarkLocalLookup(b *testing.B) {
	const n = 400_000
	l, err := chunkstore.OpenLocal(b.TempDir(), chunkstore.LocalOptions{FlushBytes: 1 << 20, NoCompression: true})
	require.NoError(b, err)
	defer l.Close()
	held := make([]chunk.ID, n)
	var buf [16]byte
	for i := range held {
		buf[0], buf[1], buf[2] = byte(i), byte(i>>8), byte(i>>16)
		held[i] = chunk.Sum(buf[:])
		require.NoError(b, l.Put(b.Context(), held[i], buf[:]))
	}
	require.NoError(b, l.Flush(b.Context()))
	for _, tc := range []struct {
		name string
		ids  func(i int) chunk.ID
		want bool
	}{
		{"hit", func(i int) chunk.ID { return held[i%n] }, true},
		{"miss", func(i int) chunk.ID { return chunk.Sum([]byte{byte(i), byte(i >> 8), byte(i >> 16), byte(i >> 24), 1}) }, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				ok, err := l.Has(b.Context(), tc.ids(i))
				if err != nil || ok != tc.want {
					b.Fatalf("Has: %v %v", ok, err)
				}
				i++
			}
		})
	}
}

// BenchmarkRemotePut is BenchmarkLocalPut into a store in a directory and
// into one on a real S3 server on loopback (SeaweedFS), in the same run:
// the ingest of a backup to object storage against the local repository's
// (issue 21's target: at least 0.8x).
//
//	go test -run '^$' -bench RemotePut -benchtime 5x ./chunkstore/
func BenchmarkRemotePut(b *testing.B) {
	chunks, ids := benchCorpus()
	srv := s3test.Start(b)
	for _, tc := range []struct {
		name string
		open func(b *testing.B) chunkstore.LocalOptions
	}{
		{"dir", func(*testing.B) chunkstore.LocalOptions { return chunkstore.LocalOptions{} }},
		{"s3", func(b *testing.B) chunkstore.LocalOptions {
			s, err := objstore.NewS3(srv.Client(b, srv.Endpoint), srv.NewBucket(b), "repo", objstore.S3Options{})
			require.NoError(b, err)
			return chunkstore.LocalOptions{Remote: objstore.WithRetry(s, objstore.RetryPolicy{})}
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(corpusBytes(chunks))
			for b.Loop() {
				b.StopTimer()
				opts := tc.open(b)
				opts.Level = chunk.LevelFastest
				l, err := chunkstore.OpenLocal(b.TempDir(), opts)
				require.NoError(b, err)
				b.StartTimer()
				putFlush(b, l, chunks, ids)
				b.StopTimer()
				require.NoError(b, l.Close())
				b.StartTimer()
			}
		})
	}
}

// latencyBackend delays each ranged read by d: a bucket across a network,
// reached from loopback. Only reads: the store is filled at full speed.
type latencyBackend struct {
	objstore.Backend
	d time.Duration
}

func (l latencyBackend) GetRange(ctx context.Context, name string, off, n int64, dst []byte) ([]byte, error) {
	t := time.NewTimer(l.d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return dst, ctx.Err()
	}
	return l.Backend.GetRange(ctx, name, off, n, dst)
}

// BenchmarkRemoteVerifyLatency reads a store on a real S3 server through
// a link of 10 ms per request, as check --read-data does (every record,
// pack by pack), with the block read-ahead and without: a reader that
// reads a pack in order has the next block's request in flight while it
// works on this one.
//
//	go test -run '^$' -bench RemoteVerifyLatency -benchtime 3x ./chunkstore/
func BenchmarkRemoteVerifyLatency(b *testing.B) {
	// Incompressible, so that its 64 MiB are stored as 32 blocks: the
	// requests, not the CPU, are what is measured.
	r := rand.New(rand.NewPCG(5, 6))
	var chunks [][]byte
	var ids []chunk.ID
	for range 1024 {
		c := storetest.RandomBytes(r, 64<<10)
		chunks, ids = append(chunks, c), append(ids, chunk.Sum(c))
	}
	srv := s3test.Start(b)
	s, err := objstore.NewS3(srv.Client(b, srv.Endpoint), srv.NewBucket(b), "repo", objstore.S3Options{})
	require.NoError(b, err)
	w, err := chunkstore.OpenLocal(b.TempDir(), chunkstore.LocalOptions{Remote: s, Level: chunk.LevelFastest})
	require.NoError(b, err)
	putFlush(b, w, chunks, ids)
	require.NoError(b, w.Close())
	for _, ahead := range []bool{true, false} {
		name := "read-ahead"
		if !ahead {
			name = "none"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(corpusBytes(chunks))
			for b.Loop() {
				b.StopTimer()
				// A cold host: a cache of its own, no disk tier.
				l, err := chunkstore.OpenLocal(b.TempDir(), chunkstore.LocalOptions{Remote: latencyBackend{s, 10 * time.Millisecond}, DiskCacheBytes: -1})
				require.NoError(b, err)
				chunkstore.SetReadAhead(l, ahead)
				b.StartTimer()
				st, err := l.Verify(b.Context(), func(id chunk.ID, err error) { b.Errorf("%s: %v", id, err) })
				require.NoError(b, err)
				b.StopTimer()
				require.Equal(b, len(ids), st.Chunks)
				require.NoError(b, l.Close())
				b.StartTimer()
			}
		})
	}
}
