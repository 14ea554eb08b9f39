package testsupport

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRequirePGMissing(t *testing.T) {
	t.Setenv(BinDirEnv, "/nonexistent/pgporter/bin")

	t.Setenv("CI", "")
	r := &Recorder{TB: t}
	r.Run(func(tb testing.TB) { RequirePG(tb) })
	require.Contains(t, r.SkipMsg, "PostgreSQL not available")
	require.Empty(t, r.FatalMsg)

	t.Setenv("CI", "true")
	r = &Recorder{TB: t}
	r.Run(func(tb testing.TB) { RequirePG(tb) })
	require.Contains(t, r.FatalMsg, "PostgreSQL not available")
	require.Empty(t, r.SkipMsg)
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
	r := &Recorder{TB: t}
	r.Run(func(tb testing.TB) { RequireFUSE(tb) })
	if r.SkipMsg != "" {
		t.Skip(r.SkipMsg)
	}
	require.Empty(t, r.FatalMsg)
}

// A tool that is not installed skips the test, and fails it in CI (make deb's
// dpkg-deb in TestInstallDeb).
func TestRequireToolMissing(t *testing.T) {
	t.Setenv("CI", "")
	r := &Recorder{TB: t}
	r.Run(func(tb testing.TB) { RequireTool(tb, "pgporter-no-such-tool", "no-such-package") })
	require.Contains(t, r.SkipMsg, "pgporter-no-such-tool not found (apt-get install no-such-package)")
	require.Empty(t, r.FatalMsg)

	t.Setenv("CI", "true")
	r = &Recorder{TB: t}
	r.Run(func(tb testing.TB) { RequireTool(tb, "pgporter-no-such-tool", "no-such-package") })
	require.Contains(t, r.FatalMsg, "pgporter-no-such-tool not found")
	require.Empty(t, r.SkipMsg)

	require.Equal(t, "/bin/sh", RequireTool(t, "/bin/sh", "dash"))
}
