package staging

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/synth"
)

func TestAheadBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		rtt  time.Duration
		rate float64
		max  int64
		want int64
	}{
		{"rtt unknown", 0, 100e6, 8 << 20, 0},
		{"rate unknown", 20 * time.Millisecond, 0, 8 << 20, 0},
		{"loopback", 100 * time.Microsecond, 500e6, 8 << 20, 100_000},
		{"20 ms at 100 MB/s", 20 * time.Millisecond, 100e6, 8 << 20, 4_000_000},
		{"capped", 100 * time.Millisecond, 100e6, 8 << 20, 8 << 20},
		{"huge", time.Hour, math.MaxFloat64, 8 << 20, 8 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, aheadBytes(tc.rtt, tc.rate, tc.max))
		})
	}
}

func TestRateMeter(t *testing.T) {
	var m rateMeter
	t0 := time.Unix(1000, 0)
	m.add(t0, 1<<20)
	m.add(t0.Add(10*time.Millisecond), 1<<20)
	require.Zero(t, m.get(), "no interval of rateWindow yet")
	m.add(t0.Add(20*time.Millisecond), 0)
	require.InDelta(t, 2<<20/0.020, m.get(), 1, "2 MiB in 20 ms")
	m.add(t0.Add(60*time.Millisecond), 1<<20) // 1 MiB in 40 ms: the mean of both
	require.InDelta(t, (2<<20/0.020+1<<20/0.040)/2, m.get(), 1)
}

// latencyReader is a store rtt away, as far as a mount can tell; it records
// the offset of the furthest chunk asked for.
type latencyReader struct {
	ChunkReader
	rtt  time.Duration
	offs map[chunk.ID]int64 // chunk -> its file offset

	mu       sync.Mutex // guards furthest
	furthest int64
}

func (r *latencyReader) Get(ctx context.Context, id chunk.ID, dst []byte) ([]byte, error) {
	r.mu.Lock()
	if off, ok := r.offs[id]; ok && off > r.furthest {
		r.furthest = off
	}
	r.mu.Unlock()
	return r.ChunkReader.Get(ctx, id, dst)
}

// plainReader hides latencyReader's RTT: a local store.
type plainReader struct{ r *latencyReader }

func (r plainReader) Get(ctx context.Context, id chunk.ID, dst []byte) ([]byte, error) {
	return r.r.Get(ctx, id, dst)
}

func (r *latencyReader) RTT() time.Duration { return r.rtt }

// A mount over a store behind a network reads ahead of a sequential reader
// by RTT × rate, up to MaxReadaheadBytes; over a local store, by the fixed
// count of chunks. Guards step 5.2 of docs/design/0005.
func TestReadaheadByLatency(t *testing.T) {
	const size, read, ahead = 32 << 20, 8 << 20, 16 << 20
	data := synth.Random(7, size)
	tree, store := buildTree(t, []testFile{{path: "big", typ: chunkstore.NodeFile, mode: 0o600, data: data}})
	offs := map[chunk.ID]int64{}
	var off int64
	for _, c := range tree[0].Chunks {
		offs[c.ID] = off
		off += int64(c.Len)
	}
	for _, tc := range []struct {
		name    string
		latency bool
		check   func(t *testing.T, furthest int64)
	}{
		{"local store", false, func(t *testing.T, furthest int64) {
			// The read, the kernel's readahead (2 MiB), 3 chunks.
			require.Less(t, furthest, int64(read+(2<<20)+(1<<20)+3*chunk.DefaultParams.Max))
		}},
		{"store 1 s away", true, func(t *testing.T, furthest int64) {
			require.GreaterOrEqual(t, furthest, int64(read+ahead-(1<<20)))
			require.Less(t, furthest, int64(read+(4<<20)+ahead), "MaxReadaheadBytes bounds it")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lr := &latencyReader{ChunkReader: store, rtt: time.Second, offs: offs}
			var chunks ChunkReader = plainReader{lr}
			if tc.latency {
				chunks = lr
			}
			// A clock that moves 5 ms a read: the rate is known from the
			// fourth read on, whatever the machine's speed.
			var clockMu sync.Mutex
			now := time.Unix(1000, 0)
			clock := func() time.Time {
				clockMu.Lock()
				defer clockMu.Unlock()
				now = now.Add(5 * time.Millisecond)
				return now
			}
			m, mnt := mountTree(t, tree, chunks, MountOptions{MaxReadaheadBytes: ahead, clock: clock})
			f, err := os.Open(filepath.Join(mnt, "big"))
			require.NoError(t, err)
			buf := make([]byte, 1<<20)
			for off := int64(0); off < read; off += int64(len(buf)) {
				_, err := f.ReadAt(buf, off)
				require.NoError(t, err)
				require.Equal(t, data[off:off+int64(len(buf))], buf)
			}
			require.NoError(t, f.Close())
			require.NoError(t, m.Unmount()) // waits for the background fetches
			lr.mu.Lock()
			defer lr.mu.Unlock()
			t.Logf("furthest chunk asked for starts at %.1f MiB", float64(lr.furthest)/(1<<20))
			tc.check(t, lr.furthest)
		})
	}
}
