package main

import (
	"context"
	"errors"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgporter/pgporter/chunkstore"
)

// recordRuns makes c record the outcome of each of its runs in the
// repository *repo, for monitoring ('pgporter metrics',
// docs/design/0009-monitoring.md). op names the operation of a run, ""
// for one not to record (a dry run); record is chunkstore.RecordRun, or
// chunkstore.RecordRecovery for wal-push, which records failures only and
// the first success after one. A usage mistake is not a run; a directory
// that is not a repository has nowhere to record; a failure to record is
// logged and never fails the command.
func recordRuns(g *globals, c *cobra.Command, repo *string, op func() chunkstore.Op, record func(context.Context, string, chunkstore.Run) error) {
	runE := c.RunE
	c.RunE = func(cmd *cobra.Command, args []string) error {
		start := time.Now()
		err := runE(cmd, args)
		kind := op()
		if _, usage := errors.AsType[usageError](err); usage || kind == "" || *repo == "" {
			return err
		}
		run := chunkstore.Run{Op: kind, Start: start, End: time.Now()}
		switch {
		case errors.Is(err, context.Canceled):
			run.Err = errors.New("interrupted")
		case err != nil:
			run.Err = errors.New(userMessage(err))
		}
		// Recorded even when the command was interrupted; bounded by the
		// store's own retries.
		if rerr := record(context.WithoutCancel(cmd.Context()), *repo, run); rerr != nil && !errors.Is(rerr, chunkstore.ErrNotRepo) {
			g.log.Warn("recording the outcome in the repository", "op", string(kind), "err", rerr)
		}
		return err
	}
}

// always returns an op func for commands that are always one operation.
func always(op chunkstore.Op) func() chunkstore.Op { return func() chunkstore.Op { return op } }

// unlessDry returns an op func for commands with --dry-run, which records
// nothing.
func unlessDry(dryRun *bool, op chunkstore.Op) func() chunkstore.Op {
	return func() chunkstore.Op {
		if *dryRun {
			return ""
		}
		return op
	}
}
