package testsupport

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// A test process killed before its cleanups (a -timeout panic, SIGKILL)
// leaves its clusters' directories behind; the servers themselves die with
// it (Pdeathsig). The first NewCluster of each process removes such
// leftovers: directories whose owner file names a process that no longer
// exists and whose postmaster.pid, if any, names no live process either.

const (
	clusterRoot      = "/var/tmp"
	clusterDirPrefix = "pgporter-test-"
	ownerFile        = "owner.pid"
)

var sweepOnce sync.Once

func sweepStaleClusters() {
	sweepOnce.Do(func() {
		matches, _ := filepath.Glob(filepath.Join(clusterRoot, clusterDirPrefix+"*"))
		for _, d := range matches {
			if stale(d) {
				os.RemoveAll(d)
			}
		}
	})
}

func stale(dir string) bool {
	owner, ok := readPID(filepath.Join(dir, ownerFile))
	if !ok || alive(owner) {
		return false // being created, or in use
	}
	if pm, ok := readPID(filepath.Join(dir, "data", "postmaster.pid")); ok && alive(pm) {
		return false
	}
	return true
}

// readPID reads the number on the first line of path.
func readPID(path string) (int, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
	return pid, err == nil && pid > 0
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
