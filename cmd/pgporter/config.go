package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"text/tabwriter"

	"github.com/pgporter/pgporter/internal/config"
	"github.com/spf13/cobra"
)

// applyConfig sets the flags of cmd that the command line left alone from
// their environment variables, else from the configuration file, and keeps
// where each value came from in g.cfg. It runs before anything reads a flag.
func applyConfig(cmd *cobra.Command, g *globals) error {
	root := cmd.Root()
	cf := root.PersistentFlags().Lookup("config")
	env := config.EnvName(root, cf)
	src := config.Setting{Name: cf.Name, Source: config.FromDefault, Env: env}
	required := true
	switch {
	case cf.Changed:
		src.Source, src.Origin = config.FromFlag, "--"+cf.Name
	case os.Getenv(env) != "":
		g.config = os.Getenv(env)
		src.Source, src.Origin = config.FromEnv, env
	default:
		required = false // the default file may be missing
	}
	if abs, err := filepath.Abs(g.config); err == nil {
		g.config = abs
	}
	f, err := config.Load(g.config, required, root)
	if err != nil {
		return usageError{err}
	}
	g.cfg = &config.Resolver{File: f}
	g.cfg.Record(cf, src)
	if _, err := g.cfg.Apply(cmd); err != nil {
		return usageError{err}
	}
	return nil
}

func newConfigCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "config",
		Short: "Show the settings that the configuration file and environment give",
		Long: `Every flag of every command can also be set in the environment or in a
configuration file. The order is: the flag on the command line, then its
environment variable, then the file, then the flag's default.

The file is TOML: --config FILE, else $PGPORTER_CONFIG, else
` + config.DefaultPath + ` if it exists. Its keys are the long flag names,
in a table per command; the flags of every command (home, log-level) are
keys at the top:

  home = "/srv/pgporter"
  log-level = "info"

  [mover.serve]
  listen = ":7448"
  root = ["/srv/dumps", "/srv/more"]
  metrics = "127.0.0.1:9448"

  [export]
  repo = "/srv/pgporter/repo"
  jobs = 4

A key that names no flag is an error, not ignored.

A flag's environment variable is PGPORTER_, the command path and the flag
name, upper case with underscores: PGPORTER_MOVER_SERVE_LISTEN,
PGPORTER_EXPORT_JOBS, and for the flags of every command PGPORTER_HOME and
PGPORTER_LOG_LEVEL. A repeatable flag (--root, --db) takes a comma-separated
list there. An empty variable counts as unset.`,
	}
	c.AddCommand(newConfigShowCmd(g))
	return c
}

// configShowResult is the contract of 'config show --json'.
type configShowResult struct {
	Command    string           `json:"command"`
	ConfigFile string           `json:"config_file"` // the file read, "" if none
	Settings   []config.Setting `json:"settings"`
}

func newConfigShowCmd(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "show [COMMAND...]",
		Short: "Print the effective settings of a command and where each came from",
		Long: `Print each flag of COMMAND (without one, the flags of every command), its
effective value, and where that came from: flag, env (and the variable),
file (and the key) or default. Flags given here (--home, --config) count as
given to COMMAND.

Example:
  pgporter config show mover serve
  pgporter --config ./pgporter.toml config show export --json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runConfigShow(cmd, g, args, asJSON)
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, `print {"command", "config_file", "settings": [{"name", "value", "source", "origin", "env", "key"}]}`)
	return c
}

func runConfigShow(cmd *cobra.Command, g *globals, args []string, asJSON bool) error {
	root := cmd.Root()
	target := root
	if len(args) > 0 {
		t, rest, err := root.Find(args)
		if err != nil || len(rest) > 0 || t == root {
			return usagef("config show: no command 'pgporter %s'; see 'pgporter --help'", strings.Join(args, " "))
		}
		target = t
	}
	settings, err := g.cfg.Apply(target)
	if err != nil {
		return usageError{err}
	}
	for i := range settings {
		settings[i].Value = redactPassword(settings[i].Value)
	}
	res := configShowResult{Command: target.CommandPath(), ConfigFile: g.cfg.File.Path, Settings: settings}
	if asJSON {
		return g.writeJSON(res)
	}
	if res.ConfigFile == "" {
		fmt.Fprintf(g.stderr, "no configuration file (%s does not exist)\n", g.config)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SETTING\tVALUE\tSOURCE\tFROM")
	for _, s := range settings {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.Value, s.Source, s.Origin)
	}
	return tw.Flush()
}

// Passwords in connection strings (backup --from-server, restore
// --connstring): key=value and URI forms.
var (
	passwordKV  = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']+)`)
	passwordURI = regexp.MustCompile(`(://[^:/?#@\s]*:)[^@/?#\s]*@`)
)

// redactPassword hides the password of a connection string in v, so that
// what config show prints can be pasted into a ticket.
func redactPassword(v string) string {
	v = passwordKV.ReplaceAllString(v, "${1}***")
	return passwordURI.ReplaceAllString(v, "${1}***@")
}
