package mover

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestFileCacheNeverEvictsBusyFile: with a bound of 2, opening more files
// while one is in use must not close the busy one under its user.
func TestFileCacheNeverEvictsBusyFile(t *testing.T) {
	rt, err := os.OpenRoot(t.TempDir())
	require.NoError(t, err)
	defer rt.Close()
	c := newFileCache(rt, ".", 2)
	defer c.closeAll()
	for _, p := range []string{"a", "b", "c", "d"} {
		require.NoError(t, c.create(p, 4))
	}
	err = c.use("a", false, func(f *os.File) error {
		for _, p := range []string{"b", "c", "d"} {
			require.NoError(t, c.writeAt(p, []byte(p), 0))
		}
		_, err := f.WriteAt([]byte("A"), 0)
		return err
	})
	require.NoError(t, err)
	for _, p := range []string{"a", "b", "c", "d"} {
		got := make([]byte, 1)
		require.NoError(t, c.readAt(p, got, 0))
		want := p
		if p == "a" {
			want = "A"
		}
		require.Equal(t, want, string(got))
	}
	c.mu.Lock()
	n := len(c.open)
	c.mu.Unlock()
	require.LessOrEqual(t, n, 2, "idle files are evicted down to the bound")
}
