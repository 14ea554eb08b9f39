package main

import (
	"fmt"
	"os"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/spf13/cobra"
)

type chunkStatsOpts struct {
	params chunk.Params
	level  string
	json   bool
}

func newChunkStatsCmd(g *globals) *cobra.Command {
	o := chunkStatsOpts{params: chunk.DefaultParams}
	c := &cobra.Command{
		Use:   "stats FILE...",
		Short: "Chunk files and report chunk sizes, dedupe and compression ratios, speed",
		Long: `Chunk each FILE with pgporter's content-defined chunker, hash every chunk
with BLAKE3 and compress the unique ones with zstd, then report the chunk count,
the size distribution, the dedupe ratio across all the files, the compression
ratio and the chunk+hash throughput.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runChunkStats(cmd, g, o, args)
		},
	}
	c.Flags().IntVar(&o.params.Min, "min", o.params.Min, "minimum chunk size in bytes")
	c.Flags().IntVar(&o.params.Avg, "avg", o.params.Avg, "average chunk size in bytes (a power of two)")
	c.Flags().IntVar(&o.params.Max, "max", o.params.Max, "maximum chunk size in bytes")
	c.Flags().StringVar(&o.level, "level", "fastest", "zstd level: none, fast4, fast1, fastest, default, better, best")
	c.Flags().BoolVar(&o.json, "json", false, "print one JSON object")
	return c
}

func runChunkStats(cmd *cobra.Command, g *globals, o chunkStatsOpts, files []string) error {
	if err := o.params.Validate(); err != nil {
		return usageError{err}
	}
	lvl, err := chunk.ParseLevel(o.level)
	if err != nil {
		return usageError{err}
	}
	a, err := chunkstore.NewAnalyzer(o.params, lvl)
	if err != nil {
		return err
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		err = a.Add(cmd.Context(), f)
		f.Close()
		if err != nil {
			return fmt.Errorf("chunking %s: %w", name, err)
		}
	}
	st := a.Stats()
	if o.json {
		return g.writeJSON(map[string]any{
			"stats": st, "dedupe_ratio": st.DedupeRatio(), "compress_ratio": st.CompressRatio(), "mb_per_s": st.MBps(),
		})
	}
	_, err = fmt.Fprint(g.stdout, st.String())
	return err
}
