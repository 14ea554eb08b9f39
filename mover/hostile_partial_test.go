package mover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// victimDir makes a directory of someone else's files inside the root.
func victimDir(t *testing.T, root string) string {
	t.Helper()
	v := filepath.Join(root, "victim")
	require.NoError(t, os.MkdirAll(v, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(v, "precious.txt"), []byte("precious"), 0o644))
	return v
}

func requireVictimIntact(t *testing.T, v string) {
	t.Helper()
	entries, err := os.ReadDir(v)
	require.NoError(t, err)
	require.Len(t, entries, 1, "nothing may be added to or removed from the victim")
	got, err := os.ReadFile(filepath.Join(v, "precious.txt"))
	require.NoError(t, err)
	require.Equal(t, "precious", string(got))
}

// TestHostilePlantedPartial guards against issue 15's planted DEST.partial:
// a link at DEST.partial (to a directory in the root or outside it) or a
// directory this mover did not create is never written into, pruned or
// committed. Before the fix, `ln -s victim root/d2.partial` made a send
// delete the victim's files and commit d2 as a link to it.
func TestHostilePlantedPartial(t *testing.T) {
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "a.dat"), randomBytes(1<<20, 1), 0o644))
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, partial, victim string)
	}{
		{"link to a directory in the root", func(t *testing.T, partial, victim string) {
			require.NoError(t, os.Symlink("victim", partial))
		}},
		{"link to a directory outside the root", func(t *testing.T, partial, victim string) {
			out := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(out, "precious.txt"), []byte("precious"), 0o644))
			require.NoError(t, os.Symlink(out, partial))
			t.Cleanup(func() { requireVictimIntact(t, out) })
		}},
		{"directory the mover did not create", func(t *testing.T, partial, victim string) {
			require.NoError(t, os.Rename(victim, partial))
			require.NoError(t, os.Symlink(filepath.Base(partial), victim))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startReceiver(t, ServerOptions{Reserve: 1})
			victim := victimDir(t, r.root)
			dest := filepath.Join(r.root, "d2")
			tc.plant(t, dest+".partial", victim)
			s := newTestSender(t, r, PermSend)
			_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
			require.ErrorIs(t, err, protocol.ErrConflict)
			require.ErrorContains(t, err, "not made by this mover")
			require.ErrorContains(t, err, "remove it")
			requireVictimIntact(t, victim)
			_, err = os.Lstat(dest)
			require.ErrorIs(t, err, fs.ErrNotExist, "nothing is committed")
		})
	}
}

// TestHostilePartialSwappedInRoot: DEST.partial replaced mid-transfer by a
// directory of the same owner inside the root. The transfer's writes stay
// in the directory it created (held open), and the check before the rename
// refuses to commit the impostor.
func TestHostilePartialSwappedInRoot(t *testing.T) {
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "a.dat"), randomBytes(3<<20, 2), 0o644))
	var (
		mu      sync.Mutex // guards swapped, swapErr
		swapped bool
		swapErr error
		dest    string
		victim  string
	)
	swap := func(string, int64) {
		mu.Lock()
		defer mu.Unlock()
		if swapped {
			return
		}
		swapped = true
		p := dest + ".partial"
		if swapErr = os.Rename(p, p+".moved"); swapErr == nil {
			swapErr = os.Rename(victim, p)
		}
	}
	r := startReceiver(t, ServerOptions{Reserve: 1, SyncBytes: 1 << 20, SyncInterval: 10 * time.Millisecond, OnDurable: swap})
	victim = victimDir(t, r.root)
	dest = filepath.Join(r.root, "d3")
	s := newTestSender(t, r, PermSend)
	_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, BWLimit: 8 << 20, Compression: "none", RetryFor: -1})
	mu.Lock()
	require.True(t, swapped)
	require.NoError(t, swapErr)
	mu.Unlock()
	require.ErrorIs(t, err, protocol.ErrConflict)
	require.ErrorContains(t, err, "replaced while the transfer wrote it")
	requireVictimIntact(t, dest+".partial")
	require.NoDirExists(t, dest)
}

// TestHostileManifestTempLink guards against a link planted at the old,
// predictable name of the temporary manifest
// (root/.pgporter-<transfer>.manifest.tmp): the commit made through it
// overwrote the file it pointed at. The temporary manifest now has a
// random name inside DEST.partial and is created exclusively.
func TestHostileManifestTempLink(t *testing.T) {
	r := startReceiver(t, ServerOptions{Reserve: 1})
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "a.dat"), []byte("dump data"), 0o644))
	dest := filepath.Join(r.root, "d4")
	victim := filepath.Join(r.root, "other-transfer.dat")
	require.NoError(t, os.WriteFile(victim, []byte("precious"), 0o644))
	tid := TransferIDFor(src, dest, r.id.ID)
	require.NoError(t, os.Symlink(victim, filepath.Join(r.root, ".pgporter-"+tid+".manifest.tmp")))

	s := newTestSender(t, r, PermSend)
	_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
	require.NoError(t, err)
	got, err := os.ReadFile(victim)
	require.NoError(t, err)
	require.Equal(t, "precious", string(got), "the file behind the link is untouched")
	fi, err := os.Lstat(filepath.Join(dest, ManifestName))
	require.NoError(t, err)
	require.True(t, fi.Mode().IsRegular(), "the manifest is a file of its own")
	_, err = Verify(context.Background(), dest)
	require.NoError(t, err, "no temporary file is left in the tree")
}

// TestHostileForgedComplete guards against "already complete" answered for
// a tree the transfer never committed: a link DEST to a directory holding
// a hand-written manifest with the transfer's ID (the crash-recovery path,
// with no done record) made send answer already_complete and send nothing.
// Complete now means: a real directory whose manifest, read without
// following links, has the hash journaled before the rename.
func TestHostileForgedComplete(t *testing.T) {
	ctx := context.Background()
	r := startReceiver(t, ServerOptions{Reserve: 1})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "a.dat"), randomBytes(256<<10, 3), 0o644))
	forge := func(t *testing.T, dir, dest string) {
		t.Helper()
		require.NoError(t, os.MkdirAll(dir, 0o755))
		man := Manifest{Format: ManifestFormat, Transfer: TransferIDFor(src, dest, r.id.ID), Files: []ManifestFile{{Path: "a.dat", Size: 256 << 10}}, Bytes: 256 << 10}
		b, err := json.Marshal(man)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, ManifestName), b, 0o644))
	}

	t.Run("link to a forged tree, no records", func(t *testing.T) {
		dest := filepath.Join(r.root, "d5")
		forge(t, filepath.Join(r.root, "forged"), dest)
		require.NoError(t, os.Symlink("forged", dest))
		res, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
		require.ErrorIs(t, err, protocol.ErrConflict)
		require.False(t, res.AlreadyComplete)
	})

	// The state a crash between the rename and the done record leaves:
	// the tree in place, the commit record, no done record.
	crashAfterRename := func(t *testing.T, dest string) string {
		t.Helper()
		res, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
		require.NoError(t, err)
		v, ok, err := dbGet(r.srv.db, keyDone(res.TransferID))
		require.NoError(t, err)
		require.True(t, ok)
		var d transferDone
		require.NoError(t, json.Unmarshal(v, &d))
		c, _ := json.Marshal(commitRecord{Dest: d.Dest, Files: d.Files, Bytes: d.Bytes, ManifestHash: d.ManifestHash})
		require.NoError(t, r.srv.db.Set(keyCommit(res.TransferID), c, pebble.Sync))
		require.NoError(t, r.srv.db.Delete(keyDone(res.TransferID), pebble.Sync))
		return res.TransferID
	}
	t.Run("crash recovery accepts the committed tree", func(t *testing.T) {
		dest := filepath.Join(r.root, "d6")
		tid := crashAfterRename(t, dest)
		res, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
		require.NoError(t, err)
		require.True(t, res.AlreadyComplete)
		_, ok, err := dbGet(r.srv.db, keyDone(tid))
		require.NoError(t, err)
		require.True(t, ok, "the done record is written on recovery")
	})
	t.Run("crash recovery refuses a forged manifest", func(t *testing.T) {
		dest := filepath.Join(r.root, "d7")
		crashAfterRename(t, dest)
		require.NoError(t, os.RemoveAll(dest))
		forge(t, dest, dest)
		res, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
		require.ErrorIs(t, err, protocol.ErrConflict)
		require.ErrorContains(t, err, "not the tree this transfer committed")
		require.False(t, res.AlreadyComplete)
	})
	t.Run("crash recovery refuses a link to the committed tree", func(t *testing.T) {
		dest := filepath.Join(r.root, "d8")
		crashAfterRename(t, dest)
		require.NoError(t, os.Rename(dest, dest+".real"))
		require.NoError(t, os.Symlink("d8.real", dest))
		res, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
		require.ErrorIs(t, err, protocol.ErrConflict)
		require.False(t, res.AlreadyComplete)
	})
	t.Run("done record refuses a link", func(t *testing.T) {
		dest := filepath.Join(r.root, "d9")
		_, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
		require.NoError(t, err)
		require.NoError(t, os.Rename(dest, dest+".real"))
		forge(t, filepath.Join(r.root, "forged9"), dest)
		require.NoError(t, os.Symlink("forged9", dest))
		res, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
		require.ErrorIs(t, err, protocol.ErrConflict)
		require.False(t, res.AlreadyComplete)
	})
}

// TestHostileFileModes: modes the sender chooses are masked, so that no
// received file is writable by group or others (0666 was kept as is).
func TestHostileFileModes(t *testing.T) {
	r := startReceiver(t, ServerOptions{Reserve: 1})
	src := t.TempDir()
	for name, mode := range map[string]fs.FileMode{"rw.dat": 0o666, "rwx.sh": 0o777, "ro.dat": 0o444} {
		p := filepath.Join(src, name)
		require.NoError(t, os.WriteFile(p, []byte(name), 0o600))
		require.NoError(t, os.Chmod(p, mode))
	}
	dest := filepath.Join(r.root, "modes")
	s := newTestSender(t, r, PermSend)
	_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
	require.NoError(t, err)
	man, err := ReadManifest(dest)
	require.NoError(t, err)
	want := map[string]fs.FileMode{"rw.dat": 0o644, "rwx.sh": 0o755, "ro.dat": 0o444}
	for _, f := range man.Files {
		fi, err := os.Stat(filepath.Join(dest, f.Path))
		require.NoError(t, err)
		require.Equal(t, want[f.Path], fi.Mode().Perm(), f.Path)
		require.Equal(t, FileMode(want[f.Path]), f.Mode, "manifest mode of %s", f.Path)
	}
	require.Len(t, man.Files, 3)
}

// TestCrashAfterPartialMade reproduces a CI failure (TestExportKillRetry,
// 2026-12-07): a mover killed after creating DEST.partial and before
// journaling its record refused the retry ("no record of creating it").
// DEST.partial is now made under a random name journaled first, its
// identity journaled, then renamed into place: a crash at each of those
// points (left by a hook) leaves a state the retry finishes from, with no
// temporary directory left behind.
func TestCrashAfterPartialMade(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "a.dat"), randomBytes(1<<20, 4), 0o644))
	var (
		mu      sync.Mutex // guards crashAt
		crashAt string
	)
	r := startReceiver(t, ServerOptions{Reserve: 1, partialHook: func(at string) error {
		mu.Lock()
		defer mu.Unlock()
		if at == crashAt {
			return errors.New("crashed here (test)")
		}
		return nil
	}})
	s := newTestSender(t, r, PermSend)
	for i, at := range []string{"made", "journaled", "renamed"} {
		t.Run(at, func(t *testing.T) {
			dest := filepath.Join(r.root, fmt.Sprintf("c%d", i))
			mu.Lock()
			crashAt = at
			mu.Unlock()
			_, err := s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
			require.ErrorContains(t, err, "crashed here")
			v, ok, err := dbGet(r.srv.db, keyDest(dest))
			require.NoError(t, err)
			require.True(t, ok)
			rec := decodeDestRecord(v)
			require.NotEmpty(t, rec.Temp)
			require.Equal(t, at == "made", rec.Pending)
			if at == "renamed" {
				require.DirExists(t, dest+".partial")
			} else {
				require.NoDirExists(t, dest+".partial")
				require.DirExists(t, filepath.Join(r.root, rec.Temp), "the crash leaves the directory under its temporary name")
			}

			mu.Lock()
			crashAt = ""
			mu.Unlock()
			_, err = s.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, RetryFor: -1})
			require.NoError(t, err)
			requireSameTree(t, src, dest)
			entries, err := os.ReadDir(r.root)
			require.NoError(t, err)
			for _, e := range entries {
				require.False(t, strings.HasPrefix(e.Name(), filepath.Base(dest)+".partial"), "left behind: %s", e.Name())
			}
		})
	}
}

// TestPendingRecordAdoptsNothing (from a review): the record journaled
// before DEST.partial is made vouches for no directory. A transfer to
// outer/in crashed there; another peer then commits a tree at outer that
// holds an empty in.partial; the next transfer to outer/in must refuse
// that directory, not write into it and commit it as its own.
func TestPendingRecordAdoptsNothing(t *testing.T) {
	ctx := context.Background()
	var (
		mu    sync.Mutex // guards crash
		crash = true
	)
	r := startReceiver(t, ServerOptions{Reserve: 1, partialHook: func(at string) error {
		mu.Lock()
		defer mu.Unlock()
		if crash && at == "made" {
			return errors.New("crashed here (test)")
		}
		return nil
	}})
	p1 := newTestSender(t, r, PermSend)
	p2 := newTestSender(t, r, PermSend)
	src1 := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src1, "a.dat"), randomBytes(1<<20, 4), 0o644))
	outer := filepath.Join(r.root, "outer")
	in := filepath.Join(outer, "in")

	_, err := p1.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src1, Dest: in, RetryFor: -1})
	require.ErrorContains(t, err, "crashed here")
	mu.Lock()
	crash = false
	mu.Unlock()

	src2 := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src2, "keep.txt"), []byte("p2's"), 0o644))
	require.NoError(t, os.Mkdir(filepath.Join(src2, "in.partial"), 0o755))
	_, err = p2.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src2, Dest: outer, Overwrite: true, RetryFor: -1})
	require.NoError(t, err)
	require.DirExists(t, filepath.Join(outer, "in.partial"))

	src3 := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src3, "b.dat"), randomBytes(1<<20, 5), 0o644))
	_, err = p1.Send(ctx, r.addr, r.id.ID, SendOptions{Src: src3, Dest: in, RetryFor: -1})
	require.ErrorIs(t, err, protocol.ErrConflict)
	require.ErrorContains(t, err, "no record of creating it")
	require.DirExists(t, filepath.Join(outer, "in.partial"), "p2's directory stays in its tree")
	require.NoDirExists(t, in)
}
