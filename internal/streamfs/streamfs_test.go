package streamfs_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/internal/streamfs"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// A program's files arrive as streams, byte for byte and in the order it
// creates them; a rename is seen; a write out of order fails, as does
// making a directory; the mount starts empty, as pg_basebackup -D needs.
func TestStreams(t *testing.T) {
	testsupport.RequireFUSE(t)
	dir := t.TempDir()
	m, err := streamfs.MountAt(dir)
	require.NoError(t, err)
	defer func() { require.NoError(t, m.Unmount()) }()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, ents)

	src := filepath.Join(t.TempDir(), "src")
	want := make([]byte, 5<<20+123)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range want {
		want[i] = byte(r.Uint32())
	}
	require.NoError(t, os.WriteFile(src, want, 0o600))
	done := make(chan error, 1)
	go func() {
		// Another process writes, as pg_basebackup will: two files, then
		// a third renamed into place.
		out, err := exec.Command("sh", "-c", `cp "$1" "$2/16385.tar" && cp "$1" "$2/base.tar" && echo manifest >"$2/backup_manifest.tmp" && mv "$2/backup_manifest.tmp" "$2/backup_manifest"`, "sh", src, dir).CombinedOutput()
		if err != nil {
			err = &exec.ExitError{}
			t.Logf("%s", out)
		}
		done <- err
	}()
	for _, name := range []string{"16385.tar", "base.tar", "backup_manifest.tmp"} {
		f, err := m.Next(t.Context())
		require.NoError(t, err)
		require.Equal(t, name, f.Name)
		got, err := io.ReadAll(f)
		require.NoError(t, err)
		if name == "backup_manifest.tmp" {
			require.Equal(t, "manifest\n", string(got))
			continue
		}
		require.True(t, bytes.Equal(want, got), "%s: %d bytes, want %d", name, len(got), len(want))
	}
	require.NoError(t, <-done)
	require.Equal(t, "backup_manifest", m.Renamed("backup_manifest.tmp"))
	require.Equal(t, "base.tar", m.Renamed("base.tar"))

	require.Error(t, os.Mkdir(filepath.Join(dir, "sub"), 0o700))
	go func() {
		f, err := m.Next(t.Context())
		if err == nil {
			io.Copy(io.Discard, f)
		}
	}()
	f, err := os.OpenFile(filepath.Join(dir, "holes"), os.O_CREATE|os.O_WRONLY, 0o600)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("x"), 4096)
	require.Error(t, err, "a write out of order")
	f.Close()
}
