package chunkstore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/chunkstore/objstore"
)

// readBytesBackend counts the bytes its reads return.
type readBytesBackend struct {
	objstore.Backend
	read atomic.Int64
}

func (c *readBytesBackend) Get(ctx context.Context, name string, dst []byte) ([]byte, error) {
	n := len(dst)
	b, err := c.Backend.Get(ctx, name, dst)
	c.read.Add(int64(len(b) - n))
	return b, err
}

func (c *readBytesBackend) GetRange(ctx context.Context, name string, off, n int64, dst []byte) ([]byte, error) {
	m := len(dst)
	b, err := c.Backend.GetRange(ctx, name, off, n, dst)
	c.read.Add(int64(len(b) - m))
	return b, err
}

// TestRepoFilesBoundedReads guards against a hostile bucket or directory
// making every open of a repository read a key file or a config of any
// size into memory: a key object was read whole (up to objstore.MaxRead,
// a GiB) before its size was checked, and a config whole, in a bucket or
// a directory (where one that is a FIFO blocked the open for ever). Each
// is refused unread past a bound; a key file is listed as corrupt.
func TestRepoFilesBoundedReads(t *testing.T) {
	ctx := context.Background()
	big := bytes.Repeat([]byte(" "), 1<<20)
	d, err := objstore.OpenDir(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	b := &readBytesBackend{Backend: d}
	f := repoFiles{dir: "s3://bucket/repo", remote: b}

	const id = "0123456789abcdef"
	require.NoError(t, d.PutIfAbsent(ctx, repoKeysPrefix+id, bytes.NewReader(big), int64(len(big))))
	keys, err := crypt.ListKeys(ctx, f.keyStore())
	require.NoError(t, err)
	require.Len(t, keys, 1)
	require.ErrorIs(t, keys[0].Err, crypt.ErrKeyFileCorrupt)
	require.Zero(t, b.read.Load(), "a key object larger than any key file was read")

	// A config that decodes, padded to a MiB: refused unread all the same.
	cfg := append([]byte(`{"format":"pgporter-repo-1","id":"00112233445566778899aabbccddeeff","encryption":"`+repoEncryption+`","check":""}`), big...)
	require.NoError(t, d.PutIfAbsent(ctx, repoConfigName, bytes.NewReader(cfg), int64(len(cfg))))
	_, err = f.readConfig(ctx)
	require.ErrorIs(t, err, errFileTooLarge)
	require.Zero(t, b.read.Load(), "a config object larger than any config was read")

	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, repoConfigName), cfg, 0o644))
	_, err = repoFiles{dir: dir}.readConfig(ctx)
	require.ErrorIs(t, err, errFileTooLarge)

	fifo := t.TempDir()
	require.NoError(t, syscall.Mkfifo(filepath.Join(fifo, repoConfigName), 0o644))
	_, err = repoFiles{dir: fifo}.readConfig(ctx)
	require.ErrorContains(t, err, "not a regular file")
}

// TestDirRepoBoundedReads guards a directory repository's restore points,
// locks and WAL records as a bucket's are: a point file larger than any
// point is refused unread (it was read whole, however large); a lock file
// that is too large or a FIFO is an unreadable lock, held, named by the
// refusal (a FIFO blocked every command that locks the repository); a WAL
// record that is a FIFO is refused (it blocked wal-fetch, and so a
// recovery, for ever).
func TestDirRepoBoundedReads(t *testing.T) {
	ctx := context.Background()
	points := t.TempDir()
	f, err := os.Create(filepath.Join(points, "rp-big.json"))
	require.NoError(t, err)
	require.NoError(t, f.Truncate(maxPointObject+1)) // sparse: nothing to read but zeros
	require.NoError(t, f.Close())
	_, err = listPoints(nil, points)
	require.ErrorIs(t, err, errFileTooLarge)

	locks := t.TempDir()
	store := dirLocks{dir: locks}
	require.NoError(t, syscall.Mkfifo(filepath.Join(locks, "0000000000000001.json"), 0o644))
	big, err := os.Create(filepath.Join(locks, "0000000000000002.json"))
	require.NoError(t, err)
	require.NoError(t, big.Truncate(maxLockObject+1))
	require.NoError(t, big.Close())
	live, err := liveLocks(ctx, store, "")
	require.NoError(t, err)
	var purposes []string
	for _, l := range live {
		require.True(t, l.Exclusive)
		purposes = append(purposes, l.Purpose)
	}
	require.ElementsMatch(t, []string{"an unreadable lock 0000000000000001.json", "an unreadable lock 0000000000000002.json"}, purposes)

	wal := filepath.Join(t.TempDir(), "000000010000000000000001.json")
	require.NoError(t, syscall.Mkfifo(wal, 0o644))
	_, err = readWALRecord(nil, wal)
	require.ErrorIs(t, err, errNotRegular)
}
