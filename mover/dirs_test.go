package mover

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// TestSendDirModes guards against the receiver making every directory 0700
// (issue 19: 0755 came out 0700) and dropping empty ones, and checks that a
// mode from the peer is hostile input: the sender passes setuid, setgid,
// sticky and world-writable bits on as they are on disk, and the receiver
// keeps none of them.
func TestSendDirModes(t *testing.T) {
	r := startReceiver(t, ServerOptions{Reserve: 1})
	src := t.TempDir()
	modes := map[string]fs.FileMode{
		".":           0o750,
		"pub":         0o755,
		"pub/empty":   0o711,
		"locked":      0o500,
		"hostile":     fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky | 0o777,
		"hostile/sub": fs.ModeSetgid | 0o775,
	}
	for _, d := range []string{"pub/empty", "locked", "hostile/sub"} {
		require.NoError(t, os.MkdirAll(filepath.Join(src, d), 0o700))
	}
	require.NoError(t, os.WriteFile(filepath.Join(src, "pub", "f.dat"), []byte("data"), 0o644))
	for d, m := range modes {
		require.NoError(t, os.Chmod(filepath.Join(src, d), m))
	}
	// Each directory's modification time arrives too (protocol 10), the
	// root's and an empty one's included: set last, as rsync -a does.
	times := map[string]time.Time{}
	for i, d := range []string{".", "pub", "pub/empty", "locked", "hostile", "hostile/sub"} {
		times[d] = time.Date(2025, 1, 2, 3, 4, 5, i*1000, time.UTC)
		require.NoError(t, os.Chtimes(filepath.Join(src, d), times[d], times[d]))
	}
	dest := filepath.Join(r.root, "modes")
	s := newTestSender(t, r, PermSend)
	res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
	require.NoError(t, err)
	require.Equal(t, 6, res.Dirs)
	want := map[string]fs.FileMode{".": 0o750, "pub": 0o755, "pub/empty": 0o711, "locked": 0o700, "hostile": 0o755, "hostile/sub": 0o755}
	for d, m := range want {
		fi, err := os.Lstat(filepath.Join(dest, d))
		require.NoError(t, err, d)
		require.True(t, fi.IsDir(), d)
		require.Equal(t, fs.ModeDir|m, fi.Mode(), "mode of %s", d)
		require.True(t, times[d].Equal(fi.ModTime()), "time of %s: %v, sent %v", d, fi.ModTime(), times[d])
	}
	_, err = Verify(context.Background(), dest)
	require.NoError(t, err)
}

// TestSendDirTimesToOldReceiver: a receiver of protocol 9 gets the
// directories and their modes but no DirTime (it would refuse one).
func TestSendDirTimesToOldReceiver(t *testing.T) {
	asVersion(t, protocol.DirTimeVersion-1)
	r := startReceiver(t, ServerOptions{Reserve: 1})
	src := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(src, "empty"), 0o751))
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	require.NoError(t, os.Chtimes(filepath.Join(src, "empty"), old, old))
	dest := filepath.Join(r.root, "v9")
	s := newTestSender(t, r, PermSend)
	res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
	require.NoError(t, err)
	require.Equal(t, 2, res.Dirs)
	fi, err := os.Stat(filepath.Join(dest, "empty"))
	require.NoError(t, err)
	require.Equal(t, fs.ModeDir|0o751, fi.Mode())
	require.True(t, fi.ModTime().After(old), "no time is sent below protocol 10")
}

// TestSendDirsToOldReceiver: a receiver below protocol 8 gets no Dir (it
// would refuse one) and no overwrite; the files arrive as before.
func TestSendDirsToOldReceiver(t *testing.T) {
	asVersion(t, protocol.DirVersion-1)
	r := startReceiver(t, ServerOptions{Reserve: 1})
	src := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(src, "empty"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "f.dat"), []byte("data"), 0o644))
	dest := filepath.Join(r.root, "old")
	m := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "sender", Perms: PermSend, Added: time.Now()}))
	log := &testsupport.Buffer{}
	s, err := NewSender(m.home, slog.New(slog.NewTextHandler(log, nil)))
	require.NoError(t, err)
	defer s.Close()
	res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
	require.NoError(t, err)
	require.Zero(t, res.Dirs)
	require.FileExists(t, filepath.Join(dest, "f.dat"))
	require.NoDirExists(t, filepath.Join(dest, "empty"))
	require.Contains(t, log.String(), "directory modes and empty directories are not sent")

	_, err = s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, TransferID: "t-other", Overwrite: true, RetryFor: -1})
	require.ErrorIs(t, err, protocol.ErrVersion)
	require.Contains(t, err.Error(), "needs 8")
}

// rawDirs opens a transfer on a raw connection and sends msgs as they are
// (unchecked, as a hostile sender would), then returns the receiver's
// Error.
func rawDirs(t *testing.T, r *testReceiver, open *protocol.OpenTransfer, msgs ...protocol.Message) error {
	t.Helper()
	s := dialRaw(t, r)
	_, err := s.cs.rw.Write(protocol.AppendFrame(nil, open))
	require.NoError(t, err)
	m, err := s.cs.next()
	if err != nil {
		return err
	}
	require.IsType(t, &protocol.TransferState{}, m)
	for _, m := range msgs {
		if _, err := s.cs.rw.Write(protocol.AppendFrame(nil, m)); err != nil {
			break // refused already
		}
	}
	return s.nextError(t)
}

// TestHostileDirs: directories from the wire are confined, unique, before
// the files, bounded in number, and only on protocol 8.
func TestHostileDirs(t *testing.T) {
	content := []byte("hello")
	file := func(p string) []protocol.Message {
		return []protocol.Message{
			&protocol.FileHeader{Path: p, Mode: 0o644, Size: 5, NumChunks: 1},
			&protocol.FileChunks{Chunks: []protocol.ChunkRef{{ID: chunk.Sum(content), Len: 5}}},
			&protocol.FileEnd{Size: 5, Hash: oneChunkListHash(content)},
			&protocol.ManifestEnd{Files: 1},
		}
	}
	open := func(files uint64) *protocol.OpenTransfer {
		return &protocol.OpenTransfer{TransferID: "t-raw", Params: chunk.DefaultParams, Files: files, Bytes: 5 * files}
	}
	tests := []struct {
		name string
		msgs []protocol.Message
		want error
		text string
	}{
		{"traversal", []protocol.Message{&protocol.Dir{Path: "../evil", Mode: 0o755}}, protocol.ErrBadPath, ""},
		{"absolute", []protocol.Message{&protocol.Dir{Path: "/tmp/evil", Mode: 0o755}}, protocol.ErrBadPath, ""},
		{"mode with type bits", []protocol.Message{&protocol.Dir{Path: "a", Mode: 0o40755}}, protocol.ErrProtocol, ""},
		{"manifest name", []protocol.Message{&protocol.Dir{Path: ManifestName, Mode: 0o755}}, protocol.ErrBadPath, "reserved"},
		{"twice", []protocol.Message{&protocol.Dir{Path: "a", Mode: 0o755}, &protocol.Dir{Path: "a", Mode: 0o700}}, protocol.ErrBadPath, "listed twice"},
		{"after a file", append(file("f")[:3], &protocol.Dir{Path: "a", Mode: 0o755}), protocol.ErrProtocol, "after the first file"},
		{"a file's name", append([]protocol.Message{&protocol.Dir{Path: "f", Mode: 0o755}}, file("f")...), protocol.ErrBadPath, "as a directory and as a file"},
		{"inside a file", append([]protocol.Message{&protocol.Dir{Path: "f/sub", Mode: 0o755}}, file("f")...), protocol.ErrBadPath, "inside the file f"},
		{"too many", []protocol.Message{&protocol.Dir{Path: "a", Mode: 0o755}, &protocol.Dir{Path: "b", Mode: 0o755}, &protocol.Dir{Path: "c", Mode: 0o755}}, protocol.ErrTooLarge, "more than 2 directories"},
		{"time of an unlisted directory", []protocol.Message{&protocol.DirTime{Path: "a", MTime: 1}}, protocol.ErrProtocol, "which no Dir listed"},
		{"time twice", []protocol.Message{&protocol.Dir{Path: "a", Mode: 0o755}, &protocol.DirTime{Path: "a", MTime: 1}, &protocol.DirTime{Path: "a", MTime: 2}}, protocol.ErrProtocol, "given twice"},
		{"time after a file", append(append([]protocol.Message{&protocol.Dir{Path: "a", Mode: 0o755}}, file("f")[:3]...), &protocol.DirTime{Path: "a", MTime: 1}), protocol.ErrProtocol, "after the first file"},
		{"time traversal", []protocol.Message{&protocol.DirTime{Path: "../evil", MTime: 1}}, protocol.ErrBadPath, ""},
	}
	defer func(n int) { maxDirs = n }(maxDirs)
	maxDirs = 2
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := startReceiver(t, ServerOptions{})
			o := open(1)
			o.Dest = filepath.Join(r.root, "d")
			err := rawDirs(t, r, o, tc.msgs...)
			require.ErrorIs(t, err, tc.want)
			require.Contains(t, err.Error(), tc.text)
			require.NoDirExists(t, o.Dest)
			require.NoDirExists(t, filepath.Join(filepath.Dir(r.root), "evil"))
		})
	}

	t.Run("below protocol 10", func(t *testing.T) {
		asVersion(t, protocol.DirTimeVersion-1)
		r := startReceiver(t, ServerOptions{})
		o := open(1)
		o.Dest = filepath.Join(r.root, "d")
		err := rawDirs(t, r, o, &protocol.Dir{Path: "a", Mode: 0o755}, &protocol.DirTime{Path: "a", MTime: 1})
		require.ErrorIs(t, err, protocol.ErrProtocol)
		require.Contains(t, err.Error(), "DirTime needs protocol 10")
	})

	t.Run("below protocol 8", func(t *testing.T) {
		asVersion(t, protocol.DirVersion-1)
		r := startReceiver(t, ServerOptions{})
		o := open(1)
		o.Dest = filepath.Join(r.root, "d")
		err := rawDirs(t, r, o, &protocol.Dir{Path: "a", Mode: 0o755})
		require.ErrorIs(t, err, protocol.ErrProtocol)
		require.Contains(t, err.Error(), "Dir needs protocol 8")

		o.Flags = protocol.FlagOverwrite
		s := dialRaw(t, r)
		_, err = s.cs.rw.Write(protocol.AppendFrame(nil, o))
		require.NoError(t, err)
		err = s.nextError(t)
		require.ErrorIs(t, err, protocol.ErrProtocol)
		require.Contains(t, err.Error(), "flags need protocol 8")
	})
}

// TestSendOverwrite: an existing DEST is refused without Overwrite and
// replaced with it; only a directory is replaced; nothing is left aside.
func TestSendOverwrite(t *testing.T) {
	r := startReceiver(t, ServerOptions{Reserve: 1})
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "new.dat"), []byte("new"), 0o644))
	dest := filepath.Join(r.root, "dest")
	require.NoError(t, os.MkdirAll(filepath.Join(dest, "old"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dest, "old", "old.dat"), []byte("old"), 0o644))
	s := newTestSender(t, r, PermSend)
	ctx := context.Background()

	_, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
	require.ErrorIs(t, err, protocol.ErrConflict)
	require.FileExists(t, filepath.Join(dest, "old", "old.dat"))

	_, err = s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, Overwrite: true, RetryFor: -1})
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(dest, "new.dat"))
	require.NoDirExists(t, filepath.Join(dest, "old"))
	entries, err := os.ReadDir(r.root)
	require.NoError(t, err)
	require.Len(t, entries, 1, "only dest is left in the root: %v", entries)

	// A file (or a link) at DEST is not replaced.
	file := filepath.Join(r.root, "file")
	require.NoError(t, os.WriteFile(file, []byte("x"), 0o644))
	_, err = s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: file, Overwrite: true, RetryFor: -1})
	require.ErrorIs(t, err, protocol.ErrConflict)
	require.Contains(t, err.Error(), "replaces only a directory")
	got, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Equal(t, "x", string(got))
}

// TestOverwriteInterrupted: a crash between moving the old DEST aside and
// renaming the new one into place leaves the commit record naming the
// aside; the next open of the transfer puts the old DEST back.
func TestOverwriteInterrupted(t *testing.T) {
	r := startReceiver(t, ServerOptions{Reserve: 1})
	dest := filepath.Join(r.root, "dest")
	const tid = "t-interrupted"
	aside := AsideName("dest", tid)
	require.NoError(t, os.MkdirAll(filepath.Join(r.root, aside), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(r.root, aside, "old.dat"), []byte("old"), 0o644))
	c, err := json.Marshal(commitRecord{Dest: dest, Files: 1, Bytes: 3, Aside: aside})
	require.NoError(t, err)
	require.NoError(t, r.srv.db.Set(keyCommit(tid), c, pebble.Sync))

	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "new.dat"), []byte("new"), 0o644))
	s := newTestSender(t, r, PermSend)
	_, err = s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, TransferID: tid, RetryFor: -1})
	require.ErrorIs(t, err, protocol.ErrConflict, "the old DEST is back, and not this transfer's")
	got, err := os.ReadFile(filepath.Join(dest, "old.dat"))
	require.NoError(t, err)
	require.Equal(t, "old", string(got))
	_, err = os.Lstat(filepath.Join(r.root, aside))
	require.True(t, errors.Is(err, fs.ErrNotExist))
	require.Contains(t, r.log.String(), "put back a destination whose replacement was interrupted")

	// The same transfer with Overwrite then replaces it.
	_, err = s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, TransferID: tid, Overwrite: true, RetryFor: -1})
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(dest, "new.dat"))
	require.NoFileExists(t, filepath.Join(dest, "old.dat"))
}

// TestSendSpecialFiles: every special entry is listed in the refusal, and
// SkipSpecial sends the rest.
func TestSendSpecialFiles(t *testing.T) {
	r := startReceiver(t, ServerOptions{Reserve: 1})
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "a.dat"), []byte("a"), 0o644))
	require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(src, "l1")))
	require.NoError(t, os.MkdirAll(filepath.Join(src, "d"), 0o755))
	require.NoError(t, os.Symlink("..", filepath.Join(src, "d", "up")))
	s := newTestSender(t, r, PermSend)
	dest := filepath.Join(r.root, "sp")
	_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
	se, ok := errors.AsType[*SpecialFilesError](err)
	require.True(t, ok, "%v", err)
	require.ErrorIs(t, err, ErrUnsupportedFile)
	require.Equal(t, []SkippedEntry{{"d/up", "symlink"}, {"l1", "symlink"}}, se.Entries)
	require.NoDirExists(t, dest)
	require.NoDirExists(t, dest+".partial")

	res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, SkipSpecial: true, RetryFor: -1})
	require.NoError(t, err)
	require.Equal(t, se.Entries, res.Skipped)
	require.Equal(t, 1, res.Files)
	require.DirExists(t, filepath.Join(dest, "d"))
	_, err = os.Lstat(filepath.Join(dest, "l1"))
	require.True(t, errors.Is(err, fs.ErrNotExist))
}

// TestSendSingleFile: a file lands in the directory Dest under its name.
func TestSendSingleFile(t *testing.T) {
	r := startReceiver(t, ServerOptions{Reserve: 1})
	f := filepath.Join(t.TempDir(), "base.tar")
	require.NoError(t, os.WriteFile(f, pgbenchLike(300<<10, 3), 0o640))
	dest := filepath.Join(r.root, "one")
	s := newTestSender(t, r, PermSend)
	res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: f, Dest: dest, RetryFor: -1})
	require.NoError(t, err)
	require.Equal(t, 1, res.Files)
	want, err := os.ReadFile(f)
	require.NoError(t, err)
	got, err := os.ReadFile(filepath.Join(dest, "base.tar"))
	require.NoError(t, err)
	require.Equal(t, want, got)
	fi, err := os.Stat(dest)
	require.NoError(t, err)
	require.Equal(t, fs.ModeDir|0o755, fi.Mode())
	fi, err = os.Stat(filepath.Join(dest, "base.tar"))
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o640), fi.Mode())
}

// TestDirsLost: the warning to an old receiver is for trees that lose
// something there (a dump directory of 0700 with only files loses nothing).
func TestDirsLost(t *testing.T) {
	files := []*srcFile{{Path: "a/f"}, {Path: "g"}}
	require.False(t, dirsLost([]protocol.Dir{{Path: ".", Mode: 0o700}, {Path: "a", Mode: 0o700}}, files))
	require.True(t, dirsLost([]protocol.Dir{{Path: ".", Mode: 0o755}}, files), "a mode")
	require.True(t, dirsLost([]protocol.Dir{{Path: ".", Mode: 0o700}, {Path: "e", Mode: 0o700}}, files), "an empty directory")
}
