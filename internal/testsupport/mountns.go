package testsupport

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// freshMountsEnv is set in the environment of a test binary that
// FreshMounts re-executed in a private mount namespace, and so in its
// children, which stay there.
const freshMountsEnv = "PGPORTER_TEST_FRESH_MOUNTS"

// fusectlDir is where an init system mounts fusectl; a fresh machine or a
// container often has nothing there.
const fusectlDir = "/sys/fs/fuse/connections"

// FreshMounts makes the test binary see the mounts of a fresh machine,
// whatever the machine that runs it has mounted by hand: call it first in
// TestMain. As root, it re-executes the binary in a private mount namespace
// (unshare -m) and unmounts fusectl there, so that the code that frees a
// process stuck on its own FUSE mount is tested on the path a fresh
// machine takes. The host's mounts are not touched, and mounts the tests
// leave behind go with the namespace. Without root it does nothing: the
// tests that need root fail or skip on their own.
func FreshMounts() {
	if os.Geteuid() != 0 {
		return
	}
	if os.Getenv(freshMountsEnv) == "" {
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			fmt.Fprintln(os.Stderr, "testsupport: unshare (util-linux) is needed to run the tests in a private mount namespace:", err)
			os.Exit(1)
		}
		args := append([]string{"unshare", "--mount", "--propagation", "private", "--", os.Args[0]}, os.Args[1:]...)
		err = syscall.Exec(unshare, args, append(os.Environ(), freshMountsEnv+"=1"))
		fmt.Fprintln(os.Stderr, "testsupport: re-executing the tests in a private mount namespace:", err)
		os.Exit(1)
	}
	if os.Getenv(freshMountsEnv) != "1" {
		return // a child of the re-executed binary: its namespace is ready
	}
	// Children share this namespace and leave its mounts as the tests set them.
	os.Setenv(freshMountsEnv, "ready")
	for range 8 { // stacked mounts, if someone mounted it more than once
		if !mountedAt(fusectlDir) {
			return
		}
		if err := unix.Unmount(fusectlDir, unix.MNT_DETACH); err != nil {
			fmt.Fprintln(os.Stderr, "testsupport: unmounting fusectl in the tests' mount namespace:", err)
			os.Exit(1)
		}
	}
}

// mountedAt reports whether anything is mounted at dir, by mountinfo.
func mountedAt(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// WithFusectl mounts fusectl at /sys/fs/fuse/connections for the rest of
// the test, as a host whose init mounts it has it. It fails the test unless
// FreshMounts made the binary's mount namespace private, so the host is
// never changed.
func WithFusectl(t testing.TB) {
	t.Helper()
	if os.Getenv(freshMountsEnv) == "" {
		t.Fatal("WithFusectl needs FreshMounts in TestMain (a private mount namespace)")
	}
	if err := unix.Mount("fusectl", fusectlDir, "fusectl", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		t.Fatalf("mounting fusectl: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(fusectlDir, unix.MNT_DETACH) })
}
