package testsupport

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

// recorder is a testing.TB that records Fatal and Skip instead of acting on
// the real test.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatal(args ...any) {
	r.fatal = fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *recorder) Skip(args ...any) {
	r.skip = fmt.Sprint(args...)
	runtime.Goexit()
}

// run calls f with a recorder on a goroutine of its own, as Goexit needs.
func (r *recorder) run(f func(testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
}

func TestRequirePGMissing(t *testing.T) {
	t.Setenv(BinDirEnv, "/nonexistent/pgporter/bin")

	t.Setenv("CI", "")
	r := &recorder{TB: t}
	r.run(func(tb testing.TB) { RequirePG(tb) })
	require.Contains(t, r.skip, "PostgreSQL not available")
	require.Empty(t, r.fatal)

	t.Setenv("CI", "true")
	r = &recorder{TB: t}
	r.run(func(tb testing.TB) { RequirePG(tb) })
	require.Contains(t, r.fatal, "PostgreSQL not available")
	require.Empty(t, r.skip)
}

func TestRequirePGFindsNewest(t *testing.T) {
	dir, err := findPG()
	if err != nil {
		t.Skip(err)
	}
	require.FileExists(t, dir+"/initdb")
	require.Equal(t, dir, RequirePG(t))
}

func TestRequireFUSE(t *testing.T) {
	t.Setenv("CI", "")
	r := &recorder{TB: t}
	r.run(func(tb testing.TB) { RequireFUSE(tb) })
	if r.skip != "" {
		t.Skip(r.skip)
	}
	require.Empty(t, r.fatal)
}

// A tool that is not installed skips the test, and fails it in CI (make deb's
// dpkg-deb in TestInstallDeb).
func TestRequireToolMissing(t *testing.T) {
	t.Setenv("CI", "")
	r := &recorder{TB: t}
	r.run(func(tb testing.TB) { RequireTool(tb, "pgporter-no-such-tool", "no-such-package") })
	require.Contains(t, r.skip, "pgporter-no-such-tool not found (apt-get install no-such-package)")
	require.Empty(t, r.fatal)

	t.Setenv("CI", "true")
	r = &recorder{TB: t}
	r.run(func(tb testing.TB) { RequireTool(tb, "pgporter-no-such-tool", "no-such-package") })
	require.Contains(t, r.fatal, "pgporter-no-such-tool not found")
	require.Empty(t, r.skip)

	require.Equal(t, "/bin/sh", RequireTool(t, "/bin/sh", "dash"))
}
