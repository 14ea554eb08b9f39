package bench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// procCPU returns the user+system CPU-seconds of process pid and of its
// children that it has reaped (/proc/PID/stat utime, stime, cutime, cstime):
// a daemon's delta over a run is what it and the workers it forked spent.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading CPU time of %d: %w", pid, err)
	}
	return parseStatCPU(b)
}

// parseStatCPU reads fields 14 to 17 of a /proc/PID/stat line. The command
// name (field 2) is in parentheses and may hold spaces, so fields are
// counted after its closing parenthesis.
func parseStatCPU(stat []byte) (float64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat line %q", stat)
	}
	f := strings.Fields(string(stat[i+1:])) // f[0] is field 3 (state)
	if len(f) < 15 {
		return 0, fmt.Errorf("short /proc stat line %q", stat)
	}
	var ticks int64
	for _, s := range f[11:15] { // fields 14-17
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("malformed /proc stat line %q: %w", stat, err)
		}
		ticks += v
	}
	return float64(ticks) / clockTicks, nil
}

// procHWM returns the peak resident set size of pid (VmHWM), in bytes.
func procHWM(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("reading peak RSS of %d: %w", pid, err)
	}
	kb, err := parseStatusKB(b, "VmHWM")
	if err != nil {
		return 0, fmt.Errorf("reading peak RSS of %d: %w", pid, err)
	}
	return kb << 10, nil
}

// parseStatusKB returns the value, in kB, of the line key ("VmHWM") of a
// /proc/PID/status file.
func parseStatusKB(status []byte, key string) (int64, error) {
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, key+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parsing %s: %w", key, err)
			}
			return kb, nil
		}
	}
	return 0, fmt.Errorf("no %s", key)
}

// hasChildren reports whether pid has live (or unreaped) children.
func hasChildren(pid int) (bool, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	if err != nil {
		return false, err
	}
	if len(tasks) == 0 {
		return false, fmt.Errorf("no /proc/%d/task/*/children: the process is gone, or the kernel lacks CONFIG_PROC_CHILDREN", pid)
	}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			return false, fmt.Errorf("reading children of %d: %w", pid, err)
		}
		if len(bytes.TrimSpace(b)) > 0 {
			return true, nil
		}
	}
	return false, nil
}

// usage returns the CPU-seconds that wait4 reported for a finished command:
// the process and every descendant it waited for, so
// 'ip netns exec … taskset … bash -c "a | b"' counts a and b.
func usage(cmd *exec.Cmd) float64 {
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0
	}
	return tvSeconds(ru.Utime) + tvSeconds(ru.Stime)
}

// readPeakRSS reads the peak RSS, in bytes, that GNU time -f %M wrote to
// path: kilobytes on the last line.
func readPeakRSS(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("reading peak RSS: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	kb, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("reading peak RSS from %q: %w", b, err)
	}
	return kb << 10, nil
}
