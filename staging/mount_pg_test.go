package staging

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// treeFromDir stores dir's files in a fresh local chunk store and returns
// the tree that serves them, as a backup of a stopped cluster would.
func treeFromDir(t *testing.T, dir string) ([]chunkstore.Node, *chunkstore.Local) {
	t.Helper()
	ctx := context.Background()
	store, err := chunkstore.OpenLocal(t.TempDir(), chunkstore.LocalOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	var tree []chunkstore.Node
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n := chunkstore.Node{Path: filepath.ToSlash(rel), Mode: uint32(fi.Mode().Perm()), MTime: fi.ModTime().UnixNano()}
		switch {
		case fi.IsDir():
			n.Type = chunkstore.NodeDir
		case fi.Mode()&fs.ModeSymlink != 0:
			n.Type = chunkstore.NodeSymlink
			if n.Target, err = os.Readlink(p); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			n.Type = chunkstore.NodeFile
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n.Size = int64(len(data))
			if err := chunk.Split(data, chunk.DefaultParams, func(c chunk.Chunk) error {
				id := chunk.Sum(c.Data)
				n.Chunks = append(n.Chunks, chunkstore.ChunkRef{ID: id, Len: uint32(len(c.Data))})
				return store.Put(ctx, id, c.Data)
			}); err != nil {
				return err
			}
		default:
			return nil
		}
		tree = append(tree, n)
		return nil
	}))
	require.NoError(t, store.Flush(ctx))
	return tree, store
}

// TestPostgresRunsOnMount starts PostgreSQL 15 on a mounted copy of a stopped
// cluster: it needs postmaster.pid, WAL writes and renames, relation
// extension and directory fsyncs to work through the CoW layer.
func TestPostgresRunsOnMount(t *testing.T) {
	testsupport.RequireFUSE(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Settings: map[string]string{"fsync": "on"}})
	c.Exec(t, "postgres", "CREATE TABLE kept AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")
	c.Stop(t)
	orig := c.DataDir
	tree, store := treeFromDir(t, orig)
	before := chunkCount(t, store)

	_, mnt := mountTree(t, tree, store, MountOptions{})
	// The postgres user must be able to reach the mountpoint.
	for _, d := range []string{filepath.Dir(mnt), filepath.Dir(filepath.Dir(mnt))} {
		require.NoError(t, os.Chmod(d, 0o755))
	}
	c.DataDir = mnt
	c.Start(t)
	t.Cleanup(func() { c.Stop(t); c.DataDir = orig })

	require.Equal(t, "20000", c.Query(t, "postgres", "SELECT count(*) FROM kept"))
	c.Exec(t, "postgres", "CREATE TABLE added AS SELECT g AS id, repeat('x', 200) AS v FROM generate_series(1, 50000) g")
	c.Exec(t, "postgres", "UPDATE kept SET v = 'changed' WHERE id % 10 = 0")
	c.Exec(t, "postgres", "CHECKPOINT")
	c.Exec(t, "postgres", "SELECT pg_switch_wal()")
	require.Equal(t, "50000", c.Query(t, "postgres", "SELECT count(*) FROM added"))
	require.Equal(t, "2000", c.Query(t, "postgres", "SELECT count(*) FROM kept WHERE v = 'changed'"))
	c.Stop(t)

	stats, err := store.Verify(context.Background(), nil)
	require.NoError(t, err)
	require.Zero(t, stats.Corrupt)
	require.Equal(t, before, chunkCount(t, store), "the store must not be written")
}
