package main

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pgporter/pgporter/staging"
)

// waitPortReleased waits, up to limit, while the UDP port of listen is held
// by processes that are exiting. A mover restarted right after its
// predecessor was killed can find the port still bound: a killed process
// keeps its sockets until its last thread is gone, and one waiting on its
// own FUSE mount stays until ReclaimOrphans aborts that mount; tearing down
// then takes a moment more on a loaded host. Held by a live process, the
// port is left to the bind, which reports it.
func waitPortReleased(ctx context.Context, listen string, limit time.Duration, log *slog.Logger) {
	_, p, err := net.SplitHostPort(listen)
	if err != nil {
		return
	}
	port, err := strconv.Atoi(p)
	if err != nil || port == 0 {
		return
	}
	deadline := time.Now().Add(limit)
	logged := false
	for {
		var dying []int
		for _, pid := range udpPortHolders(port) {
			if pid != os.Getpid() && staging.Dying(pid) {
				dying = append(dying, pid)
			}
		}
		if len(dying) == 0 || time.Now().After(deadline) {
			return
		}
		if !logged {
			log.Info("waiting for an exiting process to release the listen port", "port", port, "pids", dying)
			logged = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond): // polling another process's exit
		}
	}
}

// udpPortHolders returns the processes with a UDP socket bound to port, in
// this network namespace.
func udpPortHolders(port int) []int {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 {
				continue
			}
			_, hexPort, ok := strings.Cut(fields[1], ":")
			if n, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil && int(n) == port {
				inodes[fields[9]] = true
			}
		}
		fh.Close()
	}
	if len(inodes) == 0 {
		return nil
	}
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", e.Name(), "fd"))
		for _, fd := range fds {
			l, err := os.Readlink(filepath.Join("/proc", e.Name(), "fd", fd.Name()))
			if err == nil && strings.HasPrefix(l, "socket:[") && inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}
