package chunk_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/synth"
)

// smallParams cut often, so that tests see many chunks in little data.
var smallParams = chunk.Params{Algorithm: chunk.AlgorithmGearV1, Min: 256, Avg: 1024, Max: 4096}

// splitLens returns the chunk lengths Split cuts data into, checking offsets.
func splitLens(t testing.TB, data []byte, p chunk.Params) []int {
	t.Helper()
	var lens []int
	var off int64
	err := chunk.Split(data, p, func(c chunk.Chunk) error {
		if c.Offset != off {
			return fmt.Errorf("chunk %d at offset %d, want %d", len(lens), c.Offset, off)
		}
		if cap(c.Data) != len(c.Data) {
			return fmt.Errorf("chunk %d has spare capacity: appending to it would overwrite the next", len(lens))
		}
		lens = append(lens, len(c.Data))
		off += int64(len(c.Data))
		return nil
	})
	require.NoError(t, err)
	return lens
}

// chunkerLens returns the chunk lengths a Chunker reading r cuts, checking
// that the chunks, concatenated, are want.
func chunkerLens(t testing.TB, r io.Reader, p chunk.Params, want []byte) []int {
	t.Helper()
	ch, err := chunk.NewChunker(r, p)
	require.NoError(t, err)
	return drain(t, ch, want)
}

func drain(t testing.TB, ch *chunk.Chunker, want []byte) []int {
	t.Helper()
	var lens []int
	var off int64
	for {
		c, err := ch.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		require.Equal(t, off, c.Offset, "chunk %d offset", len(lens))
		require.LessOrEqual(t, off+int64(len(c.Data)), int64(len(want)), "chunk %d runs past the input", len(lens))
		require.True(t, bytes.Equal(want[off:off+int64(len(c.Data))], c.Data), "chunk %d content", len(lens))
		lens = append(lens, len(c.Data))
		off += int64(len(c.Data))
	}
	require.Equal(t, int64(len(want)), off, "chunks do not cover the input")
	_, err := ch.Next()
	require.ErrorIs(t, err, io.EOF, "Next after the end")
	return lens
}

// shortReader returns at most a random 1..max bytes per Read, and sometimes
// (0, nil), which io.Reader allows.
type shortReader struct {
	r   io.Reader
	rnd *rand.Rand
	max int
}

func (s *shortReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n := s.rnd.IntN(s.max + 1)
	if n == 0 {
		return 0, nil
	}
	return s.r.Read(p[:min(n, len(p))])
}

// refGear is gear.go's table recomputed from its description: splitmix64
// seeded with "pgporter".
var refGear = func() (t [256]uint64) {
	x := uint64(0x7067706f72746572)
	for i := range t {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		t[i] = z ^ (z >> 31)
	}
	return t
}()

// refCut is AlgorithmGearV1 written plainly, one byte at a time: the
// specification the optimised cutter must match bit for bit.
func refCut(data []byte, p chunk.Params) int {
	n := len(data)
	if n <= p.Min {
		return n
	}
	n = min(n, p.Max)
	b := bits.TrailingZeros(uint(p.Avg))
	maskS := ^uint64(0) << (64 - (b + 2)) // before Avg: harder to cut
	maskL := ^uint64(0) << (64 - (b - 2)) // after Avg: easier
	var h uint64
	for i := p.Min; i < n; i++ {
		h = h<<1 + refGear[data[i]]
		mask := maskL
		if i < p.Avg {
			mask = maskS
		}
		if h&mask == 0 {
			return i + 1
		}
	}
	return n
}

func refLens(data []byte, p chunk.Params) []int {
	var lens []int
	for len(data) > 0 {
		n := refCut(data, p)
		lens = append(lens, n)
		data = data[n:]
	}
	return lens
}

// testInputs are the kinds of data chunkers get wrong: random, all zeros
// (no cut ever fires), padded rows, and text with short periods.
func testInputs(n int) map[string][]byte {
	text := bytes.Repeat([]byte("COPY public.t (id, v) FROM stdin;\n"), n/34+1)[:n]
	mixed := append(append(synth.Random(7, n/3), make([]byte, n/3)...), synth.PgbenchRows(n-2*(n/3))...)
	return map[string][]byte{
		"random":  synth.Random(1, n),
		"zeros":   make([]byte, n),
		"pgbench": synth.PgbenchRows(n),
		"text":    text,
		"mixed":   mixed,
	}
}

var testParams = map[string]chunk.Params{
	"default": chunk.DefaultParams,
	"small":   smallParams,
	"tiny":    {Algorithm: chunk.AlgorithmGearV1, Min: chunk.MinChunkFloor, Avg: 256, Max: 257},
	"wide":    {Algorithm: chunk.AlgorithmGearV1, Min: 64, Avg: 8192, Max: 1 << 20},
	"odd":     {Algorithm: chunk.AlgorithmGearV1, Min: 1001, Avg: 2048, Max: 3333},
}

// Golden digests, computed with the first implementation of AlgorithmGearV1.
const (
	goldenGearTable      = "7acbb2149eff2877d79177c7575c38c398f47f8f5a28648aa14cc3c6ac12a35a"
	goldenRandomDefault  = "3856ab33430cb18deec1fe7e5e4e5c1e4f33e48edf6045086b96bdc377457b6b"
	goldenPgbenchDefault = "70fd628b0378cd3559d9620cff8b6538d9a04bca613b9ac20bbaf020ed8f9a4f"
	goldenRandomSmall    = "04a71d39bb4ee59e4f1fbba7bdc9f73e814b069fc3f7fcdaeacbe8b20dcab76c"
)

func TestGearTable(t *testing.T) {
	// The table is part of AlgorithmGearV1; this pins it independently of
	// gear.go and of refGear.
	var buf [256 * 8]byte
	for i, v := range refGear {
		binary.LittleEndian.PutUint64(buf[8*i:], v)
	}
	sum := sha256.Sum256(buf[:])
	require.Equal(t, goldenGearTable, hex.EncodeToString(sum[:]))
}

// TestSplitMatchesReference checks the optimised cutter against refCut on
// every kind of input and parameter set, including inputs ending at every
// position around Min, Avg and Max.
func TestSplitMatchesReference(t *testing.T) {
	for pname, p := range testParams {
		for dname, data := range testInputs(1 << 20) {
			if pname == "default" || pname == "wide" {
				data = append(data, testInputs(3 << 20)[dname]...)
			}
			t.Run(pname+"/"+dname, func(t *testing.T) {
				require.Equal(t, refLens(data, p), splitLens(t, data, p))
			})
		}
		t.Run(pname+"/lengths", func(t *testing.T) {
			data := synth.Random(3, 2*p.Max+3)
			for _, edge := range []int{0, 1, p.Min, p.Avg, p.Max, 2 * p.Max} {
				for d := -3; d <= 3; d++ {
					n := edge + d
					if n < 0 || n > len(data) {
						continue
					}
					require.Equal(t, refLens(data[:n], p), splitLens(t, data[:n], p), "length %d", n)
				}
			}
		})
	}
}

// TestSplitGolden pins chunk boundaries: they name chunks, so any change to
// them makes every stored chunk unreachable from new manifests.
func TestSplitGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		p    chunk.Params
		want string // sha256 of the chunk lengths, as uint32 LE
	}{
		{"random/default", synth.Random(1, 8<<20), chunk.DefaultParams, goldenRandomDefault},
		{"pgbench/default", synth.PgbenchRows(8 << 20), chunk.DefaultParams, goldenPgbenchDefault},
		{"random/small", synth.Random(2, 1<<20), smallParams, goldenRandomSmall},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := sha256.New()
			for _, n := range splitLens(t, tc.data, tc.p) {
				_ = binary.Write(h, binary.LittleEndian, uint32(n))
			}
			require.Equal(t, tc.want, hex.EncodeToString(h.Sum(nil)))
		})
	}
}

func TestSplitZeroParamsAreDefault(t *testing.T) {
	data := synth.Random(4, 2<<20)
	require.Equal(t, splitLens(t, data, chunk.DefaultParams), splitLens(t, data, chunk.Params{}))
	noAlg := chunk.DefaultParams
	noAlg.Algorithm = ""
	require.Equal(t, splitLens(t, data, chunk.DefaultParams), splitLens(t, data, noAlg))
}

func TestChunkerDeterministic(t *testing.T) {
	for _, p := range []chunk.Params{chunk.DefaultParams, smallParams} {
		// Over the Chunker's 1 MiB buffer, so that it refills mid-chunk.
		for dname, data := range testInputs(1<<20 + 300<<10 + 7) {
			t.Run(fmt.Sprintf("%d/%s", p.Avg, dname), func(t *testing.T) {
				want := splitLens(t, data, p)
				require.Equal(t, want, splitLens(t, data, p), "Split twice")
				readers := map[string]func() io.Reader{
					"bytes":   func() io.Reader { return bytes.NewReader(data) },
					"onebyte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(data)) },
					"half":    func() io.Reader { return iotest.HalfReader(bytes.NewReader(data)) },
					"dataerr": func() io.Reader { return iotest.DataErrReader(bytes.NewReader(data)) },
					"short": func() io.Reader {
						return &shortReader{r: bytes.NewReader(data), rnd: rand.New(rand.NewPCG(1, 2)), max: 3 * p.Max / 2}
					},
					"tiny": func() io.Reader {
						return &shortReader{r: bytes.NewReader(data), rnd: rand.New(rand.NewPCG(3, 4)), max: 7}
					},
				}
				for rname, r := range readers {
					require.Equal(t, want, chunkerLens(t, r(), p, data), "reader %s", rname)
				}
			})
		}
	}
}

func TestChunkerReset(t *testing.T) {
	a, b := synth.Random(5, 3<<20), synth.PgbenchRows(2<<20)
	ch, err := chunk.NewChunker(bytes.NewReader(a), smallParams)
	require.NoError(t, err)
	// Stop half way through a, then reuse the Chunker for b and for a.
	for range 10 {
		_, err := ch.Next()
		require.NoError(t, err)
	}
	ch.Reset(bytes.NewReader(b))
	require.Equal(t, splitLens(t, b, smallParams), drain(t, ch, b))
	ch.Reset(iotest.HalfReader(bytes.NewReader(a)))
	require.Equal(t, splitLens(t, a, smallParams), drain(t, ch, a))
	ch.Reset(bytes.NewReader(nil))
	require.Empty(t, drain(t, ch, nil))
}

func TestChunkBounds(t *testing.T) {
	for pname, p := range testParams {
		for dname, data := range testInputs(2 << 20) {
			t.Run(pname+"/"+dname, func(t *testing.T) {
				var got []byte
				var lens []int
				require.NoError(t, chunk.Split(data, p, func(c chunk.Chunk) error {
					got = append(got, c.Data...)
					lens = append(lens, len(c.Data))
					return nil
				}))
				require.True(t, bytes.Equal(data, got), "chunks do not concatenate to the input")
				for i, n := range lens {
					require.LessOrEqual(t, n, p.Max, "chunk %d of %d", i, len(lens))
					if i < len(lens)-1 {
						require.GreaterOrEqual(t, n, p.Min, "chunk %d of %d", i, len(lens))
					} else {
						require.Positive(t, n, "last chunk")
					}
				}
			})
		}
	}
}

func TestChunkerEmpty(t *testing.T) {
	require.NoError(t, chunk.Split(nil, chunk.DefaultParams, func(chunk.Chunk) error {
		return errors.New("chunk from empty input")
	}))
	require.NoError(t, chunk.Split([]byte{}, smallParams, func(chunk.Chunk) error {
		return errors.New("chunk from empty input")
	}))
	require.Empty(t, chunkerLens(t, bytes.NewReader(nil), chunk.DefaultParams, nil))
	require.Empty(t, chunkerLens(t, iotest.DataErrReader(bytes.NewReader(nil)), smallParams, nil))
}

func TestChunkerShortInput(t *testing.T) {
	// Anything up to Min is one chunk, and so is anything a cut never fires in.
	for _, n := range []int{1, 63, smallParams.Min, smallParams.Min + 1} {
		data := synth.Random(uint64(n), n)
		lens := splitLens(t, data, smallParams)
		if n <= smallParams.Min {
			require.Equal(t, []int{n}, lens)
		}
		require.Equal(t, lens, chunkerLens(t, bytes.NewReader(data), smallParams, data))
	}
	require.Equal(t, []int{4096, 4096, 1808}, splitLens(t, make([]byte, 10000), smallParams))
}

func TestChunkerReadError(t *testing.T) {
	boom := errors.New("boom")
	data := synth.Random(6, 5<<20)
	ch, err := chunk.NewChunker(io.MultiReader(bytes.NewReader(data), iotest.ErrReader(boom)), chunk.DefaultParams)
	require.NoError(t, err)
	var n int
	for {
		c, err := ch.Next()
		if err != nil {
			require.ErrorIs(t, err, boom)
			break
		}
		n += len(c.Data)
	}
	require.Less(t, n, len(data), "chunks past the error would be cut without their right context")
}

func TestChunkerInvalidParams(t *testing.T) {
	bad := chunk.Params{Algorithm: "rabin", Min: 1024, Avg: 4096, Max: 16384}
	_, err := chunk.NewChunker(bytes.NewReader(nil), bad)
	require.Error(t, err)
	err = chunk.Split([]byte("x"), bad, func(chunk.Chunk) error { return nil })
	require.Error(t, err)
}

func TestSplitStopsOnError(t *testing.T) {
	stop := errors.New("stop")
	calls := 0
	err := chunk.Split(synth.Random(8, 1<<20), smallParams, func(chunk.Chunk) error {
		calls++
		if calls == 3 {
			return stop
		}
		return nil
	})
	require.ErrorIs(t, err, stop)
	require.Equal(t, 3, calls)
}

// chunkIDs returns the multiset of chunk IDs of data.
func chunkIDs(t testing.TB, data []byte, p chunk.Params) map[chunk.ID]int {
	t.Helper()
	ids := map[chunk.ID]int{}
	require.NoError(t, chunk.Split(data, p, func(c chunk.Chunk) error {
		ids[chunk.Sum(c.Data)]++
		return nil
	}))
	return ids
}

// onlyIn counts the chunks of a (with multiplicity) that b does not have.
func onlyIn(a, b map[chunk.ID]int) int {
	n := 0
	for id, c := range a {
		n += max(0, c-b[id])
	}
	return n
}

// TestChunkerInsertionLocality is the point of content-defined chunking: an
// edit in the middle of a file changes the chunks around it and no others.
//
// After an edit the new cuts fall back in step with the old ones with
// probability about 1/2 per chunk (normalized chunking cuts at the first
// candidate past Avg, and two chains offset by d agree only if no candidate
// lies in between), so a few lost chunks are usual and ten are rare.
func TestChunkerInsertionLocality(t *testing.T) {
	for _, tc := range []struct {
		p     chunk.Params
		seeds uint64
	}{
		{smallParams, 8},
		{chunk.DefaultParams, 2}, // 8 MiB each: slow under -race
	} {
		p := tc.p
		t.Run(fmt.Sprintf("avg%d", p.Avg), func(t *testing.T) {
			size := 128 * p.Avg
			var lost []int
			for seed := uint64(1); seed <= tc.seeds; seed++ {
				base := synth.Random(seed, size)
				oldIDs := chunkIDs(t, base, p)
				rnd := rand.New(rand.NewPCG(seed, 99))
				for _, ins := range []int{1, 3, 64, p.Min, p.Avg + 17, 3 * p.Max} {
					at := size/4 + rnd.IntN(size/2)
					edited := slices.Concat(base[:at], synth.Random(seed+1000, ins), base[at:])
					newIDs := chunkIDs(t, edited, p)
					gone, added := onlyIn(oldIDs, newIDs), onlyIn(newIDs, oldIDs)
					require.LessOrEqual(t, gone, 12, "seed %d, %d bytes inserted at %d: old chunks lost", seed, ins, at)
					// The inserted bytes themselves make at most ins/Min+1 chunks.
					require.LessOrEqual(t, added, 12+ins/p.Min, "seed %d, %d bytes inserted at %d: new chunks", seed, ins, at)
					lost = append(lost, gone)
				}
			}
			mean := float64(0)
			for _, n := range lost {
				mean += float64(n) / float64(len(lost))
			}
			t.Logf("old chunks lost per insertion: %v (mean %.2f of %d)", lost, mean, size/p.Avg)
			require.Less(t, mean, 3.0, "mean old chunks lost per insertion")
		})
	}
}

func meanChunk(t testing.TB, data []byte, p chunk.Params) (mean float64, atMax float64) {
	t.Helper()
	lens := splitLens(t, data, p)
	full := 0
	for _, n := range lens[:len(lens)-1] {
		if n == p.Max {
			full++
		}
	}
	return float64(len(data)) / float64(len(lens)), float64(full) / float64(len(lens))
}

// TestChunkerMeanSize guards against a mask rule that never fires on real
// data: testing the low bits of a left-shifted gear hash sees only the last
// few bytes, which in pgbench's space padding never vary, so nearly every
// chunk was cut at Max.
func TestChunkerMeanSize(t *testing.T) {
	for _, p := range []chunk.Params{chunk.DefaultParams, smallParams, testParams["wide"]} {
		for _, tc := range []struct {
			name string
			data []byte
		}{
			{"random", synth.Random(11, 256*p.Avg)},
			{"pgbench", synth.PgbenchRows(256 * p.Avg)},
		} {
			t.Run(fmt.Sprintf("%s/avg%d", tc.name, p.Avg), func(t *testing.T) {
				mean, atMax := meanChunk(t, tc.data, p)
				t.Logf("mean %.0f (avg %d), %.1f%% at max", mean, p.Avg, 100*atMax)
				require.GreaterOrEqual(t, mean, float64(p.Avg)/2, "mean chunk size")
				require.LessOrEqual(t, mean, float64(p.Avg)*2, "mean chunk size")
				require.Less(t, atMax, 0.05, "fraction of chunks cut at Max")
			})
		}
	}
}

// TestChunkerConcurrent runs independent Chunkers at once: they share only
// the gear table, which must stay read-only.
func TestChunkerConcurrent(t *testing.T) {
	data := synth.Random(12, 2<<20)
	want := splitLens(t, data, smallParams)
	var wg sync.WaitGroup
	got := make([][]int, 4)
	for i := range got {
		wg.Go(func() {
			ch, err := chunk.NewChunker(bytes.NewReader(data), smallParams)
			if err != nil {
				return
			}
			for {
				c, err := ch.Next()
				if err != nil {
					return
				}
				got[i] = append(got[i], len(c.Data))
			}
		})
	}
	wg.Wait()
	for i := range got {
		require.Equal(t, want, got[i], "chunker %d", i)
	}
}

// FuzzChunker checks, for arbitrary data and small valid Params, that chunks
// concatenate to the input, respect Min and Max, match the reference cutter,
// and come out the same from Split and from a Chunker reading in arbitrary
// pieces.
func FuzzChunker(f *testing.F) {
	f.Add([]byte{}, uint16(0), uint16(0), uint16(0), uint64(0))
	f.Add([]byte("x"), uint16(1), uint16(2), uint16(3), uint64(4))
	f.Add(synth.Random(51, 10000), uint16(100), uint16(0), uint16(500), uint64(1))
	f.Add(synth.Random(52, 20000), uint16(900), uint16(2), uint16(5000), uint64(77))
	f.Add(make([]byte, 5000), uint16(0), uint16(1), uint16(0), uint64(3))
	f.Add(synth.PgbenchRows(8000), uint16(200), uint16(1), uint16(1000), uint64(9))
	f.Add(bytes.Repeat([]byte("ab"), 3000), uint16(7), uint16(3), uint16(7), uint64(12345))
	f.Fuzz(func(t *testing.T, data []byte, minK, avgK, maxK uint16, readSeed uint64) {
		avg := 256 << (avgK % 4)
		p := chunk.Params{
			Algorithm: chunk.AlgorithmGearV1,
			Min:       chunk.MinChunkFloor + int(minK)%(avg-chunk.MinChunkFloor),
			Avg:       avg,
			Max:       avg + 1 + int(maxK)%(3*avg),
		}
		require.NoError(t, p.Validate())

		var got []byte
		var lens []int
		require.NoError(t, chunk.Split(data, p, func(c chunk.Chunk) error {
			require.Equal(t, int64(len(got)), c.Offset)
			got = append(got, c.Data...)
			lens = append(lens, len(c.Data))
			return nil
		}))
		require.True(t, bytes.Equal(data, got), "chunks do not concatenate to the input")
		for i, n := range lens {
			require.LessOrEqual(t, n, p.Max)
			require.Positive(t, n)
			if i < len(lens)-1 {
				require.GreaterOrEqual(t, n, p.Min)
			}
		}
		require.Equal(t, refLens(data, p), lens, "differs from the reference cutter")

		r := &shortReader{r: bytes.NewReader(data), rnd: rand.New(rand.NewPCG(readSeed, 0)), max: 1 + int(readSeed%uint64(2*p.Max))}
		require.Equal(t, lens, chunkerLens(t, r, p, data), "Chunker differs from Split")
	})
}

// TestChunkerSetAlloc checks that a Chunker reading into buffers it is given
// cuts as it does with its own, that every chunk it returned stays intact
// while later ones are cut, across files (Reset), and that a buffer too small
// is refused.
func TestChunkerSetAlloc(t *testing.T) {
	for _, p := range []chunk.Params{chunk.DefaultParams, smallParams} {
		a, b := synth.Random(7, 5<<20+123), synth.PgbenchRows(3<<20)
		ch, err := chunk.NewChunker(nil, p)
		require.NoError(t, err)
		allocs := 0
		ch.SetAlloc(func() []byte {
			allocs++
			return make([]byte, chunk.MinAllocSize(p))
		})
		type kept struct {
			data []byte
			want []byte
		}
		var all []kept
		for _, in := range [][]byte{a, b} {
			ch.Reset(iotest.HalfReader(bytes.NewReader(in)))
			var lens []int
			for {
				before, will := allocs, ch.WillAlloc()
				c, err := ch.Next()
				require.Equal(t, will, allocs == before+1, "WillAlloc said %v", will)
				if err == io.EOF {
					break
				}
				require.NoError(t, err)
				lens = append(lens, len(c.Data))
				all = append(all, kept{c.Data, in[c.Offset : c.Offset+int64(len(c.Data))]})
			}
			require.Equal(t, splitLens(t, in, p), lens)
		}
		for i, k := range all {
			require.True(t, bytes.Equal(k.want, k.data), "chunk %d overwritten", i)
		}
		require.Greater(t, allocs, 2)

		// Small streams share a buffer: a hundred of 1 KiB take one.
		before := allocs
		var small []kept
		for i := range 100 {
			in := synth.Random(uint64(100+i), 1<<10)
			ch.Reset(bytes.NewReader(in))
			for {
				c, err := ch.Next()
				if err == io.EOF {
					break
				}
				require.NoError(t, err)
				small = append(small, kept{c.Data, in[c.Offset : c.Offset+int64(len(c.Data))]})
			}
		}
		require.LessOrEqual(t, allocs-before, 1)
		for i, k := range small {
			require.True(t, bytes.Equal(k.want, k.data), "small chunk %d overwritten", i)
		}

		ch.SetAlloc(func() []byte { return make([]byte, chunk.MinAllocSize(p)-1) })
		ch.Reset(bytes.NewReader(a))
		_, err = ch.Next()
		require.ErrorContains(t, err, "buffer of")
	}
}
