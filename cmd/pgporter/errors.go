package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
)

// Exit codes. Operators' scripts depend on them.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitNotBuilt    = 3
	exitInterrupted = 130
)

// usageError marks a mistake in how the command was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// errNotBuilt is returned by commands of the CLI contract that this build does
// not implement yet.
var errNotBuilt = errors.New("not built yet in this version of pgporter")

func notBuilt(name string) error { return fmt.Errorf("%s: %w", name, errNotBuilt) }

// exitCode maps an error to the process exit code and prints the one line a
// user reads. This is the only place that decides either.
func exitCode(err error, stderr io.Writer, log *slog.Logger) int {
	if err == nil {
		return exitOK
	}
	var ue usageError
	switch {
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "pgporter: interrupted")
		return exitInterrupted
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "pgporter: %v\nRun 'pgporter --help' for usage.\n", err)
		return exitUsage
	case errors.Is(err, errNotBuilt):
		fmt.Fprintf(stderr, "pgporter: %v\n", err)
		return exitNotBuilt
	}
	fmt.Fprintf(stderr, "pgporter: %v\n", err)
	log.Debug("error detail", "err", fmt.Sprintf("%+v", err))
	return exitFailure
}
