package bench

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/synth"
)

// ChunkEngine is scenario 1: the sender's per-byte work in process, on a
// synthetic mix of pgbench rows and md5 text. Its tools are the stages: the
// content-defined cut alone, the cut plus BLAKE3 of each chunk, and each
// codec level of chunkstore compressing the chunks one by one.
type ChunkEngine struct {
	Size int // bytes of input; 0 means 64 MiB, or 4 MiB with Env.Smoke
}

var _ Scenario = (*ChunkEngine)(nil)

func (*ChunkEngine) Name() string { return "chunk" }

func (*ChunkEngine) Describe() string {
	return "chunk engine in process: CDC cut, BLAKE3, and each codec level chunk by chunk, on pgbench rows and md5 text (3:1)"
}

// ChunkLevels are the codec levels scenario 1 measures, from the sender's
// ladder (chunk.Level).
var ChunkLevels = []chunk.Level{chunk.LevelS2, chunk.LevelFast4, chunk.LevelFast1, chunk.LevelFastest, chunk.LevelDefault}

func (c *ChunkEngine) Prepare(_ context.Context, env Env) (*Setup, error) {
	size := c.Size
	if size <= 0 {
		size = 64 << 20
		if env.Smoke {
			size = 4 << 20
		}
	}
	data := synth.MixedRows(size)
	var chunks [][]byte
	err := chunk.Split(data, chunk.DefaultParams, func(ch chunk.Chunk) error {
		chunks = append(chunks, ch.Data)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cutting the input: %w", err)
	}
	tools := []Tool{
		&engineTool{name: "cdc", run: func() (float64, error) { return 0, cut(data) }},
		&engineTool{name: "cdc+blake3", run: func() (float64, error) { return 0, cutHash(data) }},
	}
	for _, l := range ChunkLevels {
		tools = append(tools, &engineTool{name: l.String(), run: func() (float64, error) {
			return compressAll(chunks, l, len(data)), nil
		}})
	}
	return &Setup{
		Bytes: int64(len(data)),
		Sides: []string{"process"},
		Notes: map[string]string{"chunks": fmt.Sprint(len(chunks)), "params": "chunk.DefaultParams"},
		Tools: tools,
	}, nil
}

// engineTool runs one stage in process. run returns the compression ratio,
// or 0 for a stage that does not compress.
type engineTool struct {
	name string
	run  func() (ratio float64, err error)
}

func (t *engineTool) Name() string { return t.name }

func (t *engineTool) Run(ctx context.Context, _ int) (Measure, error) {
	if err := ctx.Err(); err != nil {
		return Measure{}, err
	}
	cpu0, err := processCPU()
	if err != nil {
		return Measure{}, err
	}
	t0 := time.Now()
	ratio, err := t.run()
	wall := time.Since(t0)
	if err != nil {
		return Measure{}, err
	}
	cpu1, err := processCPU()
	if err != nil {
		return Measure{}, err
	}
	m := Measure{Wall: wall, CPUSender: cpu1 - cpu0}
	if ratio > 0 {
		m.Extra = map[string]float64{"ratio": ratio}
	}
	return m, nil
}

// processCPU returns this process's user+system CPU-seconds so far (the
// garbage collector's included, which a sender pays too).
func processCPU() (float64, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return tvSeconds(ru.Utime) + tvSeconds(ru.Stime), nil
}

func tvSeconds(tv syscall.Timeval) float64 { return float64(tv.Sec) + float64(tv.Usec)/1e6 }

func cut(data []byte) error {
	n := 0
	err := chunk.Split(data, chunk.DefaultParams, func(chunk.Chunk) error { n++; return nil })
	if err == nil && n == 0 {
		err = fmt.Errorf("no chunks from %d bytes", len(data))
	}
	return err
}

func cutHash(data []byte) error {
	var sink chunk.ID
	err := chunk.Split(data, chunk.DefaultParams, func(c chunk.Chunk) error {
		id := chunk.Sum(c.Data)
		sink[0] ^= id[0]
		return nil
	})
	_ = sink
	return err
}

// compressAll compresses every chunk at level l and returns plain/stored.
func compressAll(chunks [][]byte, l chunk.Level, plain int) float64 {
	buf := make([]byte, 0, chunk.DefaultParams.Max+1024)
	var stored int
	for _, c := range chunks {
		buf, _ = chunk.Compress(buf[:0], c, l)
		stored += len(buf)
	}
	return float64(plain) / float64(stored)
}
