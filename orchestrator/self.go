package orchestrator

import (
	"fmt"
	"os"
	"strings"
)

// ExitWALMissing is the exit code of 'pgporter wal-fetch' for a file the
// archive lacks (the CLI's not-found code).
const ExitWALMissing = 8

// self is Options.Self, or this process's executable.
func (r *Runner) self() (string, error) {
	if r.o.Self != "" {
		return r.o.Self, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding pgporter's executable for the instance's restore_command: %w", err)
	}
	return shellQuote(exe), nil
}

// shellQuote quotes s as one word for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
