package chunkstore_test

import (
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/chunkstore/storetest"
	"github.com/pgporter/pgporter/internal/s3test"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// diskFixture is a store's packs (about eight blocks of them) in a bucket
// of a real S3 server, reached through a proxy that counts the reads of
// pack objects.
type diskFixture struct {
	b        objstore.Backend
	chunks   [][]byte
	packGets atomic.Int64 // ranged GETs of packs
	packHEAD atomic.Int64 // Stats of packs
}

func newDiskFixture(t *testing.T, srv *s3test.Server) *diskFixture {
	f := &diskFixture{}
	proxy := testsupport.NewHTTPFaultProxy(t, srv.Endpoint)
	proxy.Inject(1<<30, testsupport.HTTPFault{Match: func(r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/chunks/packs/") {
			switch r.Method {
			case http.MethodGet:
				f.packGets.Add(1)
			case http.MethodHead:
				f.packHEAD.Add(1)
			}
		}
		return false
	}})
	b, err := objstore.NewS3(srv.Client(t, proxy.URL), srv.NewBucket(t), "repo", objstore.S3Options{})
	require.NoError(t, err)
	f.b = b
	r := rand.New(rand.NewPCG(7, 8))
	for range 64 {
		f.chunks = append(f.chunks, storetest.RandomBytes(r, 200<<10))
	}
	w := openLocal(t, t.TempDir(), chunkstore.LocalOptions{Remote: b, PackSize: 4 << 20})
	putChunks(t, w, f.chunks)
	require.NoError(t, w.Flush(t.Context()))
	return f
}

// read opens a store on the fixture's bucket caching in dir, reads every
// chunk and closes it; it returns the GETs of packs the reads made.
func (f *diskFixture) read(t *testing.T, dir string, opts chunkstore.LocalOptions) int64 {
	t.Helper()
	opts.Remote = f.b
	l, err := chunkstore.OpenLocal(dir, opts)
	require.NoError(t, err)
	before := f.packGets.Load()
	requireChunks(t, l, f.chunks)
	require.NoError(t, l.Close())
	return f.packGets.Load() - before
}

// blockFiles lists the block files of the cache in dir and their total size.
func blockFiles(t *testing.T, dir string) ([]string, int64) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "blocks"))
	if os.IsNotExist(err) {
		return nil, 0
	}
	require.NoError(t, err)
	var names []string
	var total int64
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		fi, err := e.Info()
		require.NoError(t, err)
		names = append(names, filepath.Join(dir, "blocks", e.Name()))
		total += fi.Size()
	}
	slices.Sort(names)
	return names, total
}

// The disk tier of the block cache (blockdisk.go), against a real S3
// server: a second store on the same cache, as a second process or one
// after a restart, reads no pack from the bucket; two at once share the
// files; the files keep their bound; a damaged file is refetched; a cache
// that cannot be written leaves reads working; size 0 writes nothing;
// Verify reads the bucket, not the cache.
func TestDiskBlocks(t *testing.T) {
	srv := s3test.Shared(t)
	f := newDiskFixture(t, srv)

	t.Run("SecondStore", func(t *testing.T) {
		dir := t.TempDir()
		require.Positive(t, f.read(t, dir, chunkstore.LocalOptions{}))
		files, _ := blockFiles(t, dir)
		require.GreaterOrEqual(t, len(files), 7, "every block on disk")
		heads := f.packHEAD.Load()
		require.Zero(t, f.read(t, dir, chunkstore.LocalOptions{}), "the second store reads the blocks from disk")
		require.Equal(t, heads, f.packHEAD.Load(), "and the packs' sizes from the blocks' headers")
	})

	t.Run("TwoAtOnce", func(t *testing.T) {
		dir := t.TempDir()
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() { f.read(t, dir, chunkstore.LocalOptions{}) })
		}
		wg.Wait()
		require.Zero(t, f.read(t, dir, chunkstore.LocalOptions{}))
	})

	t.Run("Damaged", func(t *testing.T) {
		dir := t.TempDir()
		f.read(t, dir, chunkstore.LocalOptions{})
		files, _ := blockFiles(t, dir)
		// Torn: half of it.
		fi, err := os.Stat(files[0])
		require.NoError(t, err)
		require.NoError(t, os.Truncate(files[0], fi.Size()/2))
		// A flipped byte in the block.
		b, err := os.ReadFile(files[1])
		require.NoError(t, err)
		b[len(b)/2] ^= 0x40
		require.NoError(t, os.WriteFile(files[1], b, 0o600))
		// Another block's file under this one's name.
		b, err = os.ReadFile(files[3])
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(files[2], b, 0o600))
		require.EqualValues(t, 3, f.read(t, dir, chunkstore.LocalOptions{}), "the three damaged blocks are fetched again")
		require.Zero(t, f.read(t, dir, chunkstore.LocalOptions{}), "and written again")
	})

	t.Run("Bound", func(t *testing.T) {
		dir := t.TempDir()
		const bound = 5 << 20 // two blocks and a half
		t.Setenv("PGPORTER_CACHE_SIZE", "5MiB")
		f.read(t, dir, chunkstore.LocalOptions{})
		files, total := blockFiles(t, dir)
		require.LessOrEqual(t, total, int64(bound))
		require.NotEmpty(t, files)
		// Two stores at once, on a cache over its bound meanwhile.
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() { f.read(t, dir, chunkstore.LocalOptions{}) })
		}
		wg.Wait()
		_, total = blockFiles(t, dir)
		require.LessOrEqual(t, total, int64(bound))
	})

	t.Run("Off", func(t *testing.T) {
		dir := t.TempDir()
		require.Positive(t, f.read(t, dir, chunkstore.LocalOptions{DiskCacheBytes: -1}))
		t.Setenv("PGPORTER_CACHE_SIZE", "0")
		require.Positive(t, f.read(t, dir, chunkstore.LocalOptions{}))
		require.NoDirExists(t, filepath.Join(dir, "blocks"), "nothing written")
	})

	t.Run("Unwritable", func(t *testing.T) {
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "blocks"), nil, 0o600)) // not a directory
		require.Positive(t, f.read(t, dir, chunkstore.LocalOptions{}))
		require.Positive(t, f.read(t, dir, chunkstore.LocalOptions{}))
	})

	t.Run("VerifyReadsTheBucket", func(t *testing.T) {
		dir := t.TempDir()
		f.read(t, dir, chunkstore.LocalOptions{})
		l := openLocal(t, dir, chunkstore.LocalOptions{Remote: f.b})
		before := f.packGets.Load()
		st, err := l.Verify(t.Context(), func(id chunk.ID, err error) { t.Errorf("chunk %s: %v", id, err) })
		require.NoError(t, err)
		require.Equal(t, len(f.chunks), st.Chunks)
		require.Positive(t, f.packGets.Load()-before)
	})
}
