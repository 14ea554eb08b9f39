package mover

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestHostileSymlinkSwap swaps a symlink to a directory outside the root
// into the destination while a transfer writes it (as a local attacker
// racing the mover would): the partial tree itself, or a directory in it.
// Nothing outside the root is touched, and no tree is committed through
// the symlink.
func TestHostileSymlinkSwap(t *testing.T) {
	src := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(src, "sub"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "sub", "a.dat"), randomBytes(3<<20, 7), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(src, "b.dat"), randomBytes(3<<20, 8), 0o644))

	for _, tc := range []struct {
		name string
		swap string // relative to DEST.partial; "" for DEST.partial itself
	}{
		{"partial tree", ""},
		{"directory in it", "sub"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			outside := t.TempDir()
			sentinel := filepath.Join(outside, "a.dat")
			require.NoError(t, os.WriteFile(sentinel, []byte("sentinel"), 0o644))
			var (
				mu      sync.Mutex // guards swapped, swapErr
				swapped bool
				swapErr error
				dest    string
			)
			// At the first durability barrier after the victim exists.
			swap := func(string, int64) {
				mu.Lock()
				defer mu.Unlock()
				victim := filepath.Join(dest+".partial", tc.swap)
				if _, err := os.Lstat(victim); swapped || err != nil {
					return
				}
				swapped = true
				if swapErr = os.Rename(victim, victim+".moved"); swapErr == nil {
					swapErr = os.Symlink(outside, victim)
				}
			}
			r := startReceiver(t, ServerOptions{Reserve: 1, SyncBytes: 1 << 20, SyncInterval: 10 * time.Millisecond, OnDurable: swap})
			dest = filepath.Join(r.root, "d")
			s := newTestSender(t, r, PermSend)
			_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, BWLimit: 8 << 20, Compression: "none", RetryFor: -1})
			mu.Lock()
			require.True(t, swapped, "the swap happened mid-transfer")
			require.NoError(t, swapErr)
			mu.Unlock()
			t.Logf("send after the swap: %v", err)
			// The rerun a user would try meets the symlink from the start.
			_, err2 := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, Compression: "none", RetryFor: -1})
			t.Logf("rerun: %v", err2)
			if err == nil {
				err = err2
			}

			entries, rerr := os.ReadDir(outside)
			require.NoError(t, rerr)
			require.Len(t, entries, 1, "nothing may be created outside the root")
			got, rerr := os.ReadFile(sentinel)
			require.NoError(t, rerr)
			require.Equal(t, "sentinel", string(got), "nothing outside the root may be written")
			if err == nil {
				// Committed: then it is a real tree with the right content.
				fi, lerr := os.Lstat(dest)
				require.NoError(t, lerr)
				require.True(t, fi.IsDir(), "DEST is not a symlink")
				requireNoSymlinks(t, dest)
				requireSameTree(t, src, dest)
			} else {
				// Writes go through the partial tree held open, so the swap
				// of DEST.partial itself is caught before the rename; a
				// link in it is refused by os.Root.
				if tc.swap == "" {
					require.ErrorContains(t, err, "not made by this mover", "the error says why")
				} else {
					require.ErrorContains(t, err, "path escapes", "the error says why")
				}
				_, lerr := os.Lstat(dest)
				require.ErrorIs(t, lerr, fs.ErrNotExist, "a failed transfer commits nothing")
			}
		})
	}
}

func requireNoSymlinks(t *testing.T, dir string) {
	t.Helper()
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		require.NoError(t, err)
		require.Zero(t, d.Type()&fs.ModeSymlink, "%s is a symlink", p)
		return nil
	}))
}
