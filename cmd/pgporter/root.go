package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/internal/buildinfo"
	"github.com/pgporter/pgporter/internal/config"
	"github.com/spf13/cobra"
)

// globals are the flags every command accepts.
type globals struct {
	home     string
	logLevel string
	config   string           // --config
	cfg      *config.Resolver // set by PersistentPreRunE: where each flag's value came from
	stdout   io.Writer
	stderr   io.Writer
	log      *slog.Logger
	output   // --log-format and --json
}

func defaultHome() string {
	if h := os.Getenv("PGPORTER_HOME"); h != "" {
		return h
	}
	return "/var/lib/pgporter"
}

// run executes the CLI with args and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr}
	root := newRootCmd(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if g.log == nil {
		g.log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return g.finish(cmd, args, stdout, err)
}

func newRootCmd(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "pgporter",
		Short: "Export PostgreSQL databases out of backups and move the dumps between hosts",
		Long: `pgporter exports PostgreSQL databases out of backups and moves the dumps
between Linux hosts: fast, safely and resumably.

One binary plays every role: repository, staging and target movers
('pgporter mover serve') and the orchestrator ('pgporter export').`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfig(cmd, g); err != nil {
				return err
			}
			g.startOutput(cmd) // after the configuration, which may set --json
			if err := checkFlags(cmd); err != nil {
				return err
			}
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
				return usagef("--log-level: %v", err)
			}
			log, err := newLogger(g.stderr, lvl, g.logFormat)
			if err != nil {
				return err
			}
			g.log = log
			// Code that logs without a logger handed to it (a listing of a
			// repository on object storage, retrying) logs as the command does.
			slog.SetDefault(log)
			if abs, err := filepath.Abs(g.home); err == nil {
				g.home = abs
			}
			// A --home that is a file failed deep in the journal or the
			// identity, with "not a directory" twice and exit code 1.
			if fi, err := os.Stat(g.home); err == nil && !fi.IsDir() || errors.Is(err, syscall.ENOTDIR) {
				return usagef("--home %s: not a directory (the state directory: identity, trust, journals)", g.home)
			}
			if f := cmd.Flags().Lookup(repoPasswordFileFlag); f != nil && f.Value.String() != "" {
				cmd.SetContext(chunkstore.WithPasswordFile(cmd.Context(), f.Value.String()))
			}
			return startPprof(g.stderr)
		},
	}
	root.PersistentFlags().StringVar(&g.home, "home", defaultHome(), "state directory (identity, trust, journals); default $PGPORTER_HOME or /var/lib/pgporter")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.config, "config", config.DefaultPath, "configuration file (TOML; keys are flag names, a table per command); default $PGPORTER_CONFIG, else this file if it exists")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format on stderr: text or json (one object per line)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.Version = buildinfo.Get().String() // --version
	root.SetVersionTemplate("{{.Version}}\n")

	root.AddCommand(
		newMoverCmd(g),
		newSendCmd(g),
		newVerifyCmd(g),
		newBackupCmd(g),
		newRestorePointsCmd(g),
		newWALPushCmd(g),
		newWALFetchCmd(g),
		newCheckCmd(g),
		newForgetCmd(g),
		newPruneCmd(g),
		newMetricsCmd(g),
		newMountCmd(g),
		newExportCmd(g),
		newSessionsCmd(g),
		newRetryCmd(g),
		newCancelCmd(g),
		newPublishCmd(g),
		newPublishedCmd(g),
		newUnpublishCmd(g),
		newRestoreCmd(g),
		newDemoCmd(g),
		newChunkCmd(g),
		newVersionCmd(g),
		newGenManCmd(g),
		newConfigCmd(g),
		newRepoCmd(g),
		newKeyCmd(g),
	)
	addPasswordFileFlags(root)
	// 'pgporter completion bash|zsh|fish' is cobra's; the values it
	// completes (sessions, restore points, ...) are ours.
	addCompletions(g, root)
	root.AddCommand(newExitCodesTopic())
	strictSubcommands(root)
	return root
}

// stub returns a command of the CLI contract that this build does not
// implement yet: it is listed in --help and fails with exit code 3.
func stub(use, short string, args cobra.PositionalArgs) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short + " (not built yet)", Args: args}
	c.RunE = func(cmd *cobra.Command, _ []string) error { return notBuilt(cmd.CommandPath()[len("pgporter "):]) }
	c.DisableFlagParsing = true
	return c
}

// oneArg accepts exactly one positional argument, described as what (with
// a hint where to find it, if any).
func oneArg(cmdName, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != 1 {
			return usagef("%s takes one %s, got %d arguments", cmdName, what, len(args))
		}
		return nil
	}
}

// repoPasswordFileFlag names the flag of an encrypted repository's
// passphrase file: not --password-file, which export and retry have for
// the PostgreSQL user's password.
const repoPasswordFileFlag = "repo-password-file"

// passwordFileUsage is --repo-password-file's help, on every command with
// --repo.
const passwordFileUsage = "file holding the passphrase of an encrypted repository (default: the file $" + chunkstore.PasswordFileEnv + " names, else $" + crypt.PasswordEnv + "); read only when the repository is encrypted, refused for one that is not"

// passwordFileFlag is c's --repo-password-file, for code that opens a
// repository outside the command's context (a mover's, a scrape's).
func passwordFileFlag(c *cobra.Command) string {
	if f := c.Flags().Lookup(repoPasswordFileFlag); f != nil {
		return f.Value.String()
	}
	return ""
}

// addPasswordFileFlags gives --repo-password-file to every command that takes
// --repo: what it opens may be an encrypted repository
// (docs/design/0010-repository-encryption.md). PersistentPreRunE puts it in
// the command's context, where chunkstore finds it.
func addPasswordFileFlags(c *cobra.Command) {
	if c.Flags().Lookup("repo") != nil && c.Flags().Lookup(repoPasswordFileFlag) == nil {
		c.Flags().String(repoPasswordFileFlag, "", passwordFileUsage)
	}
	for _, sub := range c.Commands() {
		addPasswordFileFlags(sub)
	}
}
