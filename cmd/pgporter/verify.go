package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/mover"
	"github.com/spf13/cobra"
)

func newVerifyCmd(g *globals) *cobra.Command {
	var (
		asJSON bool
		b3sum  bool
		expect string
	)
	c := &cobra.Command{
		Use:   "verify DUMP_DIR",
		Short: "Check a received directory against its pgporter-manifest.json",
		Long: `Read DUMP_DIR/pgporter-manifest.json and check that every file it lists is
there with the listed size and hash, and that no other file is present. A
manifest of format 2 holds each file's chunk-list hash: the file is cut again
with the manifest's chunking parameters and its chunks hashed.
With --expect HASH, the manifest itself must have that BLAKE3 (the manifest
hash the target reported when it committed the dump, which 'pgporter
sessions show' prints): a dump whose files and manifest were both altered
fails. With --b3sum, stdout holds one b3sum line (plain BLAKE3, two spaces,
the path relative to DUMP_DIR) per file that verified, for 'b3sum --check'
run in DUMP_DIR; the summary goes to stderr. Exit code 0 means the tree is
exactly what was sent, 7 that it is not (see 'pgporter help exit-codes').`,
		Args: oneArg("verify", "DUMP_DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var o mover.VerifyOptions
			if expect != "" {
				h, err := mover.ParseHash(expect)
				if err != nil {
					return usagef("--expect: %v", err)
				}
				o.Expect = &h
			}
			summary := g.stdout
			if b3sum {
				summary = g.stderr
				o.FileSum = func(path string, sum mover.Hash) {
					fmt.Fprintf(g.stdout, "%s  %s\n", sum, path)
				}
			}
			// Not a directory, none, or one without a manifest: said in the
			// words of restore (they were "open X: not a directory", "statat
			// pgporter-manifest.json: no such file or directory", exit 1).
			if fi, err := os.Stat(args[0]); err == nil && !fi.IsDir() {
				return usagef("DUMP_DIR %s is not a directory", args[0])
			}
			rep, err := mover.VerifyWith(cmd.Context(), args[0], o)
			if errors.Is(err, fs.ErrNotExist) {
				if !dirExists(args[0]) {
					return mark(fmt.Errorf("%s: no such directory", args[0]), errNotFound)
				}
				return fmt.Errorf("%s is not a dump pgporter delivered: it has no %s", args[0], mover.ManifestName)
			}
			if rep != nil {
				for _, p := range rep.Problems {
					fmt.Fprintf(g.stderr, "%s\n", p)
				}
			}
			if err != nil && !errors.Is(err, mover.ErrVerify) && !errors.Is(err, mover.ErrManifestHash) {
				return err
			}
			if err == nil {
				fmt.Fprintf(summary, "%s: ok, %d files, %s verified (manifest %s)\n", args[0], rep.Files, bytesize.Format(rep.Bytes), rep.ManifestHash)
			}
			if asJSON {
				out := map[string]any{"ok": err == nil, "files": rep.Files, "bytes": rep.Bytes, "manifest_blake3": rep.ManifestHash.String(), "problems": rep.Problems}
				if jerr := g.writeJSON(out); jerr != nil { // a failure adds "error" and "code"
					return jerr
				}
			}
			return err
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON report, and nothing else, on stdout")
	c.Flags().BoolVar(&b3sum, "b3sum", false, "print each file's BLAKE3 as b3sum does (reads each file's bytes through a second hash)")
	c.Flags().StringVar(&expect, "expect", "", "the BLAKE3 (64 hex digits) the manifest must have")
	c.MarkFlagsMutuallyExclusive("b3sum", "json") // both would write stdout
	return c
}
