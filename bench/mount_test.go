package bench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestTarCount guards the read tools' byte count: every byte of the files,
// in a tar stream (headers and padding to whole records included).
func TestTarCount(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("no tar")
	}
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a"), make([]byte, 100_000), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "sub"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sub", "b"), []byte("b"), 0o644))
	n, _, err := tarCount(context.Background(), "", dir)
	require.NoError(t, err)
	require.Greater(t, n, int64(100_001))
	require.Zero(t, n%10240, "GNU tar writes whole 10 KiB records")
	var want countWriter
	out, err := exec.Command("tar", "-cf", "-", "-C", dir, ".").Output()
	require.NoError(t, err)
	_, _ = want.Write(out)
	require.Equal(t, int64(want), n)

	_, _, err = tarCount(context.Background(), "", filepath.Join(dir, "missing"))
	require.Error(t, err)
}

// TestDiskUsage guards the copy-on-write figure: blocks, not apparent
// sizes, so a sparse file counts what it holds.
func TestDiskUsage(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "sparse"))
	require.NoError(t, err)
	_, err = f.WriteAt(make([]byte, 4096), 1<<30)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	n, err := diskUsage(dir)
	require.NoError(t, err)
	require.Positive(t, n)
	require.Less(t, n, int64(1<<20), "a 1 GiB hole takes no blocks")
}
