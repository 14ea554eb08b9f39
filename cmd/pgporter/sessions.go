package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/orchestrator"
	"github.com/spf13/cobra"
)

// loadSession reads session id from the journal under --home, creating
// nothing.
func loadSession(g *globals, id string) (*orchestrator.Session, error) {
	return orchestrator.ReadJournal(g.home).Get(id)
}

func newRunnerOnly(g *globals) (*orchestrator.Runner, error) {
	return orchestrator.NewRunner(orchestrator.Options{Home: g.home, Log: g.log, Self: selfCommand})
}

func newSessionsCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "sessions [show ID]",
		Short: "List export sessions, or show one",
		Long: `List export sessions, newest first, with their state: planned, checking,
dumping, transferring, cleaning, done, failed or cancelled. 'sessions show ID'
prints every step with its times, bytes and error, and for each delivered
database the BLAKE3 of the pgporter-manifest.json the target committed
('pgporter verify --expect HASH DIR' checks a dump against it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := orchestrator.ReadJournal(g.home).List()
			if err != nil {
				return err
			}
			if asJSON {
				type row struct {
					ID           string    `json:"id"`
					State        string    `json:"state"`
					Created      time.Time `json:"created"`
					Updated      time.Time `json:"updated"`
					RestorePoint string    `json:"restore_point"`
					Databases    []string  `json:"databases"`
					To           string    `json:"to"`
					Error        string    `json:"error,omitempty"`
				}
				out := struct {
					Sessions []row `json:"sessions"`
				}{Sessions: []row{}}
				for _, s := range list {
					out.Sessions = append(out.Sessions, row{s.ID, string(s.State), s.Created, s.Updated, s.Plan.RestorePoint, s.Plan.Databases, s.Plan.To, userText(s.Error)})
				}
				return g.writeJSON(out)
			}
			if len(list) == 0 {
				fmt.Fprintln(g.stdout, "no sessions")
				return nil
			}
			tw := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SESSION\tSTATE\tUPDATED\tDATABASES\tTO\tERROR")
			for _, s := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.State, s.Updated.Local().Format("2006-01-02 15:04:05"), strings.Join(quoteAll(s.Plan.Databases), ","), s.Plan.To, firstLine(userText(s.Error)))
			}
			return tw.Flush()
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one session's steps",
		Args:  oneArg("sessions show", "session ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := loadSession(g, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return g.writeJSON(struct {
					*orchestrator.Session
					Manifests map[string]string `json:"manifests"` // database → BLAKE3 of its committed manifest
				}{s, s.Manifests()})
			}
			printSession(g.stdout, s)
			return nil
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print the session's journal record as one JSON object")
	c.AddCommand(show)
	return c
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

func printSession(w io.Writer, s *orchestrator.Session) {
	fmt.Fprintf(w, "session        %s\nstate          %s\ncreated        %s\nrestore point  %s (repository %s)\ndatabases      %s\nto             %s\n",
		s.ID, s.State, s.Created.Local().Format(time.RFC3339), s.Plan.RestorePoint, s.Plan.Repo, strings.Join(quoteAll(s.Plan.Databases), ", "), s.Plan.To)
	if at := s.Plan.At; at != nil {
		target := "the end of the WAL archive"
		switch {
		case !at.Time.IsZero():
			target = at.Time.UTC().Format(time.RFC3339Nano)
		case at.LSN != "":
			target = "LSN " + at.LSN
		case at.Name != "":
			target = "restore point " + at.Name
		}
		fmt.Fprintf(w, "as of          %s\n", target)
		if s.Reached != nil {
			fmt.Fprintf(w, "reached        %s\n", s.Reached)
		}
	}
	if s.Error != "" {
		fmt.Fprintf(w, "error          %s\n", userText(s.Error))
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nSTEP\tSTATE\tSTARTED\tSECONDS\tBYTES\tWIRE\tDETAIL")
	for _, st := range s.Steps {
		started := ""
		if !st.Started.IsZero() {
			started = st.Started.Local().Format("15:04:05")
		}
		detail := st.Detail
		if st.Error != "" {
			detail = "error: " + firstLine(userText(st.Error))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f\t%s\t%s\t%s\n", st.Name, st.State, started, st.Seconds(), bytesize.Format(st.Bytes), bytesize.Format(st.WireBytes), detail)
	}
	tw.Flush()
	if m := s.Manifests(); len(m) > 0 {
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nDATABASE\tMANIFEST BLAKE3 (pgporter verify --expect)\tDUMP")
		for _, db := range s.Plan.Databases {
			if h, ok := m[db]; ok {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", db, h, s.TargetDir(db))
			}
		}
		tw.Flush()
	}
}
