package testsupport

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestStaleClusterDirs(t *testing.T) {
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	deadPID := strconv.Itoa(dead.Process.Pid)

	dir := t.TempDir()
	write := func(name, content string) {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	require.False(t, stale(dir), "no owner file yet: being created")
	write(ownerFile, strconv.Itoa(os.Getpid())+"\n")
	require.False(t, stale(dir), "owner alive")
	write(ownerFile, deadPID+"\n")
	require.True(t, stale(dir), "owner gone")
	write("data/postmaster.pid", strconv.Itoa(os.Getpid())+"\n/var/tmp/x/data\n")
	require.False(t, stale(dir), "a server still runs there")
}
