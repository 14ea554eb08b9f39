package staging

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// heapLike returns n bytes laid out like a pgbench_accounts heap segment:
// 8 KiB pages of 61 tuples (aid, bid, abalance, 84 blanks), which zstd
// shrinks about twentyfold, as it does the real thing. The last eighth is
// zeros, as in a relation extended but not yet filled.
func heapLike(seed uint32, n int) []byte {
	const page, tuple, perPage = 8192, 121, 61
	b := make([]byte, n)
	aid := seed * 1000000
	for p := 0; p+page <= n*7/8; p += page {
		pg := b[p : p+page]
		binary.LittleEndian.PutUint64(pg[0:], uint64(p)*31+uint64(seed)) // LSN
		binary.LittleEndian.PutUint16(pg[12:], uint16(24+4*perPage))     // pd_lower
		binary.LittleEndian.PutUint16(pg[14:], uint16(page-perPage*tuple))
		for i := range perPage {
			off := page - (i+1)*tuple
			binary.LittleEndian.PutUint32(pg[24+4*i:], uint32(off)|uint32(tuple)<<17|1<<15)
			tp := pg[off : off+tuple]
			binary.LittleEndian.PutUint32(tp[0:], 734)          // xmin
			binary.LittleEndian.PutUint16(tp[16:], uint16(i+1)) // ctid
			tp[22] = 24
			aid++
			binary.LittleEndian.PutUint32(tp[24:], aid)
			binary.LittleEndian.PutUint32(tp[28:], aid/100000+1)
			tp[36] = 85<<1 | 1 // short varlena header of the filler
			for j := 37; j < tuple; j++ {
				tp[j] = ' '
			}
		}
	}
	return b
}

// benchTree stores files of heapLike content (size bytes each) in a fresh
// local chunk store.
func benchTree(b *testing.B, files, size int) ([]chunkstore.Node, *chunkstore.Local, int64) {
	ctx := context.Background()
	store, err := chunkstore.OpenLocal(b.TempDir(), chunkstore.LocalOptions{})
	require.NoError(b, err)
	b.Cleanup(func() { _ = store.Close() })
	tree := []chunkstore.Node{{Path: "base", Type: chunkstore.NodeDir, Mode: 0o700}}
	var total int64
	for i := range files {
		data := heapLike(uint32(i), size)
		n := chunkstore.Node{Path: fmt.Sprintf("base/%d", 16000+i), Type: chunkstore.NodeFile, Mode: 0o600, Size: int64(len(data))}
		require.NoError(b, chunk.Split(data, chunk.DefaultParams, func(c chunk.Chunk) error {
			id := chunk.Sum(c.Data)
			n.Chunks = append(n.Chunks, chunkstore.ChunkRef{ID: id, Len: uint32(len(c.Data))})
			return store.Put(ctx, id, c.Data)
		}))
		tree = append(tree, n)
		total += n.Size
	}
	require.NoError(b, store.Flush(ctx))
	return tree, store, total
}

// BenchmarkMountColdRead reads every file of a restore point sequentially
// through a fresh FUSE mount per iteration (so neither the kernel's page
// cache nor the chunk cache holds anything), with 128 KiB reads as tar
// does. The data is larger than the default chunk cache, so the cache
// recycles its buffers as in a real cold read. The pack files are in the page cache: this measures the CPU cost
// of serving chunks (decode, BLAKE3, FUSE), not the disk.
//
//	go test -run XXX -bench MountColdRead -benchtime 3x ./staging/
func BenchmarkMountColdRead(b *testing.B) {
	testsupport.RequireFUSE(b)
	tree, store, total := benchTree(b, 4, 48<<20)
	dir := b.TempDir()
	owner := "postgres"
	if _, err := user.Lookup(owner); err != nil {
		u, err := user.Current()
		require.NoError(b, err)
		owner = u.Username
	}
	buf := make([]byte, 128<<10)
	b.SetBytes(total)
	b.ReportAllocs()
	i := 0
	var cpu time.Duration
	for b.Loop() {
		b.StopTimer()
		i++
		mnt := filepath.Join(dir, fmt.Sprintf("mnt%d", i))
		require.NoError(b, os.Mkdir(mnt, 0o755))
		m, err := Mount(context.Background(), mnt, tree, store, MountOptions{Owner: owner, CowDir: filepath.Join(dir, fmt.Sprintf("cow%d", i))})
		require.NoError(b, err)
		b.StartTimer()
		cpu0 := cpuTime(b)
		var n int64
		for _, nd := range tree {
			if nd.Type != chunkstore.NodeFile {
				continue
			}
			f, err := os.Open(filepath.Join(mnt, nd.Path))
			require.NoError(b, err)
			for {
				k, err := f.Read(buf)
				n += int64(k)
				if errors.Is(err, io.EOF) {
					break
				}
				require.NoError(b, err)
			}
			require.NoError(b, f.Close())
		}
		cpu += cpuTime(b) - cpu0
		b.StopTimer()
		require.Equal(b, total, n)
		deadline := time.Now().Add(10 * time.Second)
		for m.Unmount() != nil && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // polling: the kernel releases the files asynchronously
		}
		b.StartTimer()
	}
	// On a shared machine the wall time moves with the load; the CPU time
	// (of the whole process: the FUSE server and the reader's syscalls)
	// per MB read moves much less.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N)/(float64(total)/1e6), "cpu-µs/MB")
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
