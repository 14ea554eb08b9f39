package mover

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/s3test"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/staging"
)

// BenchmarkRepoMountRead reads a restore point's two large files (32 MiB
// random, 48 MiB COPY-like text) sequentially through a fresh FUSE mount
// each iteration, so every chunk is fetched cold: from the local repository,
// from one on S3 (with its blocks on this host's disk or not), and from a
// repository mover over loopback QUIC.
//
//	go test -run '^$' -bench RepoMountRead -benchtime 5x ./mover/
func BenchmarkRepoMountRead(b *testing.B) {
	testsupport.RequireFUSE(b)
	if os.Geteuid() != 0 {
		b.Skip("mounting with DirectMount needs root")
	}
	const scale = 16
	files := []string{"base/1/16384", "base/1/16385"}

	b.Run("local", func(b *testing.B) {
		f := backupFake(b, scale)
		repo, err := chunkstore.OpenRepo(context.Background(), f.repoDir, nil)
		require.NoError(b, err)
		defer repo.Close()
		benchMountRead(b, f, files, f.tree, repo.Store(), 0)
	})
	// A repository on a real S3 server on loopback (SeaweedFS): each chunk
	// a ranged GET of its pack, cold every iteration (no chunk cache).
	// Without the disk tier of the block cache, which would serve the
	// blocks from the second iteration on.
	b.Run("s3", func(b *testing.B) {
		srv := s3test.Start(b)
		srv.SetEnv(b)
		f := backupFakeTo(b, scale, "s3://"+srv.NewBucket(b)+"/repo")
		repo, err := chunkstore.OpenRepoWith(context.Background(), f.repoDir, chunkstore.RepoOptions{Store: chunkstore.LocalOptions{DiskCacheBytes: -1}})
		require.NoError(b, err)
		defer repo.Close()
		benchMountRead(b, f, files, f.tree, repo.Store(), 0)
	})
	// The same point read again on this host, by another process or after a
	// restart: its blocks are in the disk tier (blockdisk.go), which an
	// untimed read by another store filled; the memory tier, 32 MiB of the
	// 80 MB read in order, serves none.
	b.Run("s3-warm-disk", func(b *testing.B) {
		srv := s3test.Start(b)
		srv.SetEnv(b)
		f := backupFakeTo(b, scale, "s3://"+srv.NewBucket(b)+"/repo")
		warm, err := chunkstore.OpenRepo(context.Background(), f.repoDir, nil)
		require.NoError(b, err)
		for _, n := range f.tree {
			for _, c := range n.Chunks {
				_, err := warm.Store().Get(context.Background(), c.ID, nil)
				require.NoError(b, err)
			}
		}
		require.NoError(b, warm.Close())
		repo, err := chunkstore.OpenRepo(context.Background(), f.repoDir, nil)
		require.NoError(b, err)
		defer repo.Close()
		benchMountRead(b, f, files, f.tree, repo.Store(), 0)
	})
	b.Run("remote", func(b *testing.B) {
		f := startRepoServer(b, scale, nil)
		rr, err := dialTestRepo(b, f, PermRead, "", RemoteRepoOptions{})
		require.NoError(b, err)
		tree, err := rr.Tree(context.Background(), f.rp)
		require.NoError(b, err)
		benchMountRead(b, f, files, tree, rr, 0)
		b.ReportMetric(float64(rr.RTT().Microseconds()), "rtt-µs")
	})
	// One connection, as before RemoteRepoOptions.Conns (one quic-go run
	// loop per side for all fetches), and the most.
	for _, conns := range []int{1, maxRepoConns} {
		b.Run(fmt.Sprintf("remote-%dconn", conns), func(b *testing.B) {
			f := startRepoServer(b, scale, nil)
			rr, err := dialTestRepo(b, f, PermRead, "", RemoteRepoOptions{Conns: conns})
			require.NoError(b, err)
			tree, err := rr.Tree(context.Background(), f.rp)
			require.NoError(b, err)
			benchMountRead(b, f, files, tree, rr, 0)
			b.ReportMetric(float64(rr.RTT().Microseconds()), "rtt-µs")
		})
	}
	// Over a link with a 20 ms round trip (a UDP proxy that holds each
	// datagram 10 ms each way): reading ahead by RTT × rate, and by the
	// fixed count of chunks of a local store; and over one connection.
	for _, v := range []struct {
		name  string
		fixed bool
		conns int
	}{{"remote-20ms", false, 0}, {"remote-20ms-fixed", true, 0}, {"remote-20ms-1conn", false, 1}} {
		fixed := v.fixed
		b.Run(v.name, func(b *testing.B) {
			f := startRepoServer(b, scale, nil)
			proxy := testsupport.NewUDPProxy(b, f.addr)
			proxy.SetDelay(10 * time.Millisecond)
			rr, err := dialTestRepo(b, f, PermRead, proxy.Addr(), RemoteRepoOptions{Conns: v.conns})
			require.NoError(b, err)
			tree, err := rr.Tree(context.Background(), f.rp)
			require.NoError(b, err)
			var chunks staging.ChunkReader = rr
			if fixed {
				chunks = noRTT{rr}
			}
			benchMountRead(b, f, files, tree, chunks, 0)
			b.ReportMetric(float64(rr.RTT().Microseconds()), "rtt-µs")
		})
	}
}

// noRTT hides a RemoteRepo's RTT: a mount of it reads ahead by the fixed
// count of chunks, as it did before step 5.2 of docs/design/0005.
type noRTT struct{ rr *RemoteRepo }

func (n noRTT) Get(ctx context.Context, id chunk.ID, dst []byte) ([]byte, error) {
	return n.rr.Get(ctx, id, dst)
}

func benchMountRead(b *testing.B, f *repoFixture, files []string, tree []chunkstore.Node, chunks staging.ChunkReader, readahead int) {
	me, err := user.Current()
	require.NoError(b, err)
	var size int64
	for _, name := range files {
		size += int64(len(f.files[name]))
	}
	b.SetBytes(size)
	buf := make([]byte, 1<<20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		mnt := filepath.Join(dir, "mnt")
		require.NoError(b, os.Mkdir(mnt, 0o755))
		m, err := staging.Mount(context.Background(), mnt, tree, chunks, staging.MountOptions{Owner: me.Username, CowDir: filepath.Join(dir, "cow"), Readahead: readahead})
		require.NoError(b, err)
		b.StartTimer()
		for _, name := range files {
			fh, err := os.Open(filepath.Join(mnt, name))
			require.NoError(b, err)
			n, err := io.CopyBuffer(io.Discard, fh, buf)
			require.NoError(b, err)
			require.Equal(b, int64(len(f.files[name])), n)
			fh.Close()
		}
		b.StopTimer()
		require.NoError(b, m.Unmount())
		b.StartTimer()
	}
}

// BenchmarkRepoGet fetches every chunk of the same restore point straight
// from a repository mover over loopback QUIC, 32 Gets at a time: the
// protocol's throughput without FUSE.
//
//	go test -run '^$' -bench RepoGet -benchtime 5x ./mover/
func BenchmarkRepoGet(b *testing.B) { benchRepoGet(b, RemoteRepoOptions{}) }

// BenchmarkRepoGet1Conn is BenchmarkRepoGet over one connection.
func BenchmarkRepoGet1Conn(b *testing.B) { benchRepoGet(b, RemoteRepoOptions{Conns: 1}) }

func benchRepoGet(b *testing.B, o RemoteRepoOptions) {
	f := startRepoServer(b, 16, nil)
	rr, err := dialTestRepo(b, f, PermRead, "", o)
	require.NoError(b, err)
	var refs []chunkstore.ChunkRef
	var size int64
	for _, n := range f.tree {
		refs = append(refs, n.Chunks...)
		size += n.Size
	}
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		g, ctx := errgroup.WithContext(context.Background())
		g.SetLimit(32)
		for _, c := range refs {
			g.Go(func() error {
				_, err := rr.Get(ctx, c.ID, nil)
				return err
			})
		}
		require.NoError(b, g.Wait())
	}
}
