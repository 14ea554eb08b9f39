package bench

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

// TestMakeDump makes a small dump the way the full LAN scenario makes its
// own: pgbench rows and the docs table, as pg_dump -Fd -Z0 writes them.
func TestMakeDump(t *testing.T) {
	bin := testsupport.RequirePG(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The cluster's parent must be one the postgres user can enter when
	// the test runs as root, which t.TempDir (0700) is not.
	scratch, err := os.MkdirTemp("/var/tmp", "pgporter-bench-test-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(scratch) })
	require.NoError(t, os.Chmod(scratch, 0o755))
	dir := filepath.Join(t.TempDir(), "dump")
	require.NoError(t, MakeDump(ctx, DumpOptions{Dir: dir, Scale: 1, Docs: 10_000, Scratch: scratch, BinDir: bin}))
	require.FileExists(t, filepath.Join(dir, "toc.dat"))
	size, files, err := treeSize(dir)
	require.NoError(t, err)
	// pgbench -s 1: 100,000 accounts rows of about 97 bytes, uncompressed (-Z0).
	require.Greater(t, size, int64(9e6))
	require.GreaterOrEqual(t, files, 6, "toc.dat and a file per table's data")
	left, err := filepath.Glob(filepath.Join(scratch, "pgporter-bench-pg-*"))
	require.NoError(t, err)
	require.Empty(t, left, "the throwaway cluster is removed")
}
