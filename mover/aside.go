package mover

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// A destination that a transfer or an export replaces is moved aside, not
// deleted, until its replacement is committed: beside it, hidden, under a
// name that says who moved it (AsideName). The replacement's commit removes
// it (RemoveAside); a failure before the commit puts it back (PutBack).
// The export's --overwrite (orchestrator) and the receiver's
// FlagOverwrite (send --overwrite) both go through these functions, each
// journaling the aside name before MoveAside so that a crash leaves it
// findable.

// asideFS is what the aside functions need of a file system: an *os.Root
// (the receiver, confined to its root) or HostFS (paths of the host).
type asideFS interface {
	Lstat(name string) (fs.FileInfo, error)
	Rename(oldname, newname string) error
	RemoveAll(name string) error
}

var _ asideFS = (*os.Root)(nil)

// HostFS is the host's file system for the aside functions: names are
// paths, resolved as the os package resolves them.
var HostFS asideFS = hostFS{}

type hostFS struct{}

func (hostFS) Lstat(name string) (fs.FileInfo, error) { return os.Lstat(name) }
func (hostFS) Rename(oldname, newname string) error   { return os.Rename(oldname, newname) }
func (hostFS) RemoveAll(name string) error            { return os.RemoveAll(name) }

// AsideName is where dest waits while owner (an export session, a transfer)
// replaces it.
func AsideName(dest, owner string) string {
	name := ".pgporter-replaced-" + owner + "-" + filepath.Base(dest)
	if len(name) > 255 { // NAME_MAX; the owner keeps it distinct
		name = name[:255]
	}
	return filepath.Join(filepath.Dir(dest), name)
}

// MoveAside renames dest to aside. A dest that does not exist is not an
// error (moved is false); an aside name taken already is one: it may hold
// a tree moved aside earlier that nobody put back yet.
func MoveAside(fsys asideFS, dest, aside string) (moved bool, err error) {
	if _, err := fsys.Lstat(dest); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if _, err := fsys.Lstat(aside); err == nil {
		return false, fmt.Errorf("moving the old %s aside: %s exists already", dest, aside)
	}
	if err := fsys.Rename(dest, aside); err != nil {
		return false, fmt.Errorf("moving the old %s aside: %w", dest, err)
	}
	return true, nil
}

// PutBack renames aside to dest if dest is free and aside is there: what a
// failure or a cancel does before the replacement committed. It reports
// whether it moved anything.
func PutBack(fsys asideFS, dest, aside string) (bool, error) {
	if _, err := fsys.Lstat(aside); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if _, err := fsys.Lstat(dest); err == nil {
		return false, nil // the replacement is there: aside is for RemoveAside
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	if err := fsys.Rename(aside, dest); err != nil {
		return false, fmt.Errorf("putting back %s: %w", dest, err)
	}
	return true, nil
}

// RemoveAside deletes what MoveAside moved, once the replacement is
// committed. It does not follow links: RemoveAll removes a link, not what
// it points at.
func RemoveAside(fsys asideFS, aside string) error {
	if err := fsys.RemoveAll(aside); err != nil {
		return fmt.Errorf("removing the replaced %s: %w", aside, err)
	}
	return nil
}
