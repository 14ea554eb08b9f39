package chunkstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgporter/pgporter/internal/bytesize"
)

// DefaultDiskCacheBytes is the default bound of the blocks a host keeps on
// disk (LocalOptions.DiskCacheBytes): 512 blocks, enough for a second
// export or mount of a small or medium restore point (or of the part of a
// large one it reads again) to read no pack twice from the bucket, yet
// small beside the staging space of a host that exports databases, in a
// cache directory that is often in a home directory. A host that mounts
// larger points again and again raises it.
const DefaultDiskCacheBytes = 1 << 30

// cacheSizeEnv is the environment variable that sets the disk tier's bound
// where LocalOptions.DiskCacheBytes is zero: the way --cache-size reaches
// the repositories a command opens indirectly (an export's, a mover's).
const cacheSizeEnv = "PGPORTER_CACHE_SIZE"

// diskCacheBytes resolves o.DiskCacheBytes: its value, else the
// environment's, else the default; 0 (or negative) means no disk tier.
func (o LocalOptions) diskCacheBytes() (int64, error) {
	if o.DiskCacheBytes != 0 {
		return max(o.DiskCacheBytes, 0), nil
	}
	if s := os.Getenv(cacheSizeEnv); s != "" {
		n, err := bytesize.Parse(s)
		if err != nil {
			return 0, fmt.Errorf("chunkstore: %s: %w", cacheSizeEnv, err)
		}
		return n, nil
	}
	return DefaultDiskCacheBytes, nil
}

// A block file is a header then the block's bytes:
//
//	magic "pgpblk1\n", pack number, block number, pack size (uint64 LE each),
//	CRC-32C of the header's first 32 bytes and the block (uint32 LE)
//
// The files are not trusted: another process, a crash (they are renamed
// into place unsynced) or a user may have left anything there. A block
// must be exactly as long as its pack's size says, and its CRC catches a
// torn or flipped file, so that a damaged file is fetched again rather
// than failing every read of the chunks in it. The CRC is no defence
// against a forger and need not be: every chunk read from a block is
// checked above the cache, by its BLAKE3 ID or, sealed, by its AEAD.
// A CRC-32C costs a fraction of the copy the read makes anyway.
const (
	blockFileMagic = "pgpblk1\n"
	blockHeaderLen = 36
	// touchAfter is how old a hit's mtime must be for the hit to update it:
	// eviction needs the order of minutes, not of every read.
	touchAfter = time.Minute
	// staleTemp is how old a temporary file must be for eviction to take
	// it for a crashed writer's.
	staleTemp = time.Hour
)

// diskBlocks is blockCache's disk tier: the blocks read from the object
// store as files in the host's repository cache, where every process that
// reads the repository on this host, now or after a restart, finds them.
// Packs never change, so a block file is never stale, only damaged or
// evicted. Its size is bounded across processes, approximately: each
// process counts what it writes, and when its count says the directory may
// be over the bound (or it has written a sixteenth of the bound since it
// last looked, for the others' writes), it sums the directory and removes
// the least recently used files, by mtime, which a hit touches.
//
// A failing disk never fails a read: get misses, put gives up, and the
// first failure is logged.
type diskBlocks struct {
	dir string
	max int64
	own owner
	log *slog.Logger

	warned  atomic.Bool // a failure has been logged at Warn
	mkdirMu sync.Mutex  // guards made
	made    bool
	scanMu  sync.Mutex // held by the goroutine evicting

	mu        sync.Mutex // guards bytes, sinceScan, scanned
	bytes     int64      // the directory's size at the last scan, plus what this process wrote since
	sinceScan int64
	scanned   bool
}

func newDiskBlocks(dir string, max int64, own owner, log *slog.Logger) *diskBlocks {
	return &diskBlocks{dir: dir, max: max, own: own, log: log}
}

func (d *diskBlocks) path(k blockKey) string {
	return filepath.Join(d.dir, fmt.Sprintf("%016x.%d", k.pack, k.n))
}

// get returns block k of its pack and the pack's size, read from its file,
// or ok false. size is the pack's, or -1 when the caller does not know it
// yet (the file's header then says it). The slice is the caller's.
func (d *diskBlocks) get(k blockKey, size int64) (data []byte, packSize int64, ok bool) {
	p := d.path(k)
	f, err := os.Open(p)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			d.fail("reading a block", err)
		}
		return nil, 0, false
	}
	// An eviction meanwhile unlinks the name; this descriptor keeps the file.
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		d.fail("reading a block", err)
		return nil, 0, false
	}
	n := fi.Size()
	if n < blockHeaderLen || n > blockHeaderLen+blockSize {
		d.damaged(p, fmt.Sprintf("%d bytes", n))
		return nil, 0, false
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(f, buf); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			d.damaged(p, "shorter than it was")
		} else {
			d.fail("reading a block", err)
		}
		return nil, 0, false
	}
	packSize, err = checkBlockFile(buf, k, size)
	if err != nil {
		d.damaged(p, err.Error())
		return nil, 0, false
	}
	if now := time.Now(); now.Sub(fi.ModTime()) > touchAfter {
		_ = os.Chtimes(p, time.Time{}, now) // a lost touch only ages the file
	}
	return buf[blockHeaderLen:], packSize, true
}

// checkBlockFile checks the file buf of block k of a pack of size bytes
// (-1: not known) and returns the pack's size.
func checkBlockFile(buf []byte, k blockKey, size int64) (int64, error) {
	h := buf[:blockHeaderLen]
	if string(h[:8]) != blockFileMagic {
		return 0, errors.New("not a block file")
	}
	if binary.LittleEndian.Uint64(h[8:]) != k.pack || binary.LittleEndian.Uint64(h[16:]) != uint64(k.n) {
		return 0, errors.New("another block's file")
	}
	ps := int64(binary.LittleEndian.Uint64(h[24:]))
	start := k.n * blockSize
	if ps <= start || (size >= 0 && ps != size) {
		return 0, fmt.Errorf("pack size %d in the header", ps)
	}
	if want := min(blockSize, ps-start); int64(len(buf)-blockHeaderLen) != want {
		return 0, fmt.Errorf("%d bytes of block, not %d", len(buf)-blockHeaderLen, want)
	}
	sum := crc32.Update(crc32.Checksum(h[:32], crc32c), crc32c, buf[blockHeaderLen:])
	if binary.LittleEndian.Uint32(h[32:]) != sum {
		return 0, errors.New("checksum mismatch")
	}
	return ps, nil
}

// put writes block k of a pack of size bytes, whole or not at all: a temp
// file renamed over the name. Two processes that write one block at once
// write the same bytes; the last rename wins, and a reader holds either
// file. No fsync: a file a crash damages fails its check and is refetched.
func (d *diskBlocks) put(k blockKey, size int64, data []byte) {
	if !d.mkdir() {
		return
	}
	var h [blockHeaderLen]byte
	copy(h[:], blockFileMagic)
	binary.LittleEndian.PutUint64(h[8:], k.pack)
	binary.LittleEndian.PutUint64(h[16:], uint64(k.n))
	binary.LittleEndian.PutUint64(h[24:], uint64(size))
	binary.LittleEndian.PutUint32(h[32:], crc32.Update(crc32.Checksum(h[:32], crc32c), crc32c, data))
	f, err := os.CreateTemp(d.dir, ".tmp-")
	if err != nil {
		d.fail("writing a block", err)
		return
	}
	_, err = f.Write(h[:])
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = d.own.file(f)
	}
	err = errors.Join(err, f.Close())
	if err == nil {
		err = os.Rename(f.Name(), d.path(k))
	}
	if err != nil {
		_ = os.Remove(f.Name())
		d.fail("writing a block", err)
		return
	}
	n := int64(blockHeaderLen + len(data))
	d.mu.Lock()
	d.bytes += n
	d.sinceScan += n
	scan := !d.scanned || d.bytes > d.max || d.sinceScan > d.max/16
	d.mu.Unlock()
	if scan {
		d.evict()
	}
}

func (d *diskBlocks) mkdir() bool {
	d.mkdirMu.Lock()
	defer d.mkdirMu.Unlock()
	if d.made {
		return true
	}
	if err := d.own.mkdir(d.dir, filepath.Dir(d.dir)); err != nil {
		d.fail("creating the block cache", err)
		return false
	}
	d.made = true
	return true
}

// evict sums the directory and, when it is over the bound, removes the
// least recently used blocks down to seven eighths of it, so that the next
// scan is a while away. One process evicts at a time (a flock on a file
// of the directory); the others skip: two evicting at once would remove
// twice what they need.
func (d *diskBlocks) evict() {
	if !d.scanMu.TryLock() {
		return
	}
	defer d.scanMu.Unlock()
	lf, err := os.OpenFile(filepath.Join(d.dir, ".evict.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		d.fail("evicting blocks", err)
		return
	}
	defer lf.Close()
	if err := d.own.file(lf); err != nil {
		d.fail("evicting blocks", err)
		return
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return // another process is evicting
	}
	ents, err := os.ReadDir(d.dir)
	if err != nil {
		d.fail("evicting blocks", err)
		return
	}
	type file struct {
		name  string
		size  int64
		mtime time.Time
	}
	var files []file
	var total int64
	now := time.Now()
	for _, e := range ents {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".evict") {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // evicted meanwhile
		}
		if strings.HasPrefix(e.Name(), ".tmp-") {
			if now.Sub(fi.ModTime()) > staleTemp {
				_ = os.Remove(filepath.Join(d.dir, e.Name()))
			}
			continue
		}
		files = append(files, file{e.Name(), fi.Size(), fi.ModTime()})
		total += fi.Size()
	}
	if total > d.max {
		slices.SortFunc(files, func(a, b file) int { return a.mtime.Compare(b.mtime) })
		low := d.max - d.max/8
		for _, f := range files {
			if total <= low {
				break
			}
			if err := os.Remove(filepath.Join(d.dir, f.name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				d.fail("evicting blocks", err)
				break
			}
			total -= f.size
		}
	}
	d.mu.Lock()
	d.bytes, d.sinceScan, d.scanned = total, 0, true
	d.mu.Unlock()
}

// forget removes the files of pack n's blocks.
func (d *diskBlocks) forget(n uint64) {
	names, _ := filepath.Glob(filepath.Join(d.dir, fmt.Sprintf("%016x.*", n)))
	for _, p := range names {
		_ = os.Remove(p)
	}
}

// damaged removes a block file that failed its check, so that the block
// is fetched and written again.
func (d *diskBlocks) damaged(p, why string) {
	d.log.Warn("removing a damaged block from the cache", "file", p, "err", why)
	_ = os.Remove(p)
}

// fail logs the disk tier's first failure at Warn, the others at Debug:
// reads go on from the object store.
func (d *diskBlocks) fail(action string, err error) {
	level := slog.LevelDebug
	if d.warned.CompareAndSwap(false, true) {
		level = slog.LevelWarn
	}
	d.log.Log(context.Background(), level, "block cache on disk failing, reading from the object store", "action", action, "dir", d.dir, "err", err)
}
