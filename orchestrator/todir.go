package orchestrator

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// MadeDirs is what a session journals about the local --to it creates: To
// and each missing parent, so that cancel removes those it made, and only
// those, if they are still the very directories it made and empty. A
// directory that existed before the export is never recorded.
//
// The missing chain is made under the random name Temp beside its top
// (TempFor, the first missing directory), which is journaled before
// anything is made; the identities of the chain are journaled next; then
// Temp is renamed to TempFor, never over anything. A crash at any point
// leaves no directory of the chain that the record does not name: at most
// an empty chain under Temp, which a retry or a cancel removes.
type MadeDirs struct {
	Temp    string    `json:"temp,omitempty"`
	TempFor string    `json:"temp_for,omitempty"`
	Dirs    []MadeDir `json:"dirs,omitempty"`
}

// MadeDir is a directory a session created, with what identifies it: a
// name alone could be something made there since, by anyone.
type MadeDir struct {
	Path  string `json:"path"`
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Btime int64  `json:"btime_ns,omitempty"` // 0 where the file system keeps none
}

// dirIdentity reads the identity of the directory name in the directory
// dirfd (unix.AT_FDCWD: name is a path), without following a link, and
// checks that it is a directory of this process's user.
func dirIdentity(dirfd int, name string) (MadeDir, error) {
	var st unix.Statx_t
	if err := unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE|unix.STATX_INO|unix.STATX_UID|unix.STATX_BTIME, &st); err != nil {
		return MadeDir{}, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return MadeDir{}, errors.New("it is not a directory")
	}
	if st.Uid != uint32(os.Geteuid()) {
		return MadeDir{}, fmt.Errorf("it is owned by uid %d", st.Uid)
	}
	d := MadeDir{Dev: unix.Mkdev(st.Dev_major, st.Dev_minor), Ino: st.Ino}
	if st.Mask&unix.STATX_BTIME != 0 {
		d.Btime = st.Btime.Sec*1e9 + int64(st.Btime.Nsec)
	}
	return d, nil
}

// planTo is a local --to as an absolute path, the links of the part that
// exists resolved; it makes nothing (makeTo does, once the session that
// records it is journaled).
func planTo(to string) (string, error) {
	abs, err := filepath.Abs(to)
	if err != nil {
		return "", err
	}
	res, err := resolveExisting(abs)
	if err != nil {
		return "", fmt.Errorf("%w: --to %s: %v", ErrBadPlan, abs, err)
	}
	return res, nil
}

// makeTo makes the plan's local To if it is missing, with its missing
// parents, recording them in the session as MadeDirs says. A To that
// exists is left as it is and recorded as nothing.
func (x *sessionRun) makeTo() error {
	to := x.plan().To
	x.mu.Lock()
	var temp, tempFor string
	if m := x.s.Resources.MadeTo; m != nil {
		temp, tempFor = m.Temp, m.TempFor
	}
	x.mu.Unlock()
	if temp != "" {
		// A creation a crash interrupted: nothing, or an empty chain.
		removeTempChain(temp, tempFor, to)
		if err := x.update(func(s *Session) { s.Resources.MadeTo.Temp, s.Resources.MadeTo.TempFor = "", "" }); err != nil {
			return err
		}
	}
	for range 3 {
		fi, err := os.Stat(to)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%w: --to %s is not a directory", ErrBadPlan, to)
			}
			return nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: --to %s: %v", ErrBadPlan, to, err)
		}
		top := to
		for {
			parent := filepath.Dir(top)
			if parent == top {
				return fmt.Errorf("%w: --to %s: no part of it exists", ErrBadPlan, to)
			}
			if _, err := os.Lstat(parent); err == nil {
				break
			} else if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("%w: creating --to %s: %v", ErrBadPlan, to, err)
			}
			top = parent
		}
		made, err := x.makeChain(top, to)
		if err != nil {
			return fmt.Errorf("%w: creating --to %s: %v", ErrBadPlan, to, err)
		}
		if made {
			return nil
		}
		// Made meanwhile by someone else: theirs, not recorded.
	}
	return fmt.Errorf("%w: creating --to %s: it keeps appearing and disappearing", ErrBadPlan, to)
}

// makeChain makes top and the directories from it down to to, all missing,
// as MadeDirs says. It reports false, having made nothing, if top appeared
// meanwhile.
func (x *sessionRun) makeChain(top, to string) (bool, error) {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand: never fails on Linux
	temp := filepath.Join(filepath.Dir(top), toTempPrefix+x.s.ID+"-"+hex.EncodeToString(b[:]))
	if err := x.update(func(s *Session) {
		if s.Resources.MadeTo == nil {
			s.Resources.MadeTo = &MadeDirs{}
		}
		s.Resources.MadeTo.Temp, s.Resources.MadeTo.TempFor = temp, top
	}); err != nil {
		return false, err
	}
	var dirs []MadeDir
	undo := func(err error) (bool, error) {
		removeTempChain(temp, top, to)
		return false, errors.Join(err, x.update(func(s *Session) {
			m := s.Resources.MadeTo
			m.Temp, m.TempFor = "", ""
			m.Dirs = slices.DeleteFunc(m.Dirs, func(d MadeDir) bool { return slices.Contains(dirs, d) })
		}))
	}
	for _, final := range chain(top, to) {
		p := temp + strings.TrimPrefix(final, top)
		if err := os.Mkdir(p, 0o755); err != nil {
			return undo(err)
		}
		d, err := dirIdentity(unix.AT_FDCWD, p)
		if err != nil {
			return undo(fmt.Errorf("%s: %w", p, err))
		}
		d.Path = final
		dirs = append(dirs, d)
	}
	if err := x.update(func(s *Session) {
		m := s.Resources.MadeTo
		m.Dirs = slices.DeleteFunc(m.Dirs, func(d MadeDir) bool {
			return slices.ContainsFunc(dirs, func(n MadeDir) bool { return n.Path == d.Path })
		})
		m.Dirs = append(m.Dirs, dirs...)
	}); err != nil {
		return undo(err)
	}
	// Never over something made meanwhile: rename(2) would replace an
	// empty directory.
	if err := unix.Renameat2(unix.AT_FDCWD, temp, unix.AT_FDCWD, top, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			_, err = undo(nil)
			return false, err
		}
		return undo(err)
	}
	if err := syncDir(filepath.Dir(top)); err != nil {
		return true, err
	}
	return true, x.update(func(s *Session) { s.Resources.MadeTo.Temp, s.Resources.MadeTo.TempFor = "", "" })
}

// toTempPrefix begins the temporary name of a --to being made:
// .pgporter-to-<session>-<16 hex digits>.
const toTempPrefix = ".pgporter-to-"

// chain is top and each directory below it down to to, top first; to is
// top or inside it.
func chain(top, to string) []string {
	out := []string{to}
	for d := to; d != top; {
		d = filepath.Dir(d)
		out = append(out, d)
	}
	slices.Reverse(out)
	return out
}

// removeTempChain removes, deepest first, what makeChain made under temp
// for the chain from tempFor down to to: empty directories only (rmdir
// removes nothing else, and never a link). temp is a name of its own,
// random, so nothing of anyone else's is there.
func removeTempChain(temp, tempFor, to string) {
	if !strings.HasPrefix(filepath.Base(temp), toTempPrefix) || (to != tempFor && !strings.HasPrefix(to, tempFor+"/")) {
		return // not a record makeChain wrote
	}
	c := chain(tempFor, to)
	for i := len(c) - 1; i >= 0; i-- {
		_ = unix.Rmdir(temp + strings.TrimPrefix(c[i], tempFor))
	}
}

// removeMadeTo removes the directories of the session's local To that it
// created (MadeDirs): each one that is still the directory it made and is
// empty, deepest first, and only To or its parents, inside roots if any
// are given. It returns the removed ones; what it keeps, and why, it logs.
func (r *Runner) removeMadeTo(s *Session) []string {
	m := s.Resources.MadeTo
	if m == nil {
		return nil
	}
	to := s.Plan.To
	if m.Temp != "" {
		removeTempChain(m.Temp, m.TempFor, to)
	}
	dirs := slices.Clone(m.Dirs)
	slices.SortFunc(dirs, func(a, b MadeDir) int { return cmp.Compare(len(b.Path), len(a.Path)) })
	var removed []string
	for _, d := range dirs {
		if err := r.removeMadeDir(d, to); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				r.o.Log.Info("left as it is", "session", s.ID, "path", d.Path, "reason", err.Error())
			}
			continue
		}
		r.o.Log.Info("removed a directory the export created", "session", s.ID, "path", d.Path)
		removed = append(removed, d.Path)
	}
	return removed
}

// errNotMade is why removeMadeDir keeps a directory that is not the one
// the session made.
var errNotMade = errors.New("not the directory the export created")

// removeMadeDir removes d if it is to or a parent of to, inside the
// runner's roots if it has any, still the directory d identifies and
// empty. The name is checked and removed relative to its parent, opened
// without following a link, so the directory checked is the one removed.
func (r *Runner) removeMadeDir(d MadeDir, to string) error {
	if d.Path != filepath.Clean(d.Path) || !filepath.IsAbs(d.Path) || (d.Path != to && !strings.HasPrefix(to, d.Path+"/")) {
		return fmt.Errorf("%w: not --to %s or a parent of it", errNotMade, to)
	}
	if len(r.o.Roots) > 0 && !insideRoots(d.Path, r.o.Roots) {
		return fmt.Errorf("%w: not inside one of the mover's roots", errNotMade)
	}
	pfd, err := unix.Open(filepath.Dir(d.Path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	name := filepath.Base(d.Path)
	got, err := dirIdentity(pfd, name)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fs.ErrNotExist
		}
		return fmt.Errorf("%w: %v", errNotMade, err)
	}
	if got.Dev != d.Dev || got.Ino != d.Ino || (d.Btime != 0 && got.Btime != d.Btime) {
		return fmt.Errorf("%w: it was replaced since", errNotMade)
	}
	if err := unix.Unlinkat(pfd, name, unix.AT_REMOVEDIR); err != nil {
		if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			return errors.New("it is not empty")
		}
		return err
	}
	return nil
}

// insideRoots reports whether dir lies strictly inside one of roots (a
// root itself is never the export's to remove).
func insideRoots(dir string, roots []string) bool {
	for _, root := range roots {
		root, err := filepath.Abs(root)
		if err != nil {
			continue
		}
		if res, err := resolveExisting(root); err == nil {
			root = res
		}
		if root == "/" || strings.HasPrefix(dir, root+"/") {
			return true
		}
	}
	return false
}
