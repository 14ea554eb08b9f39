package testsupport

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// FillBut writes a file at path until its file system has at most keep
// bytes free (or is full).
func FillBut(path string, keep int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 256<<10)
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(filepath.Dir(path), &st); err != nil {
			return err
		}
		free := int64(st.Bavail) * st.Bsize
		if free <= keep {
			return f.Sync()
		}
		if _, err := f.Write(buf[:min(int64(len(buf)), free-keep)]); err != nil {
			if errors.Is(err, unix.ENOSPC) {
				return nil // full: what was asked
			}
			return err
		}
	}
}

// IsMounted reports whether dir is a mount point in this process's mount
// namespace.
func IsMounted(t testing.TB, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}
