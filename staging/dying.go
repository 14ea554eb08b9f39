package staging

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// AbortFUSE aborts the connections of the FUSE mounts at mountpoint (all of
// them, when several are stacked): every request waiting on them fails at
// once, and later accesses fail with ECONNABORTED until CleanStaleMount
// detaches them. It returns how many it aborted.
func AbortFUSE(mountpoint string) (int, error) {
	dir, err := mountPath(mountpoint)
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0, fmt.Errorf("staging: reading mount table: %w", err)
	}
	n := 0
	var errs []error
	for line := range strings.Lines(string(b)) {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		f := strings.Fields(line)
		if len(f) < 7 || unescapeMountinfo(f[4]) != dir {
			continue
		}
		fstype := ""
		for i := 6; i+1 < len(f); i++ {
			if f[i] == "-" {
				fstype = f[i+1]
				break
			}
		}
		major, minor, ok := strings.Cut(f[2], ":")
		if !isFUSE(fstype) || !ok || major != "0" {
			continue // fuseblk's connections are not named by the device
		}
		// The connection is named by the minor of the mount's anonymous device.
		abort := filepath.Join("/sys/fs/fuse/connections", minor, "abort")
		if err := os.WriteFile(abort, []byte("1"), 0o200); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // ended since the table was read
			}
			errs = append(errs, fmt.Errorf("staging: aborting the FUSE connection of %s: %w", dir, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
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
// exit. It reports whether pid was dying. A live process is left alone.
func ReleaseDying(ctx context.Context, pid int, mountpoints ...string) (bool, error) {
	if pid <= 0 || !Dying(pid) {
		return false, nil
	}
	var errs []error
	for _, mnt := range mountpoints {
		if mnt == "" {
			continue
		}
		if _, err := AbortFUSE(mnt); err != nil {
			errs = append(errs, err)
		}
	}
	if err := WaitExit(ctx, pid); err != nil {
		errs = append(errs, err)
	}
	return true, errors.Join(errs...)
}
