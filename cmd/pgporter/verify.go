package main

import (
	"errors"
	"fmt"

	"github.com/pgporter/pgporter/mover"
	"github.com/spf13/cobra"
)

func newVerifyCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "verify DUMP_DIR",
		Short: "Check a received directory against its pgporter-manifest.json",
		Long: `Read DUMP_DIR/pgporter-manifest.json and check that every file it lists is
there with the listed size and BLAKE3 hash, and that no other file is present.
Exit code 0 means the tree is exactly what was sent.`,
		Args: oneArg("verify", "DUMP_DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := mover.Verify(cmd.Context(), args[0])
			if rep != nil {
				for _, p := range rep.Problems {
					fmt.Fprintf(g.stderr, "%s\n", p)
				}
			}
			if err != nil && !errors.Is(err, mover.ErrVerify) {
				return err
			}
			if err == nil {
				fmt.Fprintf(g.stdout, "%s: ok, %d files, %s verified\n", args[0], rep.Files, humanSize(rep.Bytes))
			}
			if asJSON {
				out := map[string]any{"ok": err == nil, "files": rep.Files, "bytes": rep.Bytes, "problems": rep.Problems}
				if jerr := writeJSONLine(g.stdout, out); jerr != nil {
					return jerr
				}
			}
			return err
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON report as the last line")
	return c
}
