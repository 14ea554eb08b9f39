package staging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// GlobalsFile is the name of the file DumpGlobals writes.
const GlobalsFile = "globals.sql"

// GlobalsOptions say whose globals to dump and where.
type GlobalsOptions struct {
	User     string
	Password string
	Dir      string // GlobalsFile is written here
	// NoRolePasswords leaves out the roles' password hashes
	// (pg_dumpall --no-role-passwords), which lets a user that is not a
	// superuser dump the globals: only superusers can read pg_authid.
	NoRolePasswords bool
}

// GlobalsResult describes a finished globals dump.
type GlobalsResult struct {
	Path   string
	Bytes  int64
	Reused bool // the file was complete already (a retry)
}

// DumpGlobals runs pg_dumpall --globals-only (roles, role memberships and
// settings, tablespaces) against the instance into o.Dir/globals.sql. It
// writes GlobalsFile.partial, syncs it and renames it into place, so that
// globals.sql existing means it is complete; a complete file is not redone.
// pg_dumpall's stderr is kept for the error message.
func (in *Instance) DumpGlobals(ctx context.Context, o GlobalsOptions) (*GlobalsResult, error) {
	if o.Dir == "" {
		return nil, errors.New("staging: a globals dump needs a directory")
	}
	final := filepath.Join(o.Dir, GlobalsFile)
	if fi, err := os.Stat(final); err == nil {
		return &GlobalsResult{Path: final, Bytes: fi.Size(), Reused: true}, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, err
	}
	partial := final + ".partial"
	// pg_dumpall truncates the file it is given and keeps its mode.
	f, err := os.OpenFile(partial, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(partial)
		}
	}()
	args := []string{"--globals-only", "-f", partial, "-d", in.ConnString("postgres", o.User)}
	if o.NoRolePasswords {
		args = append(args, "--no-role-passwords")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(in.BinDir, "pg_dumpall"), args...)
	env, donePass, err := clientEnv(o.Password)
	if err != nil {
		return nil, err
	}
	defer donePass()
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("pg_dumpall --globals-only failed (%v): %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := syncFile(partial); err != nil {
		return nil, fmt.Errorf("syncing the globals dump: %w", err)
	}
	if err := os.Rename(partial, final); err != nil {
		return nil, fmt.Errorf("marking the globals dump complete: %w", err)
	}
	ok = true
	if err := syncFile(o.Dir); err != nil {
		return nil, fmt.Errorf("syncing %s: %w", o.Dir, err)
	}
	fi, err := os.Stat(final)
	if err != nil {
		return nil, err
	}
	return &GlobalsResult{Path: final, Bytes: fi.Size()}, nil
}

// syncFile fsyncs a file or a directory by name.
func syncFile(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	return errors.Join(f.Sync(), f.Close())
}
