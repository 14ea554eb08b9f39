package staging

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A process that serves a FUSE mount and also reads it (the export reads
// its restore point's files through its own mount) can deadlock when it is
// killed: its server threads die first, a thread waiting on an answer to a
// request they had already read is in an uninterruptible wait, and the
// mount's /dev/fuse descriptor, which would end the wait when closed, stays
// open in the descriptor table that this very thread keeps alive. The
// process never finishes exiting; it keeps its locks, sockets and
// databases. Aborting the mount's FUSE connection is the only way out, and
// ReleaseDying does it.

// pfExiting is PF_EXITING, the kernel's flag on a task inside exit.
const pfExiting = 0x4

// sigkillBit is SIGKILL's bit in /proc/PID/status's pending-signal masks.
const sigkillBit = 1 << (unix.SIGKILL - 1)

// Dying reports whether pid is a process that was killed and has not
// finished exiting: one of its threads has SIGKILL pending, is inside exit,
// or has already exited while others remain. A zombie whose threads have
// all exited is not dying: it holds nothing any more.
func Dying(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return false // gone
	}
	exited, live := 0, 0
	for _, t := range tasks {
		dir := fmt.Sprintf("/proc/%d/task/%s", pid, t.Name())
		state, flags, ok := taskStat(filepath.Join(dir, "stat"))
		if !ok {
			continue // exited since the listing
		}
		if state == 'Z' || state == 'X' {
			exited++
			continue
		}
		live++
		if flags&pfExiting != 0 || killPending(filepath.Join(dir, "status")) {
			return true
		}
	}
	return exited > 0 && live > 0
}

// taskStat reads a task's state letter and flags from its stat file.
func taskStat(path string) (state byte, flags uint64, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid pgrp session tty_nr tpgid flags ...
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 7 {
		return 0, 0, false
	}
	flags, err = strconv.ParseUint(f[6], 10, 64)
	return f[0][0], flags, err == nil
}

// killPending reports whether a task's status shows SIGKILL pending, for
// the thread or for the whole process.
func killPending(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "SigPnd" && k != "ShdPnd") {
			continue
		}
		if mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil && mask&sigkillBit != 0 {
			return true
		}
	}
	return false
}

// fusectlDir is where fusectl, the FUSE control filesystem, is mounted on
// hosts whose init mounts it. Containers and hosts without systemd leave it
// unmounted.
const fusectlDir = "/sys/fs/fuse/connections"

// fuseConn is one FUSE mount at a mountpoint: its connection is named by
// the minor of the mount's anonymous device.
type fuseConn struct {
	dir   string
	minor string
}

// AbortFUSE aborts the connections of the FUSE mounts at mountpoint (all of
// them, when several are stacked): every request waiting on them fails at
// once, and later accesses fail with ECONNABORTED until CleanStaleMount
// detaches them. It returns how many it aborted.
//
// It needs no fusectl mount: where /sys/fs/fuse/connections is not
// mounted, it mounts fusectl on a private directory for the moment of the
// abort, and where it may not mount, it forces an unmount (which makes the
// kernel abort the connection of the mount on top). A connection it could
// abort in none of these ways is an error that says what to run.
func AbortFUSE(mountpoint string) (int, error) {
	dir, err := mountPath(mountpoint)
	if err != nil {
		return 0, err
	}
	conns, err := fuseConns(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	// Top first: a forced unmount reaches only the mount on top.
	for i := len(conns) - 1; i >= 0; i-- {
		gone, err := abortConn(conns[i], i == len(conns)-1)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !gone {
			n++
		}
	}
	return n, errors.Join(errs...)
}

// abortMethods are the ways abortConn tries, in order; tests narrow them to
// prove each one on its own.
var abortMethods = []abortMethod{abortByFusectl, abortByPrivateFusectl, abortByForcedUnmount}

type abortMethod func(c fuseConn, top bool) error

// errCannotAbort marks a method that does not apply here (fusectl not
// mounted, no privilege to mount it, not the mount on top).
var errCannotAbort = errors.New("staging: cannot abort this way")

// abortConn aborts c's connection, by the first method that works. gone
// reports that the connection had already ended.
func abortConn(c fuseConn, top bool) (gone bool, err error) {
	var errs []error
	for _, m := range abortMethods {
		err := m(c, top)
		if err == nil {
			return false, nil
		}
		// A missing abort file means the connection ended only if the mount
		// is gone too: it is also what an unmounted fusectl looks like.
		if still, merr := connMounted(c); merr == nil && !still {
			return true, nil
		}
		if !errors.Is(err, errCannotAbort) {
			errs = append(errs, err)
		}
	}
	return false, &AbortError{Mountpoint: c.dir, Conn: c.minor, Err: errors.Join(errs...)}
}

// AbortError is returned when a FUSE connection could be aborted in no way
// open to this process.
type AbortError struct {
	Mountpoint string
	Conn       string // the connection's number under /sys/fs/fuse/connections
	Err        error  // what the methods that applied returned, if any
}

func (e *AbortError) Error() string {
	msg := fmt.Sprintf("staging: cannot abort FUSE connection %s of %s: fusectl is not mounted and this process may not mount it", e.Conn, e.Mountpoint)
	if e.Err != nil {
		msg += " (" + e.Err.Error() + ")"
	}
	return msg + fmt.Sprintf("; as root, run: mount -t fusectl fusectl %s && echo 1 > %s/%s/abort, or: umount -f %s",
		fusectlDir, fusectlDir, e.Conn, e.Mountpoint)
}

func (e *AbortError) Unwrap() error { return e.Err }

// abortByFusectl writes the connection's abort file where fusectl is
// mounted already.
func abortByFusectl(c fuseConn, _ bool) error {
	return writeAbort(fusectlDir, c.minor)
}

// abortByPrivateFusectl mounts fusectl on a private directory, writes the
// abort file there and unmounts it again: fusectl has one instance, so
// this is the same abort file the usual mount would show, and the host is
// left as it was.
func abortByPrivateFusectl(c fuseConn, _ bool) error {
	tmp, err := os.MkdirTemp("", "pgporter-fusectl-")
	if err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	defer os.Remove(tmp)
	if err := unix.Mount("fusectl", tmp, "fusectl", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("%w: mounting fusectl: %w", errCannotAbort, err)
		}
		return fmt.Errorf("staging: mounting fusectl on %s: %w", tmp, err)
	}
	defer unix.Unmount(tmp, unix.MNT_DETACH)
	return writeAbort(tmp, c.minor)
}

// abortByForcedUnmount unmounts the mount on top with MNT_FORCE: FUSE
// answers that by aborting the connection, whether or not the unmount
// itself then succeeds (a busy mount stays, aborted, for CleanStaleMount).
// The path lookup stops at the mountpoint and sends nothing to the server.
func abortByForcedUnmount(c fuseConn, top bool) error {
	if !top {
		return fmt.Errorf("%w: a forced unmount reaches only the mount on top", errCannotAbort)
	}
	err := unix.Unmount(c.dir, unix.MNT_FORCE)
	switch {
	case err == nil, errors.Is(err, unix.EBUSY):
		return nil
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%w: forced unmount: %w", errCannotAbort, err)
	default:
		return fmt.Errorf("staging: forced unmount of %s: %w", c.dir, err)
	}
}

// writeAbort writes 1 to connection minor's abort file under a fusectl
// mount at ctl. A missing file (fusectl not mounted there, or the
// connection gone) is errCannotAbort: abortConn tells the two apart.
func writeAbort(ctl, minor string) error {
	err := os.WriteFile(filepath.Join(ctl, minor, "abort"), []byte("1"), 0o200)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: no abort file for connection %s under %s", errCannotAbort, minor, ctl)
	}
	if err != nil {
		return fmt.Errorf("staging: aborting FUSE connection %s: %w", minor, err)
	}
	return nil
}

// fuseConns lists the FUSE mounts at dir, bottom first, from
// /proc/self/mountinfo (reading it touches no mount).
func fuseConns(dir string) ([]fuseConn, error) {
	ms, err := mountsAt(dir)
	if err != nil {
		return nil, err
	}
	var conns []fuseConn
	for _, m := range ms {
		major, minor, ok := strings.Cut(m.dev, ":")
		if !isFUSE(m.fstype) || !ok || major != "0" {
			continue // fuseblk's connections are not named by the device
		}
		conns = append(conns, fuseConn{dir: dir, minor: minor})
	}
	return conns, nil
}

// connMounted reports whether c is still mounted at its mountpoint.
func connMounted(c fuseConn) (bool, error) {
	conns, err := fuseConns(c.dir)
	if err != nil {
		return false, err
	}
	for _, o := range conns {
		if o.minor == c.minor {
			return true, nil
		}
	}
	return false, nil
}

// WaitExit waits until pid has exited (a zombie waiting to be reaped counts
// as exited: it holds no descriptors any more), or ctx ends.
func WaitExit(ctx context.Context, pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("staging: watching process %d: %w", pid, err)
	}
	defer unix.Close(fd)
	// A pidfd becomes readable when the whole thread group has exited.
	for {
		ms := 1000
		if d, ok := ctx.Deadline(); ok {
			ms = max(0, min(ms, int(time.Until(d).Milliseconds())+1))
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
		if n > 0 {
			return nil
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("staging: waiting for process %d: %w", pid, err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("staging: process %d has not exited: %w", pid, ctx.Err())
		}
	}
}

// ReleaseDying frees a killed process that may be stuck exiting on its own
// FUSE mount: if pid is Dying, it aborts the FUSE connections at
// mountpoints (which that process served) and waits, up to ctx, for it to
// exit. It reports whether pid was dying. A live process is left alone. A
// process still there when ctx ends gives a *StuckError, which says where
// it waits and what to run.
func ReleaseDying(ctx context.Context, pid int, mountpoints ...string) (bool, error) {
	if pid <= 0 || !Dying(pid) {
		return false, nil
	}
	var errs []error
	var mnts []string
	for _, mnt := range mountpoints {
		if mnt == "" {
			continue
		}
		mnts = append(mnts, mnt)
		if _, err := AbortFUSE(mnt); err != nil {
			errs = append(errs, err)
		}
	}
	if err := WaitExit(ctx, pid); err != nil {
		return true, &StuckError{PID: pid, Mountpoints: mnts, Waits: threadWaits(pid), Err: errors.Join(append(errs, err)...)}
	}
	return true, nil // exited: whatever the aborts said, nothing is held any more
}

// StuckError is returned when a killed process does not finish exiting.
type StuckError struct {
	PID         int
	Mountpoints []string // the FUSE mounts it served
	Waits       []string // the kernel functions its remaining threads wait in
	Err         error
}

func (e *StuckError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "process %d was killed and is stuck exiting", e.PID)
	if len(e.Waits) > 0 {
		fmt.Fprintf(&b, ", waiting in %s", strings.Join(e.Waits, ", "))
	}
	if len(e.Mountpoints) > 0 {
		fmt.Fprintf(&b, ", on the FUSE mount %s", strings.Join(e.Mountpoints, ", "))
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if len(e.Mountpoints) > 0 {
		fmt.Fprintf(&b, "; free it as root with: umount -f %s", strings.Join(e.Mountpoints, " "))
	}
	return b.String()
}

func (e *StuckError) Unwrap() error { return e.Err }

// threadWaits lists the distinct wait channels of pid's live threads
// (request_wait_answer, for one stuck on a FUSE request).
func threadWaits(pid int) []string {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var waits []string
	for _, t := range tasks {
		dir := fmt.Sprintf("/proc/%d/task/%s", pid, t.Name())
		if state, _, ok := taskStat(filepath.Join(dir, "stat")); !ok || state == 'Z' || state == 'X' {
			continue
		}
		w, err := os.ReadFile(filepath.Join(dir, "wchan"))
		if ws := strings.TrimSpace(string(w)); err == nil && ws != "" && ws != "0" && !slices.Contains(waits, ws) {
			waits = append(waits, ws)
		}
	}
	return waits
}
