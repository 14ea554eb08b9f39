package chunkstore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/objstore"
)

// Regression: a cached restore point that does not decode (the cache is
// written unsynced, so a crash can leave it empty or torn) failed the
// listing, once, as if the repository's point were bad (for an encrypted
// repository, "tampered"), although the object is whole. It is fetched again.
func TestRemotePointCacheTorn(t *testing.T) {
	d, err := objstore.OpenDir(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	ctx := context.Background()
	rp := &RestorePoint{Format: pointFormat, ID: "rp-20260101T000000Z-abcdef", Time: time.Unix(1767225600, 0).UTC()}
	data, err := encodePoint(rp)
	require.NoError(t, err)
	require.NoError(t, d.PutIfAbsent(ctx, remotePoints+rp.ID+".json", bytes.NewReader(data), int64(len(data))))
	cache := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(cache, "points"), 0o700))

	for _, torn := range []int{0, len(data) / 2} {
		rps, err := listRemotePoints(ctx, d, cache, nil)
		require.NoError(t, err)
		require.Len(t, rps, 1)
		cached := filepath.Join(cache, "points", rp.ID+".json")
		require.NoError(t, os.Truncate(cached, int64(torn)))
		rps, err = listRemotePoints(ctx, d, cache, nil)
		require.NoError(t, err, "a cached copy of %d bytes", torn)
		require.Len(t, rps, 1)
		require.Equal(t, rp.ID, rps[0].ID)
		b, err := os.ReadFile(cached)
		require.NoError(t, err)
		require.Equal(t, data, b, "the cache holds the object again")
	}
}

// TestRemoteLockTooLarge: a lock object larger than any lock is not read
// (a hostile bucket could make each lock check hold its size in memory);
// it counts as an unreadable lock, held, as a lock that does not decode.
func TestRemoteLockTooLarge(t *testing.T) {
	d, err := objstore.OpenDir(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	ctx := context.Background()
	big := bytes.Repeat([]byte("x"), maxLockObject+1)
	require.NoError(t, d.PutIfAbsent(ctx, remoteLocks+"big.json", bytes.NewReader(big), int64(len(big))))
	small := []byte(`{"purpose":"backup"}`)
	require.NoError(t, d.PutIfAbsent(ctx, remoteLocks+"small.json", bytes.NewReader(small), int64(len(small))))
	got, err := objLocks{d}.list(ctx)
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Nil(t, got["big.json"], "not read")
	require.Equal(t, small, got["small.json"])
}

// TestRemotePointTooLarge: a restore point object larger than any restore
// point is refused without being read (a hostile bucket could make each
// listing hold its size in memory, up to the 1 GiB read limit).
func TestRemotePointTooLarge(t *testing.T) {
	d, err := objstore.OpenDir(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	ctx := context.Background()
	big := make([]byte, maxPointObject+1)
	require.NoError(t, d.PutIfAbsent(ctx, remotePoints+"rp-20260101T000000Z-abcdef.json", bytes.NewReader(big), int64(len(big))))
	_, err = listRemotePoints(ctx, d, t.TempDir(), nil)
	require.ErrorContains(t, err, "more than any restore point")
}
