package staging

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// An overlay keeps an instance's writes on disk, in a directory that
// outlives the process: a kernel overlayfs whose lower layer is a restore
// point's FUSE mount (which nothing writes to) and whose upper layer
// receives every file the instance changes. The FUSE mount's own
// copy-on-write layer lives in the memory of the process serving it and
// cannot be reopened; the upper layer can, over a new mount of the same
// restore point, and PostgreSQL then finds every write it had made durable.

// OverlayOptions say what MountOverlay stacks.
type OverlayOptions struct {
	Lower string // the read-only lower layer: a restore point's mount
	// Upper receives the writes: created on first use, kept as it is
	// after that. Its root belongs to Owner with mode 0700, as PostgreSQL
	// requires of its data directory.
	Upper string
	Work  string // overlayfs's work directory, on Upper's filesystem
	Owner string // an OS user name
}

// MountOverlay mounts an overlay of o.Upper over o.Lower at dir, making the
// directories it needs.
func MountOverlay(dir string, o OverlayOptions) error {
	uid, gid, err := lookupOwner(o.Owner)
	if err != nil {
		return err
	}
	for _, d := range []string{o.Upper, o.Work, dir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := os.Chown(o.Upper, int(uid), int(gid)); err != nil {
		return err
	}
	if err := os.Chmod(o.Upper, 0o700); err != nil {
		return err
	}
	opts := "lowerdir=" + o.Lower + ",upperdir=" + o.Upper + ",workdir=" + o.Work
	// noexec as on the FUSE mount below: no library of the backup loads.
	if err := unix.Mount("overlay", dir, "overlay", unix.MS_NOEXEC|unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mounting the copy-on-write overlay at %s (%s): %w", dir, opts, err)
	}
	return nil
}

// UnmountOverlay unmounts every overlay at dir, waiting up to wait for the
// last processes of an instance to let go of it, then detaching it lazily.
// An overlay left by a dead process is still mounted (the kernel holds it,
// not the process), over a dead lower layer. Without an overlay at dir it
// does nothing.
func UnmountOverlay(dir string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		ok, err := overlayAt(dir)
		if err != nil || !ok {
			return err
		}
		err = unix.Unmount(dir, 0)
		if err == nil {
			continue // another one may be stacked below
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			if derr := unix.Unmount(dir, unix.MNT_DETACH); derr != nil {
				return fmt.Errorf("unmounting the overlay at %s: %w", dir, errors.Join(err, derr))
			}
			continue
		}
		time.Sleep(50 * time.Millisecond) // polling the kernel for the mount's users to leave
	}
}

// overlayAt reports whether an overlay is mounted at dir.
func overlayAt(dir string) (bool, error) {
	ms, err := mountsAt(dir)
	for _, m := range ms {
		if m.fstype == "overlay" {
			return true, nil
		}
	}
	return false, err
}
