package main

import (
	"fmt"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/orchestrator"
)

func newPublishedCmd(g *globals) *cobra.Command {
	var asJSON, all bool
	c := &cobra.Command{
		Use:   "published",
		Short: "List published instances",
		Long: `List publications, newest first: restore point, address, port, uptime,
size of the copy-on-write layer and state: starting, up, stopping, failed,
or dead when its background process is gone: 'pgporter publish --resume ID'
serves it again on its copy-on-write layer, address and port, 'pgporter
unpublish ID' removes it ('pgporter mover serve' does one or the other when it
starts, as the publication's --on-restart says). Publications made with
'publish --on' are listed as their mover reports them (ON names the mover).
--all includes publications that are gone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// A --home that holds no publications lists none and makes
			// no journal there.
			list, err := orchestrator.ReadJournal(g.home).ListPublications()
			if err != nil {
				return err
			}
			if len(list) > 0 {
				pb, err := orchestrator.NewPublisher(g.home, g.log)
				if err != nil {
					return err
				}
				if list, err = pb.List(all); err != nil {
					return err
				}
				// Publications on other hosts: as their movers report them.
				pb.Refresh(cmd.Context(), list)
			}
			if !all {
				list = slices.DeleteFunc(list, func(p *orchestrator.Publication) bool { return p.State == orchestrator.PubGone })
			}
			now := time.Now()
			uptime := func(p *orchestrator.Publication) time.Duration {
				if p.State != orchestrator.PubUp || p.UpSince.IsZero() {
					return 0
				}
				return now.Sub(p.UpSince).Truncate(time.Second)
			}
			if asJSON {
				type row struct {
					ID            string    `json:"id"`
					State         string    `json:"state"`
					RestorePoint  string    `json:"restore_point"`
					Host          string    `json:"host"`
					Listen        string    `json:"listen"`
					Port          int       `json:"port"`
					UptimeSeconds int64     `json:"uptime_seconds"`
					CowBytes      int64     `json:"cow_bytes"`
					Created       time.Time `json:"created"`
					Error         string    `json:"error,omitempty"`
					On            string    `json:"on,omitempty"`
					OnRestart     string    `json:"on_restart,omitempty"`
					Restarts      int       `json:"restarts,omitempty"`
				}
				out := struct {
					Publications []row `json:"publications"`
				}{Publications: []row{}}
				for _, p := range list {
					out.Publications = append(out.Publications, row{p.ID, string(p.State), p.RestorePoint, p.Host(), p.Listen, p.Port,
						int64(uptime(p).Seconds()), orchestrator.CowBytes(p), p.Created, userText(p.Error), p.On, p.OnRestart, p.Restarts})
				}
				return g.writeJSON(out)
			}
			if len(list) == 0 {
				fmt.Fprintln(g.stdout, "no publications")
				return nil
			}
			tw := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PUBLICATION\tSTATE\tRESTORE POINT\tADDRESS\tUPTIME\tCOW\tON\tERROR")
			for _, p := range list {
				up := "-"
				if d := uptime(p); d > 0 || p.State == orchestrator.PubUp {
					up = d.String()
				}
				on := "-"
				if p.On != "" {
					on = p.On
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s:%d\t%s\t%s\t%s\t%s\n", p.ID, p.State, p.RestorePoint, p.Host(), p.Port, up,
					bytesize.Format(orchestrator.CowBytes(p)), on, firstLine(userText(p.Error)))
			}
			return tw.Flush()
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	c.Flags().BoolVar(&all, "all", false, "include publications that are gone")
	return c
}
