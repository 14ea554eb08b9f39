package orchestrator

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A publication's writes go to a kernel overlayfs whose upper layer lives on
// disk under its CoW directory, over the FUSE mount of the restore point
// (the lower layer, which nothing writes to). The FUSE mount's own
// copy-on-write layer keeps its state in the memory of the process serving
// it and cannot be reopened; the overlay's upper layer can: when the serve
// process dies, a new one mounts the restore point again, puts the same
// upper layer over it, and PostgreSQL finds every write it had made durable
// (crash recovery replays the rest of its WAL).

// Lower is where the restore point is mounted (FUSE), under the overlay.
func (p *Publication) Lower() string { return filepath.Join(p.BaseDir, "lower") }

// UpperDir is the overlay's upper layer: every file the instance changed.
func (p *Publication) UpperDir() string { return filepath.Join(p.CowDir, "upper") }

func (p *Publication) workDir() string { return filepath.Join(p.CowDir, "work") }

// fuseCowDir is the FUSE mount's own copy-on-write layer, empty in practice
// (the overlay never writes to its lower layer), made anew for each mount.
func (p *Publication) fuseCowDir() string { return filepath.Join(p.CowDir, "fuse") }

// mountOverlay puts the publication's upper layer (created on first use,
// kept as it is after that) over the restore point mounted at Lower, at
// Mountpoint. The upper layer's root belongs to osUser with mode 0700, as
// PostgreSQL requires of its data directory.
func mountOverlay(p *Publication) error {
	u, err := user.Lookup(p.OSUser)
	if err != nil {
		return fmt.Errorf("looking up OS user %s: %w", p.OSUser, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("OS user %s: %w", p.OSUser, err)
	}
	for _, d := range []string{p.UpperDir(), p.workDir(), p.Mountpoint()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := os.Chown(p.UpperDir(), uid, gid); err != nil {
		return err
	}
	if err := os.Chmod(p.UpperDir(), 0o700); err != nil {
		return err
	}
	opts := "lowerdir=" + p.Lower() + ",upperdir=" + p.UpperDir() + ",workdir=" + p.workDir()
	// noexec as on the FUSE mount below: no library of the backup loads.
	if err := unix.Mount("overlay", p.Mountpoint(), "overlay", unix.MS_NOEXEC|unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mounting the copy-on-write overlay at %s (%s): %w", p.Mountpoint(), opts, err)
	}
	return nil
}

// unmountOverlay unmounts the overlay at p's mountpoint if one is there,
// waiting up to wait for the instance's last processes to let go of it,
// then detaching it lazily. An overlay left by a dead serve process is
// still mounted (the kernel holds it, not the process), over a dead lower
// layer.
func unmountOverlay(p *Publication, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		ok, err := mountedOverlay(p.Mountpoint())
		if err != nil || !ok {
			return err
		}
		err = unix.Unmount(p.Mountpoint(), 0)
		if err == nil {
			continue // another one may be stacked below
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			if derr := unix.Unmount(p.Mountpoint(), unix.MNT_DETACH); derr != nil {
				return fmt.Errorf("unmounting the overlay at %s: %w", p.Mountpoint(), errors.Join(err, derr))
			}
			continue
		}
		time.Sleep(50 * time.Millisecond) // polling the kernel for the mount's users to leave
	}
}

// mountedOverlay reports whether an overlay is mounted at dir.
func mountedOverlay(dir string) (bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("reading the mount table: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS...] - FSTYPE SOURCE SUPER
		f := strings.Fields(line)
		if len(f) < 5 || unescapeMountPath(f[4]) != dir {
			continue
		}
		for i := 5; i+1 < len(f); i++ {
			if f[i] == "-" && f[i+1] == "overlay" {
				return true, nil
			}
		}
	}
	return false, nil
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
