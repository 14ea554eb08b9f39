package staging

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrMountInUse is matched by the error of CleanStaleMount and Mount when a
// FUSE filesystem whose server still answers is mounted at the mountpoint:
// another mount is running there, and detaching it would pull the data
// directory from under its PostgreSQL.
var ErrMountInUse = errors.New("staging: mountpoint is in use by a running FUSE mount")

// maxStacked bounds how many FUSE mounts stacked on one mountpoint
// CleanStaleMount detaches.
const maxStacked = 16

// CleanStaleMount detaches the dead FUSE mounts at mountpoint: those left by a
// mount process that crashed or was killed, which answer every access with
// ENOTCONN ("transport endpoint is not connected") until detached. It reports
// whether it detached any. A mountpoint without a FUSE mount on top is left
// alone (cleaned is false, err nil), and one whose FUSE server still answers
// gives an error matching ErrMountInUse.
//
// A FUSE server that is alive but hung (stopped, say) makes the check block
// like any other access to that mount would.
func CleanStaleMount(mountpoint string) (cleaned bool, err error) {
	dir, err := mountPath(mountpoint)
	if err != nil {
		return false, err
	}
	for range maxStacked {
		fstype, ok, err := topMount(dir)
		if err != nil || !ok || !isFUSE(fstype) {
			return cleaned, err
		}
		// statfs always reaches the server; stat may be answered from the
		// kernel's attribute cache for a second after the server died.
		var st syscall.Statfs_t
		err = syscall.Statfs(dir, &st)
		if err == nil {
			return cleaned, fmt.Errorf("%w: %s (%s)", ErrMountInUse, dir, fstype)
		}
		if !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) {
			return cleaned, fmt.Errorf("staging: checking mount %s: %w", dir, err)
		}
		if err := detach(dir); err != nil {
			return cleaned, fmt.Errorf("staging: detaching stale mount %s: %w", dir, err)
		}
		cleaned = true
	}
	return cleaned, fmt.Errorf("staging: more than %d stale mounts stacked on %s", maxStacked, dir)
}

// mountPath returns mountpoint as /proc/self/mountinfo spells it: absolute,
// with symlinks in its parent resolved. The mountpoint itself is not
// resolved, since a dead mount fails every stat.
func mountPath(mountpoint string) (string, error) {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return "", fmt.Errorf("staging: mountpoint %s: %w", mountpoint, err)
	}
	parent, base := filepath.Dir(abs), filepath.Base(abs)
	if abs == "/" {
		return abs, nil
	}
	if p, err := filepath.EvalSymlinks(parent); err == nil {
		parent = p
	}
	return filepath.Join(parent, base), nil
}

// topMount returns the filesystem type of the last mount at dir (the one on
// top, which accesses reach), and whether there is one.
func topMount(dir string) (fstype string, ok bool, err error) {
	ms, err := mountsAt(dir)
	if err != nil || len(ms) == 0 {
		return "", false, err
	}
	return ms[len(ms)-1].fstype, true, nil
}

func isFUSE(fstype string) bool {
	return fstype == "fuse" || fstype == "fuseblk" || strings.HasPrefix(fstype, "fuse.") || strings.HasPrefix(fstype, "fuseblk.")
}

// detach lazily unmounts dir: directly when privileged, else through
// fusermount, which may unmount the caller's own FUSE mounts.
func detach(dir string) error {
	err := syscall.Unmount(dir, syscall.MNT_DETACH)
	if err == nil || !errors.Is(err, syscall.EPERM) {
		return err
	}
	for _, bin := range []string{"fusermount3", "fusermount"} {
		path, lerr := exec.LookPath(bin)
		if lerr != nil {
			continue
		}
		var stderr bytes.Buffer
		cmd := exec.Command(path, "-u", "-z", dir)
		cmd.Stderr = &stderr
		if rerr := cmd.Run(); rerr != nil {
			return fmt.Errorf("%s: %w: %s", bin, rerr, strings.TrimSpace(stderr.String()))
		}
		return nil
	}
	return err
}

// MountUser is a process that keeps a mount busy.
type MountUser struct {
	PID     int
	Command string // the process's comm, as ps shows it
}

// Users lists the processes whose working directory, root or open files lie
// inside dir, which is why an unmount fails with EBUSY. Processes it may not
// inspect are left out, so the list can be incomplete.
func Users(dir string) []MountUser {
	dir, err := mountPath(dir)
	if err != nil {
		return nil
	}
	inside := func(link string) bool {
		t, err := os.Readlink(link)
		return err == nil && (t == dir || strings.HasPrefix(t, dir+"/"))
	}
	procs, _ := os.ReadDir("/proc")
	var users []MountUser
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		base := filepath.Join("/proc", p.Name())
		busy := inside(filepath.Join(base, "cwd")) || inside(filepath.Join(base, "root"))
		if !busy {
			fds, _ := os.ReadDir(filepath.Join(base, "fd"))
			for _, fd := range fds {
				if inside(filepath.Join(base, "fd", fd.Name())) {
					busy = true
					break
				}
			}
		}
		if busy {
			comm, _ := os.ReadFile(filepath.Join(base, "comm"))
			users = append(users, MountUser{PID: pid, Command: strings.TrimSpace(string(comm))})
		}
	}
	return users
}
