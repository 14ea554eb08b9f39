// Package fusefd keeps FUSE connections out of child processes.
//
// go-fuse's direct mount (as root) opens /dev/fuse without close-on-exec:
// every process started afterwards (postgres, pg_dump, pg_basebackup)
// would hold the FUSE connection open, so that if this process dies, their
// requests wait forever instead of failing. A mount holds
// syscall.ForkLock from before the mount until CloseOnExec has run.
package fusefd

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// CloseOnExec sets close-on-exec on this process's /dev/fuse descriptors.
func CloseOnExec() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("listing descriptors: %w", err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			syscall.CloseOnExec(fd)
		}
	}
	return nil
}
