package netemu

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// netnsDir is where 'ip netns' mounts named namespaces.
const netnsDir = "/run/netns"

// OpenTUN creates TUN device name (IP packets, no extra header) in the
// network namespace netns, one of 'ip netns' (under /run/netns), or in this
// process's when netns is "". The device lives as long as the file: closing
// it deletes the device. The file is non-blocking, so Close interrupts a
// Read.
func OpenTUN(netns, name string) (*os.File, error) {
	if netns == "" {
		return openTUN(name)
	}
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		f, err := openTUNIn(netns, name)
		ch <- result{f, err}
	}()
	r := <-ch
	return r.f, r.err
}

// openTUNIn moves this goroutine's OS thread into netns, creates the device
// and moves the thread back. If moving back fails, the thread stays locked
// and the runtime discards it when the goroutine exits, so OpenTUN runs this
// on a goroutine of its own.
func openTUNIn(netns, name string) (*os.File, error) {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("opening this thread's namespace: %w", err)
	}
	defer unix.Close(orig)
	target, err := unix.Open(filepath.Join(netnsDir, netns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		err = unix.Setns(target, unix.CLONE_NEWNET)
		unix.Close(target)
	}
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("entering namespace %s: %w", netns, err)
	}
	defer func() {
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return openTUN(name)
}

// openTUN creates the device in the calling thread's network namespace.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("creating TUN device %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}
