package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/pgporter/pgporter/orchestrator"
	"github.com/pgporter/pgporter/staging"
	"golang.org/x/term"
)

// credentials say how an export (or its retry) logs in to PostgreSQL.
type credentials struct {
	user         string // --pg-user, or the plan's
	userSet      bool   // given (flag, environment or config file): a service's user does not replace it
	passwordFile string
	port         int // --source-port, to match .pgpass lines
	portSet      bool
	auth         string // the plan's: orchestrator.AuthBackupHBA needs no password
	published    bool   // from a publication, whose own --auth decides: a missing password is only a warning
}

// check refuses an unknown --auth, and a password file with backup-hba.
func (c *credentials) check() error {
	switch c.auth {
	case "", orchestrator.AuthPassword:
	case orchestrator.AuthBackupHBA:
		if c.passwordFile != "" {
			return usagef("--password-file and --auth %s exclude each other: the backup's own pg_hba.conf lets the role in without a password", orchestrator.AuthBackupHBA)
		}
	default:
		return usagef("--auth %q: want %s or %s", c.auth, orchestrator.AuthPassword, orchestrator.AuthBackupHBA)
	}
	return nil
}

// terminal returns the file descriptor to prompt on for a password, and
// whether there is one (stdin is a terminal). Tests replace it.
var terminal = func() (int, bool) {
	fd := int(os.Stdin.Fd())
	return fd, term.IsTerminal(fd)
}

// resolveCredentials finds the password of c.user, in libpq's order:
// --password-file, then the service PGSERVICE names (its user, port and
// database also pick the .pgpass line, and its user replaces the default
// --pg-user), PGPASSWORD, the password file (the service's passfile,
// PGPASSFILE or ~/.pgpass), and last a prompt when stdin is a terminal.
// Without a terminal, a missing password is a usage error here, before
// any session exists: the throwaway instance would refuse the login much
// later. --auth backup-hba needs none and looks for none.
func resolveCredentials(g *globals, c *credentials) (string, error) {
	if err := c.check(); err != nil || c.auth == orchestrator.AuthBackupHBA {
		return "", err
	}
	svc, err := staging.LookupService(nil, "")
	if err != nil {
		return "", err
	}
	o := staging.PasswordOptions{File: c.passwordFile, User: c.user, Port: c.port, Service: svc, Log: g.log}
	if svc.Name != "" {
		s := svc.Settings
		if u := s["user"]; u != "" && !c.userSet {
			c.user, o.User = u, u
		}
		if p, err := strconv.Atoi(s["port"]); err == nil && !c.portSet {
			o.Port = p
		}
		o.Database = s["dbname"]
		g.log.Debug("PostgreSQL service", "service", svc.Name, "file", svc.File)
	}
	pw, source, err := staging.ResolvePassword(o)
	switch {
	case errors.Is(err, staging.ErrNoPassword) && c.published:
		// A publication may trust local logins (publish --auth backup-hba).
		g.log.Warn("no password found for the PostgreSQL user; use --password-file, PGPASSWORD or ~/.pgpass", "user", c.user)
		return "", nil
	case errors.Is(err, staging.ErrNoPassword):
		fd, ok := terminal()
		if !ok {
			return "", usageError{fmt.Errorf("%w; no terminal to ask on. A role the backup's pg_hba.conf trusts locally logs in without one: --auth %s", err, orchestrator.AuthBackupHBA)}
		}
		fmt.Fprintf(g.stderr, "Password for PostgreSQL user %q (as of the backup): ", c.user)
		b, rerr := term.ReadPassword(fd)
		fmt.Fprintln(g.stderr)
		if rerr != nil {
			return "", fmt.Errorf("reading the password from the terminal: %w", rerr)
		}
		if len(b) == 0 {
			return "", usageError{fmt.Errorf("%w for PostgreSQL user %q: the password typed is empty", staging.ErrNoPassword, c.user)}
		}
		return string(b), nil
	case err != nil:
		return "", err
	}
	g.log.Debug("PostgreSQL password", "source", source)
	return pw, nil
}

// newSessionRunner opens the runner of an export, which resolves the
// PostgreSQL password (resolveCredentials) once the plan holds up, before
// the session is journaled; the plan's user becomes a service's if c.user
// was not given.
func newSessionRunner(g *globals, c *credentials) (*orchestrator.Runner, error) {
	return orchestrator.NewRunner(orchestrator.Options{Home: g.home, Log: g.log, Self: selfCommand, Credentials: func(p *orchestrator.Plan) (string, error) {
		pw, err := resolveCredentials(g, c)
		p.PGUser = c.user
		return pw, err
	}})
}

// retryRunner resolves the PostgreSQL password of a journaled session again
// and opens the runner that retries it.
func retryRunner(g *globals, c *credentials) (*orchestrator.Runner, error) {
	pw, err := resolveCredentials(g, c)
	if err != nil {
		return nil, err
	}
	return orchestrator.NewRunner(orchestrator.Options{Home: g.home, Log: g.log, Self: selfCommand, Password: pw})
}
