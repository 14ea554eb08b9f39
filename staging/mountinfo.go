package staging

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// mountEntry is one mount of /proc/self/mountinfo.
type mountEntry struct {
	dev    string // major:minor; 0:N names a FUSE connection N
	dir    string // the mountpoint, unescaped
	fstype string
}

// mountsAt lists the mounts at dir, bottom first: the last is on top, the
// one that accesses reach. Reading the mount table touches no mount, so a
// dead or hung FUSE server cannot block it.
func mountsAt(dir string) ([]mountEntry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("staging: reading mount table: %w", err)
	}
	return parseMountinfo(string(b), dir), nil
}

// parseMountinfo returns the mounts at dir in the mount table mountinfo,
// in its order.
func parseMountinfo(mountinfo, dir string) []mountEntry {
	var ms []mountEntry
	for line := range strings.Lines(mountinfo) {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		f := strings.Fields(line)
		if len(f) < 7 || unescapeMountinfo(f[4]) != dir {
			continue
		}
		for i := 6; i+1 < len(f); i++ {
			if f[i] == "-" {
				ms = append(ms, mountEntry{dev: f[2], dir: dir, fstype: f[i+1]})
				break
			}
		}
	}
	return ms
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, and so on)
// of a path in /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
