package testsupport

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
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

// RequireSameFiles checks that dst holds exactly the regular files of src,
// byte for byte, plus the files named in extra (relative, with slashes);
// with mask not 0, also that each file's permission bits masked by mask are
// the same.
func RequireSameFiles(t testing.TB, src, dst string, mask fs.FileMode, extra ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, e := range extra {
		want[e] = true
	}
	require.NoError(t, filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(src, p)
		require.NoError(t, err)
		want[filepath.ToSlash(rel)] = true
		a, err := os.ReadFile(p)
		require.NoError(t, err)
		b, err := os.ReadFile(filepath.Join(dst, rel))
		require.NoError(t, err, "missing %s", rel)
		require.True(t, bytes.Equal(a, b), "%s differs", rel)
		if mask != 0 {
			sfi, err := d.Info()
			require.NoError(t, err)
			dfi, err := os.Stat(filepath.Join(dst, rel))
			require.NoError(t, err)
			require.Equal(t, sfi.Mode().Perm()&mask, dfi.Mode().Perm(), "%s mode", rel)
		}
		return nil
	}))
	require.NoError(t, filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dst, p)
		require.NoError(t, err)
		require.True(t, want[filepath.ToSlash(rel)], "%s is not in the source", rel)
		return nil
	}))
}

// WriteFiles writes files (relative names with slashes, and their content)
// under dir with mode, making their directories: 0o700 for a mode private
// to its owner, 0o755 otherwise.
func WriteFiles(t testing.TB, dir string, files map[string][]byte, mode fs.FileMode) {
	t.Helper()
	dirMode := fs.FileMode(0o755)
	if mode&0o077 == 0 {
		dirMode = 0o700
	}
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), dirMode))
		require.NoError(t, os.WriteFile(p, data, mode))
	}
}
