package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRestorePointsUnreadableRepo guards against a repository this user
// may not read being "not a repository" (8): it is refused permission (5),
// and the message says so. As root, the CLI runs as nobody (a copy of this
// binary, which root's bypass of the mode would otherwise hide).
func TestRestorePointsUnreadableRepo(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // nobody runs the binary in it
		require.NoError(t, os.Chmod(d, 0o755))
	}
	repo := filepath.Join(dir, "repo")
	src, _ := fakeDataDir(t)
	code, _, errs := runCLI(t, "--home", filepath.Join(dir, "h"), "backup", "--repo", repo, "--pgdata", src)
	require.Equal(t, exitOK, code, errs)
	require.NoError(t, os.Chmod(repo, 0o700))

	args := []string{"--home", filepath.Join(dir, "nh"), "restore-points", "--repo", repo}
	if os.Geteuid() != 0 {
		require.NoError(t, os.Chmod(repo, 0))
		t.Cleanup(func() { os.Chmod(repo, 0o700) })
		code, _, errs = runCLI(t, args...)
	} else {
		exe := filepath.Join(dir, "pgporter")
		copyExecutable(t, exe)
		cmd := exec.Command(exe, args...)
		cmd.Env = append(os.Environ(), testMainEnv+"=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		require.True(t, errors.As(err, &ee), "%v: %s", err, stderr.String())
		code, errs = ee.ExitCode(), stderr.String()
	}
	require.Equal(t, exitPermission, code, errs)
	require.Contains(t, errs, "permission denied")
	require.NotContains(t, errs, "not a repository")
}
