package testsupport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// Child is the test binary re-executed to run one test function as a
// process of its own, for tests that kill it. It talks back on stdout, a
// line at a time.
type Child struct {
	Cmd    *exec.Cmd
	lines  chan string
	exited chan struct{}
	err    error // of cmd.Wait, set before exited is closed
}

// ChildWatchdog bounds a child's life: a test whose child is still running
// after it panics, naming where the child's threads wait. It is far below
// the package timeout, so one wedged test cannot hide the others' results.
var ChildWatchdog = 3 * time.Minute

// StartChild runs test (a test function of the calling package, which does
// nothing unless env is set) in a new process with env added to this one's.
// A cleanup, registered before the caller's own, kills it and waits for it.
func StartChild(t testing.TB, test string, env ...string) *Child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &Child{Cmd: cmd, lines: make(chan string, 16), exited: make(chan struct{})}
	name, pid := t.Name(), cmd.Process.Pid
	watchdog := time.AfterFunc(ChildWatchdog, func() {
		// The test is wedged, most likely in the kernel where no deadline
		// reaches it: end the package now, with what the child waits on,
		// rather than let it eat the package's timeout in silence.
		panic(fmt.Sprintf("watchdog: %s: child %d still running after %v:%s", name, pid, ChildWatchdog, ProcThreads(pid)))
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		c.err = cmd.Wait()
		watchdog.Stop()
		close(c.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if _, err := c.Wait(30 * time.Second); err != nil {
			t.Errorf("child %d: %v", cmd.Process.Pid, err)
		}
	})
	return c
}

// Line returns the child's next line, failing the test if the child exits
// first or says nothing within d.
func (c *Child) Line(t testing.TB, d time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			t.Fatalf("the child exited (%v) before saying anything more", c.wait())
		}
		return l
	case <-time.After(d):
		t.Fatalf("the child said nothing within %v", d)
	}
	return ""
}

func (c *Child) wait() error {
	for range c.lines {
	}
	<-c.exited
	return c.err
}

// Wait waits up to d for the child to exit and returns how it ended
// (cmd.Wait's error); err is set if it had not exited by then.
func (c *Child) Wait(d time.Duration) (ended error, err error) {
	done := make(chan error, 1)
	go func() { done <- c.wait() }()
	select {
	case ended = <-done:
		return ended, nil
	case <-time.After(d):
		return nil, errors.New("still running")
	}
}

// ProcThreads describes where a process's threads wait, for the failure
// message of a test whose process does not die: a thread blocked on a FUSE
// request that its own dying process should answer shows here.
func ProcThreads(pid int) string {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var b strings.Builder
	for _, tk := range tasks {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, tk.Name()))
		wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/wchan", pid, tk.Name()))
		stack, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stack", pid, tk.Name()))
		fields := strings.Fields(string(st))
		state := ""
		if len(fields) > 2 {
			state = fields[2]
		}
		fmt.Fprintf(&b, "\n  task %s state %s wchan %s\n%s", tk.Name(), state, wchan, stack)
	}
	return b.String()
}

// SilentChunks is a chunk reader (staging.ChunkReader) that never answers:
// each Get prints "reading" on stdout, for a parent process to wait for,
// and blocks until the process is killed, like a repository that stopped
// answering. The dying-process tests serve a mount of it.
type SilentChunks struct{}

// Get announces the read and never returns.
func (SilentChunks) Get(context.Context, chunk.ID, []byte) ([]byte, error) {
	fmt.Println("reading")
	select {}
}
