package chunkstore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
)

// fakeDataDir builds a small directory shaped like a PostgreSQL data
// directory, with the odd cases a real one may have: a tablespace symlink
// pointing nowhere, a socket-like special file, an empty file, and names
// whose walk order differs from byte order ("a/b" against "a-b").
func fakeDataDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	write := func(rel string, data []byte) {
		p := filepath.Join(d, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o700))
		require.NoError(t, os.WriteFile(p, data, 0o600))
	}
	write("PG_VERSION", []byte("15\n"))
	ctl := make([]byte, 8192)
	binary.LittleEndian.PutUint64(ctl, 7311111111111111111)
	write("global/pg_control", ctl)
	rnd := make([]byte, 3<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range rnd {
		rnd[i] = byte(r.Uint32())
	}
	write("base/5/16384", rnd)
	write("base/5/16384_fsm", make([]byte, 24576))
	write("base/1/1259", rnd[:100000])
	write("a/b", []byte("ab"))
	write("a-b", nil)
	require.NoError(t, os.Chmod(filepath.Join(d, "a-b"), 0o640))
	require.NoError(t, os.MkdirAll(filepath.Join(d, "pg_tblspc"), 0o700))
	require.NoError(t, os.Symlink("/nonexistent/ts", filepath.Join(d, "pg_tblspc", "16400")))
	require.NoError(t, syscall.Mkfifo(filepath.Join(d, "fifo"), 0o600))
	return d
}

func openRepo(t *testing.T, dir string) *chunkstore.Repo {
	t.Helper()
	r, err := chunkstore.OpenRepo(context.Background(), dir, nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	return r
}

// checkRestorePoint compares rp's tree with the directory src, and every
// file's content, read back from the store, with the file in src.
func checkRestorePoint(t *testing.T, r *chunkstore.Repo, rp *chunkstore.RestorePoint, src string) []chunkstore.Node {
	t.Helper()
	ctx := context.Background()
	nodes, err := r.Tree(ctx, rp)
	require.NoError(t, err)
	var files int
	var size int64
	for _, n := range nodes {
		p := filepath.Join(src, filepath.FromSlash(n.Path))
		fi, err := os.Lstat(p)
		require.NoError(t, err, n.Path)
		require.Equal(t, uint32(fi.Mode().Perm()), n.Mode, n.Path)
		require.Equal(t, fi.ModTime().UnixNano(), n.MTime, n.Path)
		st := fi.Sys().(*syscall.Stat_t)
		require.Equal(t, st.Uid, n.UID, n.Path)
		require.Equal(t, st.Gid, n.GID, n.Path)
		switch n.Type {
		case chunkstore.NodeDir:
			require.True(t, fi.IsDir(), n.Path)
		case chunkstore.NodeSymlink:
			target, err := os.Readlink(p)
			require.NoError(t, err)
			require.Equal(t, target, n.Target)
		case chunkstore.NodeFile:
			files++
			size += n.Size
			want, err := os.ReadFile(p)
			require.NoError(t, err)
			require.Equal(t, int64(len(want)), n.Size, n.Path)
			var got []byte
			for _, c := range n.Chunks {
				before := len(got)
				got, err = r.Store().Get(ctx, c.ID, got)
				require.NoError(t, err)
				require.Equal(t, int(c.Len), len(got)-before)
			}
			require.True(t, bytes.Equal(want, got), "content of %s differs", n.Path)
		}
	}
	require.Equal(t, rp.Files, files)
	require.Equal(t, rp.Size, size)
	return nodes
}

func TestBackupFakeDataDir(t *testing.T) {
	ctx := context.Background()
	src := fakeDataDir(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	r := openRepo(t, repoDir)

	rp, err := r.Backup(ctx, src, chunkstore.BackupOptions{SourceHost: "db1"})
	require.NoError(t, err)
	require.Equal(t, "15", rp.PGVersion)
	require.Equal(t, "7311111111111111111", rp.SystemID)
	require.Equal(t, "db1", rp.SourceHost)
	require.Equal(t, 7, rp.Files)
	require.Equal(t, []chunkstore.DBInfo{{OID: 1, Size: 100000}, {OID: 5, Size: 3<<20 + 24576}}, rp.Databases)
	require.Regexp(t, `^rp-\d{8}T\d{6}Z-[0-9a-f]{6}$`, rp.ID)
	require.Positive(t, rp.StoredSize)

	nodes := checkRestorePoint(t, r, rp, src)
	var paths []string
	for _, n := range nodes {
		paths = append(paths, n.Path)
	}
	require.Equal(t, []string{"PG_VERSION", "a", "a-b", "a/b", "base", "base/1", "base/1/1259", "base/5", "base/5/16384",
		"base/5/16384_fsm", "global", "global/pg_control", "pg_tblspc", "pg_tblspc/16400"}, paths)

	// Unchanged: the second backup stores only its restore point's tree,
	// if even that.
	rp2, err := r.Backup(ctx, src, chunkstore.BackupOptions{})
	require.NoError(t, err)
	require.Less(t, rp2.StoredSize, int64(4096))
	require.Equal(t, rp.Tree, rp2.Tree, "same content, same tree chunks")

	list, err := r.List()
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, rp.ID, list[0].ID)
	latest, err := r.Resolve("latest")
	require.NoError(t, err)
	require.Equal(t, rp2.ID, latest.ID)
	got, err := r.Resolve(rp.ID)
	require.NoError(t, err)
	require.Equal(t, rp.ID, got.ID)
	_, err = r.Resolve("rp-19700101T000000Z-000000")
	require.ErrorIs(t, err, chunkstore.ErrNoRestorePoint)

	// Reopened, the repository lists the same points.
	require.NoError(t, r.Close())
	r2 := openRepo(t, repoDir)
	list2, err := r2.List()
	require.NoError(t, err)
	require.Equal(t, len(list), len(list2))
	for i := range list {
		require.Equal(t, list[i].ID, list2[i].ID)
		require.True(t, list[i].Time.Equal(list2[i].Time))
	}
	checkRestorePoint(t, r2, &list2[0], src)

	// ListRepo reads the catalog while the store is open.
	list3, err := chunkstore.ListRepo(context.Background(), repoDir)
	require.NoError(t, err)
	require.Len(t, list3, 2)
	_, err = chunkstore.ListRepo(context.Background(), t.TempDir())
	require.ErrorIs(t, err, chunkstore.ErrNotRepo)
}

func TestRepoEmpty(t *testing.T) {
	r := openRepo(t, t.TempDir())
	list, err := r.List()
	require.NoError(t, err)
	require.Empty(t, list)
	_, err = r.Resolve("latest")
	require.ErrorIs(t, err, chunkstore.ErrNoRestorePoint)
}

func TestBackupNotADataDir(t *testing.T) {
	r := openRepo(t, t.TempDir())
	_, err := r.Backup(context.Background(), t.TempDir(), chunkstore.BackupOptions{})
	require.ErrorContains(t, err, "not a PostgreSQL data directory")
	list, err := r.List()
	require.NoError(t, err)
	require.Empty(t, list)
}

// Guards against a restore point becoming visible, or the store refusing
// later writes, when a backup is cancelled midway.
func TestBackupCancelFakeDataDir(t *testing.T) {
	src := fakeDataDir(t)
	repoDir := t.TempDir()
	r := openRepo(t, repoDir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := r.Backup(ctx, src, chunkstore.BackupOptions{Workers: 1, Progress: func(done, total int64) {
		if done > 0 {
			cancel()
		}
	}})
	require.ErrorIs(t, err, context.Canceled)
	list, err := r.List()
	require.NoError(t, err)
	require.Empty(t, list)
	ents, err := os.ReadDir(filepath.Join(repoDir, "points"))
	require.NoError(t, err)
	require.Empty(t, ents)

	rp, err := r.Backup(context.Background(), src, chunkstore.BackupOptions{})
	require.NoError(t, err)
	checkRestorePoint(t, r, rp, src)
}
