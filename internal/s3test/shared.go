package s3test

import (
	"os"
	"sync"
	"testing"
)

// shared is the test binary's shared server (Shared).
var shared struct {
	mu    sync.Mutex // guards the rest
	main  bool       // Main runs the tests
	srv   *Server    // once one was launched; Main stops it
	ready bool       // srv serves
	err   string     // why it could not start; later callers fail with it
}

// Runner is what runs a package's tests: its *testing.M.
type Runner interface{ Run() int }

// Main runs a package's tests (m.Run, from its TestMain) and then stops the
// shared server if one was started, removing its data: a package whose
// tests call Shared has a TestMain that calls os.Exit(s3test.Main(m)), or
// hands Wrap(m) to the runner it uses (goleak.VerifyTestMain).
func Main(m Runner) int {
	shared.mu.Lock()
	shared.main = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if s := shared.srv; s != nil {
		s.kill()
		_ = os.RemoveAll(s.Dir)
		shared.srv, shared.ready = nil, false
	}
	return code
}

// Shared returns the server this test binary's tests share, started by the
// first that asks for it: a Start costs about 10 s, most of it SeaweedFS's
// filer waiting out other filers. It is for tests that only need buckets of
// their own (NewBucket) and leave the server as it was; a test that
// restarts or kills it, reads its process's figures, or needs it empty,
// starts its own. The package's TestMain must run its tests through Main,
// which stops it; a test binary killed first takes it along (Pdeathsig) and
// leaves its data in the temporary directory.
func Shared(t testing.TB) *Server {
	t.Helper()
	script := findScript(t)
	requireWeed(t, script)
	shared.mu.Lock()
	defer shared.mu.Unlock() // also when t fails (Goexit) below
	switch {
	case !shared.main:
		t.Fatal("s3test.Shared: the package's TestMain does not run its tests through s3test.Main, which stops the shared server")
	case shared.ready:
		return shared.srv
	case shared.err != "":
		t.Fatal(shared.err)
	}
	dir, err := os.MkdirTemp("", "pgporter-s3test-shared-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Dir: dir, script: script, shared: true}
	shared.srv = s
	shared.err = "s3test.Shared: the shared server did not start (see the first test that asked for it)"
	s.launch(t)
	s.loadEnv(t)
	shared.ready, shared.err = true, ""
	return s
}

// Wrap is m run through Main.
func Wrap(m Runner) Runner { return wrapped{m} }

type wrapped struct{ m Runner }

func (w wrapped) Run() int { return Main(w.m) }
