package main

import "github.com/spf13/cobra"

func newChunkCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "chunk",
		Short: "Inspect the chunk engine (content-defined chunking, BLAKE3, zstd)",
	}
	c.AddCommand(newChunkStatsCmd(g))
	return c
}
