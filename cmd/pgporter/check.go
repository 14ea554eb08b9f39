package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
)

func newCheckCmd(g *globals) *cobra.Command {
	var (
		repo             string
		readData, asJSON bool
	)
	c := &cobra.Command{
		Use:   "check --repo DIR [--read-data]",
		Short: "Check a repository: its index, packs, restore points and WAL archive",
		Long: `Check the repository DIR without changing it: every index run is whole,
every indexed chunk lies inside an existing pack, every restore point's tree
decodes and names only chunks the repository holds, and so does every
archived WAL file. With --read-data every chunk is also read back,
decompressed and checked against its BLAKE3 (this reads the whole
repository). It runs alongside backups, exports and wal-push.

Exit code 0: nothing wrong; 7: problems, each listed on stderr (or under
"problems" with --json).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if repo == "" {
				return usagef("check needs --repo DIR")
			}
			// A typo must not create a repository.
			if _, err := chunkstore.ListRepo(cmd.Context(), repo); err != nil {
				return err
			}
			r, err := chunkstore.OpenRepo(cmd.Context(), repo, g.log)
			if err != nil {
				return err
			}
			defer r.Close()
			rep, err := r.Check(cmd.Context(), chunkstore.CheckOptions{ReadData: readData})
			if err != nil {
				return err
			}
			for _, p := range rep.Problems {
				fmt.Fprintln(g.stderr, p)
			}
			var verr error
			if len(rep.Problems) > 0 {
				verr = mark(fmt.Errorf("the repository %s has %d problems", repo, len(rep.Problems)), errVerification)
			} else if !asJSON {
				fmt.Fprintf(g.stdout, "%s: ok, %d chunks, %d restore points, %d WAL files checked\n", repo, rep.Chunks, rep.RestorePoints, rep.WALFiles)
			}
			if asJSON {
				if jerr := g.writeJSON(map[string]any{"ok": verr == nil, "report": rep}); jerr != nil {
					return jerr
				}
			}
			return verr
		},
	}
	c.Flags().StringVar(&repo, "repo", "", "repository: a directory or s3://BUCKET/PREFIX")
	c.Flags().BoolVar(&readData, "read-data", false, "read back every chunk and check its hash")
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON report, and nothing else, on stdout")
	recordRuns(g, c, &repo, func() chunkstore.Op {
		if readData {
			return chunkstore.OpCheckReadData
		}
		return chunkstore.OpCheck
	}, chunkstore.RecordRun)
	return c
}
