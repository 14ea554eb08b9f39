package main

import (
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/mover"
)

func newMetricsCmd(g *globals) *cobra.Command {
	var repo, textfile string
	c := &cobra.Command{
		Use:   "metrics --repo DIR [--textfile PATH]",
		Short: "Print a repository's health as Prometheus metrics, or write it for node_exporter",
		Long: `Read the health of the repository DIR and print it in Prometheus's text
format: the newest restore point's time, the number of restore points, the
repository's size, the WAL archive (when the last segment was archived, how
far it takes the newest online backup, gaps), and the recorded outcomes of
backup, check, check --read-data, forget, prune and wal-push (the last run,
its success, the last success and failure, the failures counted). The
series are those 'pgporter mover serve --repo DIR --metrics ADDR' serves,
all with the label repo="DIR"; docs/CONFIGURATION.md lists them.

With --textfile PATH (a name ending in .prom) it writes them there instead,
replacing the file atomically, for node_exporter's textfile collector
(--collector.textfile.directory): pgporter-metrics@NAME.timer runs it every
minute. Times are Unix timestamps: alert on time() minus them.

It reads the repository without a lock and creates nothing. A repository it
cannot read gives pgporter_repo_up 0 (written all the same) and the exit code
of the failure (8: not a repository).

Example:
  pgporter metrics --repo /srv/pgporter/repo --textfile /var/lib/prometheus/node-exporter/pgporter-main.prom`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if repo == "" {
				return usagef("metrics needs --repo DIR")
			}
			if textfile != "" && !strings.HasSuffix(textfile, ".prom") {
				return usagef("--textfile %s: node_exporter reads only files named *.prom", textfile)
			}
			col := mover.NewRepoCollector(repo, mover.RepoCollectorOptions{PasswordFile: passwordFileFlag(cmd)})
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(col)
			if textfile != "" {
				if err := prometheus.WriteToTextfile(textfile, reg); err != nil {
					return fmt.Errorf("writing %s: %w", textfile, err)
				}
			} else {
				mfs, err := reg.Gather()
				if err != nil {
					return err
				}
				for _, mf := range mfs {
					if _, err := expfmt.MetricFamilyToText(g.stdout, mf); err != nil {
						return err
					}
				}
			}
			return col.Err()
		},
	}
	c.Flags().StringVar(&repo, "repo", "", "repository: a directory or s3://BUCKET/PREFIX")
	c.Flags().StringVar(&textfile, "textfile", "", "write the metrics to this file (*.prom, replaced atomically) for node_exporter's textfile collector, instead of stdout")
	return c
}
