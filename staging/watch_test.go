package staging

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestWatchWrites: writes to table data files are reported, those to
// toc.dat (rewritten by tabledump) and to other files are not.
func TestWatchWrites(t *testing.T) {
	dir := t.TempDir()
	got := make(chan string, 100)
	w, err := WatchWrites(dir, func(name string) { got <- name })
	require.NoError(t, err)
	defer w.Close()
	for _, n := range []string{"toc.dat", "toc.dat.tmp", "blobs.toc", "3001.dat"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600))
	}
	select {
	case n := <-got: // inotify keeps the order of events
		require.Equal(t, "3001.dat", n)
	case <-time.After(30 * time.Second):
		t.Fatal("no write reported")
	}
	w.Close()
	w.Close() // idempotent
	require.NoError(t, os.WriteFile(filepath.Join(dir, "3002.dat"), []byte("x"), 0o600))
	close(got)
	for n := range got {
		require.Equal(t, "3001.dat", n, "a report after Close")
	}
}
