package main

import (
	"context"
	"math/rand/v2"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// fakeDataDir writes a small directory that 'pgporter backup --pgdata'
// accepts (PG_VERSION, global/pg_control) and returns its files' content.
func fakeDataDir(t *testing.T) (string, map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(7, 8))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	files := map[string][]byte{
		"PG_VERSION":            []byte("15\n"),
		"global/pg_control":     random(8192),
		"base/1/PG_VERSION":     []byte("15\n"),
		"base/1/16384":          random(3<<20 + 17),
		"pg_wal/00000001000000": random(1 << 20),
	}
	testsupport.WriteFiles(t, dir, files, 0o600)
	return dir, files
}

// waitStdout polls p's stdout until a line starts with prefix.
func (p *proc) waitStdout(t *testing.T, prefix string) string {
	t.Helper()
	var got string
	require.Eventually(t, func() bool {
		select {
		case <-p.done:
			t.Fatalf("%v exited before printing %q: %v\n%s", p.cmd.Args[1:], prefix, p.err, p.stderr.String())
		default:
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, l := range p.stdout {
			if strings.HasPrefix(l, prefix) {
				got = l
				return true
			}
		}
		return false
	}, waitTimeout, 10*time.Millisecond, "no %q line", prefix)
	return got
}

// TestMountCLI mounts a backed-up directory with the real binary, reads it
// back, and checks that SIGINT and SIGTERM unmount cleanly with exit 0, that
// a SIGKILLed mount does not block the next one, and that a busy mount is
// detached, naming who holds it.
func TestMountCLI(t *testing.T) {
	testsupport.RequireFUSE(t)
	src, files := fakeDataDir(t)
	repo := filepath.Join(t.TempDir(), "repo")
	code, out, errs := runCLI(t, "backup", "--repo", repo, "--pgdata", src)
	require.Equal(t, 0, code, errs)
	id := lastLine(out)

	home := t.TempDir()
	mnt := filepath.Join(t.TempDir(), "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	me, err := user.Current()
	require.NoError(t, err)
	mount := func(t *testing.T, extra ...string) *proc {
		t.Helper()
		args := append([]string{"--home", home, "mount", "--repo", repo, "--restore-point", "latest", "--owner", me.Username}, extra...)
		p := startProc(t, append(args, mnt)...)
		line := p.waitStdout(t, "mounted ")
		require.Contains(t, line, id)
		require.Contains(t, line, mnt)
		require.True(t, testsupport.IsMounted(t, mnt))
		return p
	}
	cowLeft := func(t *testing.T) []os.DirEntry {
		ents, err := os.ReadDir(filepath.Join(home, "cow"))
		require.NoError(t, err)
		return ents
	}

	t.Run("read and SIGINT", func(t *testing.T) {
		p := mount(t)
		for name, want := range files {
			got, err := os.ReadFile(filepath.Join(mnt, name))
			require.NoError(t, err, name)
			require.Equal(t, want, got, name)
		}
		// A write goes to the CoW layer, which SIGINT discards.
		require.NoError(t, os.WriteFile(filepath.Join(mnt, "postmaster.pid"), []byte("1\n"), 0o600))
		require.NoError(t, p.cmd.Process.Signal(os.Interrupt))
		require.Equal(t, 0, p.wait(t), p.stderr.String())
		require.False(t, testsupport.IsMounted(t, mnt), "still mounted after SIGINT")
		require.Empty(t, cowLeft(t), "the CoW layer is discarded")
	})

	t.Run("SIGKILL then remount", func(t *testing.T) {
		p := mount(t)
		p.kill(t)
		_, err := os.ReadDir(mnt)
		require.ErrorIs(t, err, syscall.ENOTCONN, "a killed mount leaves a dead FUSE mount")
		q := mount(t)
		got, err := os.ReadFile(filepath.Join(mnt, "PG_VERSION"))
		require.NoError(t, err)
		require.Equal(t, "15\n", string(got))
		require.NoError(t, q.cmd.Process.Signal(syscall.SIGTERM))
		require.Equal(t, 0, q.wait(t), q.stderr.String())
		require.Contains(t, q.stderr.String(), "stale mount")
		require.False(t, testsupport.IsMounted(t, mnt))
		// A killed mount cannot discard its layer; remove it.
		for _, e := range cowLeft(t) {
			require.NoError(t, os.RemoveAll(filepath.Join(home, "cow", e.Name())))
		}
	})

	t.Run("busy then detached", func(t *testing.T) {
		cow := filepath.Join(t.TempDir(), "cow")
		p := mount(t, "--cow-dir", cow, "--keep-cow")
		f, err := os.Open(filepath.Join(mnt, "base/1/16384"))
		require.NoError(t, err)
		defer f.Close()
		require.NoError(t, p.cmd.Process.Signal(os.Interrupt))
		require.Equal(t, 0, p.wait(t), p.stderr.String())
		require.Contains(t, p.stderr.String(), "pid "+strconv.Itoa(os.Getpid()), "names the process keeping the mount busy")
		require.Contains(t, p.stderr.String(), "detaching it lazily")
		require.False(t, testsupport.IsMounted(t, mnt), "detached")
		require.Contains(t, p.lastLine(), "kept the copy-on-write layer in "+cow)
		_, err = os.Stat(cow)
		require.NoError(t, err, "--keep-cow keeps the layer")
	})
}

func TestMountCLIErrors(t *testing.T) {
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	r, err := chunkstore.OpenRepo(context.Background(), repo, nil)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.Mkdir(empty, 0o755))
	full := filepath.Join(dir, "full")
	require.NoError(t, os.MkdirAll(filepath.Join(full, "x"), 0o755))
	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))

	for _, tc := range []struct {
		name string
		args []string
		code int
		err  string
	}{
		{"no mountpoint", []string{"mount", "--repo", repo, "--restore-point", "latest"}, exitUsage, "exactly one MOUNTPOINT"},
		{"no repo", []string{"mount", "--restore-point", "latest", empty}, exitUsage, "--repo"},
		{"no restore point", []string{"mount", "--repo", repo, empty}, exitUsage, "--restore-point"},
		{"missing mountpoint", []string{"mount", "--repo", repo, "--restore-point", "latest", filepath.Join(dir, "nope")}, exitUsage, "does not exist"},
		{"mountpoint is a file", []string{"mount", "--repo", repo, "--restore-point", "latest", file}, exitUsage, "is not a directory"},
		{"mountpoint not empty", []string{"mount", "--repo", repo, "--restore-point", "latest", full}, exitUsage, "is not empty"},
		{"unknown restore point", []string{"mount", "--repo", repo, "--restore-point", "rp-nope", empty}, exitNotFound, `no such restore point: "rp-nope"`},
		{"no restore points", []string{"mount", "--repo", repo, "--restore-point", "latest", empty}, exitNotFound, "no restore points"},
		{"missing repo", []string{"mount", "--repo", filepath.Join(dir, "norepo"), "--restore-point", "latest", empty}, exitNotFound, "not a repository"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := runCLI(t, tc.args...)
			require.Equal(t, tc.code, code, errs)
			require.Contains(t, errs, tc.err)
		})
	}
	_, err = os.Stat(filepath.Join(dir, "norepo"))
	require.ErrorIs(t, err, os.ErrNotExist, "mount does not create a repository")
}

// TestMountRepoPeerCLI mounts a restore point served by another mover
// process: the mover trusted with read reads every file back; one trusted
// only with send is refused with a message naming the missing permission.
func TestMountRepoPeerCLI(t *testing.T) {
	testsupport.RequireFUSE(t)
	src, files := fakeDataDir(t)
	repo := filepath.Join(t.TempDir(), "repo")
	code, out, errs := runCLI(t, "backup", "--repo", repo, "--pgdata", src)
	require.Equal(t, 0, code, errs)
	id := lastLine(out)

	srvHome, srvID := initMoverHome(t)
	stagingHome, stagingID := initMoverHome(t)
	senderHome, senderID := initMoverHome(t)
	code, _, errs = runCLI(t, "mover", "trust", stagingID, "--allow", "read", "--home", srvHome)
	require.Equal(t, 0, code, errs)
	code, _, errs = runCLI(t, "mover", "trust", senderID, "--allow", "send", "--home", srvHome)
	require.Equal(t, 0, code, errs)
	srv := startProc(t, "--home", srvHome, "mover", "serve", "--listen", "127.0.0.1:0", "--repo", repo)
	peer := srv.waitListening(t) + "#" + srvID

	mnt := filepath.Join(t.TempDir(), "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	me, err := user.Current()
	require.NoError(t, err)

	t.Run("read", func(t *testing.T) {
		p := startProc(t, "--home", stagingHome, "mount", "--repo-peer", peer, "--restore-point", "latest", "--owner", me.Username, mnt)
		line := p.waitStdout(t, "mounted ")
		require.Contains(t, line, id)
		for name, want := range files {
			got, err := os.ReadFile(filepath.Join(mnt, name))
			require.NoError(t, err, name)
			require.Equal(t, want, got, name)
		}
		require.NoError(t, p.cmd.Process.Signal(os.Interrupt))
		require.Equal(t, 0, p.wait(t), p.stderr.String())
		require.False(t, testsupport.IsMounted(t, mnt))
	})

	t.Run("send only is refused", func(t *testing.T) {
		code, _, errs := runCLI(t, "--home", senderHome, "mount", "--repo-peer", peer, "--restore-point", "latest", mnt)
		require.Equal(t, exitPermission, code, errs)
		require.Contains(t, errs, "lacks permission read")
		require.False(t, testsupport.IsMounted(t, mnt))
	})

	t.Run("usage", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			err  string
		}{
			{[]string{"--repo", repo, "--repo-peer", peer}, "not both"},
			{[]string{"--repo-peer", "127.0.0.1:1"}, "ADDR#PEER_ID"},
			{[]string{"--repo-peer", "nohost#" + srvID}, "mover address"},
			{[]string{"--repo-peer", "127.0.0.1:1#nope"}, "mover address"},
		} {
			code, _, errs := runCLI(t, append(append([]string{"--home", stagingHome, "mount"}, tc.args...), "--restore-point", "latest", mnt)...)
			require.Equal(t, exitUsage, code, errs)
			require.Contains(t, errs, tc.err)
		}
		code, _, errs := runCLI(t, "--home", stagingHome, "mount", "--repo-peer", peer, "--restore-point", "rp-nope", mnt)
		require.Equal(t, exitNotFound, code, errs)
		require.Contains(t, errs, "no such restore point")
	})

	require.NoError(t, srv.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, 0, srv.wait(t), srv.stderr.String())
}
