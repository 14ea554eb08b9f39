package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/synth"
)

// ChunkEngine is scenario 1: the sender's per-byte work in process, on a
// synthetic mix of pgbench rows and md5 text. Its tools are the stages: the
// content-defined cut alone, the cut plus BLAKE3 of each chunk, and each
// codec level of chunkstore compressing the unique chunks one by one. With
// Dump it is chunk-dump, the same stages on a real pg_dump -Fd -Z0, file
// by file as pgporter send cuts it (scripts/bench-pgdump's figures).
type ChunkEngine struct {
	Size int // bytes of input; 0 means 64 MiB, or 4 MiB with Env.Smoke
	// Dump makes the input a dump directory: Data, or, when Data is "",
	// one that Prepare makes as the LAN scenario does (MakeDump: pgbench
	// -s 20 plus the docs table; with Env.Smoke pgbench -s 1 and 10,000
	// docs rows).
	Dump bool
	Data string
}

var _ Scenario = (*ChunkEngine)(nil)

func (c *ChunkEngine) Name() string {
	if c.Dump {
		return "chunk-dump"
	}
	return "chunk"
}

func (c *ChunkEngine) Describe() string {
	if c.Dump {
		return "the chunk engine's stages on a pg_dump -Fd -Z0 of pgbench and md5/jsonb/words rows, file by file; the chunk sizes in the notes"
	}
	return "chunk engine in process: CDC cut, BLAKE3, and each codec level chunk by chunk, on pgbench rows and md5 text (3:1)"
}

// standalone: "--scenario chunk" chooses the synthetic input alone;
// chunk-dump needs PostgreSQL and a minute to make its dump.
func (c *ChunkEngine) standalone() bool { return c.Dump }

// ChunkLevels are the codec levels scenario 1 measures, from the sender's
// ladder (chunk.Level).
var ChunkLevels = []chunk.Level{chunk.LevelS2, chunk.LevelFast4, chunk.LevelFast1, chunk.LevelFastest, chunk.LevelDefault}

func (c *ChunkEngine) Prepare(ctx context.Context, env Env) (*Setup, error) {
	files, from, err := c.input(ctx, env)
	if err != nil {
		return nil, err
	}
	var size int64
	var sizes []int
	var unique [][]byte // the first chunk of each ID, which a sender compresses
	var uniqueBytes int
	seen := map[chunk.ID]bool{}
	for _, data := range files {
		size += int64(len(data))
		err := chunk.Split(data, chunk.DefaultParams, func(ch chunk.Chunk) error {
			sizes = append(sizes, len(ch.Data))
			if id := chunk.Sum(ch.Data); !seen[id] {
				seen[id] = true
				unique = append(unique, ch.Data)
				uniqueBytes += len(ch.Data)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("cutting the input: %w", err)
		}
	}
	tools := []Tool{
		&engineTool{name: "cdc", run: func() (float64, error) { return 0, eachFile(files, cut) }},
		&engineTool{name: "cdc+blake3", run: func() (float64, error) { return 0, eachFile(files, cutHash) }},
	}
	for _, l := range ChunkLevels {
		tools = append(tools, &engineTool{name: l.String(), run: func() (float64, error) {
			return compressAll(unique, l, uniqueBytes), nil
		}})
	}
	notes := map[string]string{
		"chunks":      fmt.Sprintf("%d, %d unique (%.1f MB), which the levels compress", len(sizes), len(unique), float64(uniqueBytes)/1e6),
		"chunk sizes": describeSizes(sizes),
		"params":      "chunk.DefaultParams",
	}
	if from != "" {
		notes["data"] = from
	}
	return &Setup{
		Bytes: size,
		Sides: []string{"process"},
		Notes: notes,
		Tools: tools,
	}, nil
}

// input returns the files to cut and, for a dump, what it is.
func (c *ChunkEngine) input(ctx context.Context, env Env) (files [][]byte, from string, err error) {
	if !c.Dump {
		size := c.Size
		if size <= 0 {
			size = 64 << 20
			if env.Smoke {
				size = 4 << 20
			}
		}
		return [][]byte{synth.MixedRows(size)}, "", nil
	}
	dir, from := c.Data, c.Data
	if dir == "" {
		o := DumpOptions{Dir: filepath.Join(env.Dir, "dump"), Scale: 20}
		if env.Smoke {
			o.Scale, o.Docs = 1, 10_000
		}
		docs := o.Docs
		if docs == 0 {
			docs = 600_000
		}
		from = fmt.Sprintf("pg_dump -Fd -Z0 of pgbench -s %d plus %d rows of md5 text, jsonb and words", o.Scale, docs)
		env.Logf("chunk-dump: making the dump (%s)", from)
		if err := MakeDump(ctx, o); err != nil {
			return nil, "", fmt.Errorf("making the dump: %w", err)
		}
		dir = o.Dir
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, "", fmt.Errorf("reading the dump: %w", err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, "", fmt.Errorf("reading the dump: %w", err)
		}
		if len(b) > 0 { // an empty file has no chunk to cut
			files = append(files, b)
		}
	}
	if len(files) == 0 {
		return nil, "", fmt.Errorf("no files in %s", dir)
	}
	return files, fmt.Sprintf("%s, %d files", from, len(files)), nil
}

// describeSizes gives the distribution of chunk sizes in bytes, as
// 'pgporter chunk stats' does: minimum, median, 90th percentile (nearest
// rank) and maximum. A file's last chunk may be as small as the file.
func describeSizes(sizes []int) string {
	if len(sizes) == 0 {
		return "none"
	}
	s := slices.Clone(sizes)
	slices.Sort(s)
	p90 := s[(len(s)*9+9)/10-1]
	return fmt.Sprintf("min %d B, median %d, p90 %d, max %d", s[0], s[len(s)/2], p90, s[len(s)-1])
}

// eachFile runs stage on every file, as a sender cuts each file apart.
func eachFile(files [][]byte, stage func([]byte) error) error {
	for _, f := range files {
		if err := stage(f); err != nil {
			return err
		}
	}
	return nil
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

// compressAll compresses every chunk at level l and returns plain/stored,
// plain being the chunks' bytes.
func compressAll(chunks [][]byte, l chunk.Level, plain int) float64 {
	buf := make([]byte, 0, chunk.DefaultParams.Max+1024)
	var stored int
	for _, c := range chunks {
		buf, _ = chunk.Compress(buf[:0], c, l)
		stored += len(buf)
	}
	return float64(plain) / float64(stored)
}
