package chunkstore

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/crypt"
)

// An index run is an immutable file listing chunk locations, sorted by ID.
// Every flush of every writer adds one; compaction merges several into one
// and then removes them. Nothing is ever rewritten in place, so any number
// of processes read and write a store at once without a lock between them
// (docs/design/0007-repository-concurrency.md).
//
//	offset        size  field
//	0             8     magic "PGPIDX\x00\x01"
//	8             57*n  entries, sorted by ID, IDs unique:
//	                      ID (32), pack (u64), offset (u64),
//	                      stored length (u32), plain length (u32), codec (u8)
//	8+57n         8     n
//	16+57n        32    BLAKE3-256 of everything before it
//
// Integers are little endian. A run's file appears (by rename) only after it
// is synced, and only once the pack bytes it points at are synced: a listed
// run is whole, and every location in it is durable.
//
// A store with a key (LocalOptions.Key) writes sealed runs instead
// (docs/design/0010-repository-encryption.md, "Index runs"): mapped and
// searched in place as these are, so MACed rather than sealed.
//
//	offset        size  field
//	0             8     magic "PGPIDX\x00\x02"
//	8             52*n  entries, sorted by object ID, unique:
//	                      object ID (32), pack (u64), offset (u64),
//	                      sealed length (u32)
//	8+52n         8     n
//	16+52n        32    MAC (KindIndex, empty name) of everything before it
//
// A run of the other kind than the store's is refused as damaged: a plain
// run planted in an encrypted store would name records the key never sealed.

const (
	runMagic       = "PGPIDX\x00\x01"
	runEntrySize   = chunk.IDSize + 8 + 8 + 4 + 4 + 1
	sealedRunMagic = "PGPIDX\x00\x02"
	sealedRunEntry = crypt.ObjectIDSize + 8 + 8 + 4
	runTrailerSize = 8 + 32
	runExt         = ".idx"
	runTmpPrefix   = ".tmp-"
)

// errBadRun reports a run file that no writer produces.
var errBadRun = errors.New("chunkstore: bad index run")

// runEntry is one chunk of a run being written. In a sealed run, id is the
// chunk's index key: its object ID (Local.indexKey).
type runEntry struct {
	id  chunk.ID
	loc chunkLoc
}

func appendRunEntry(dst []byte, e runEntry) []byte {
	dst = append(dst, e.id[:]...)
	if e.loc.Sealed {
		dst = binary.LittleEndian.AppendUint64(dst, e.loc.Pack)
		dst = binary.LittleEndian.AppendUint64(dst, uint64(e.loc.Offset))
		return binary.LittleEndian.AppendUint32(dst, e.loc.StoredLen)
	}
	dst = binary.LittleEndian.AppendUint64(dst, e.loc.Pack)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(e.loc.Offset))
	dst = binary.LittleEndian.AppendUint32(dst, e.loc.StoredLen)
	dst = binary.LittleEndian.AppendUint32(dst, e.loc.PlainLen)
	return append(dst, byte(e.loc.Codec))
}

// decodeRunLoc decodes and checks the location part of an entry, plain or
// sealed by its length.
func decodeRunLoc(e []byte) (chunkLoc, error) {
	b := e[chunk.IDSize:]
	off := binary.LittleEndian.Uint64(b[8:16])
	if off > maxPackOffset {
		return chunkLoc{}, fmt.Errorf("%w: offset %d out of range", errBadIndex, off)
	}
	if len(e) == sealedRunEntry {
		l := chunkLoc{
			Pack:      binary.LittleEndian.Uint64(b[0:8]),
			Offset:    int64(off),
			StoredLen: binary.LittleEndian.Uint32(b[16:20]),
			Sealed:    true,
		}
		return l, l.validate()
	}
	l := chunkLoc{
		Pack:      binary.LittleEndian.Uint64(b[0:8]),
		Offset:    int64(off),
		StoredLen: binary.LittleEndian.Uint32(b[16:20]),
		PlainLen:  binary.LittleEndian.Uint32(b[20:24]),
		Codec:     chunk.Codec(b[24]),
	}
	return l, l.validate()
}

// run is an open, checked run file, mapped read-only. It is shared by the
// store's lookups and by snapshots; refs counts the store's own reference
// and each snapshot's, and the mapping goes with the last.
type run struct {
	name  string
	data  []byte
	n     int
	esize int // runEntrySize, or sealedRunEntry in a sealed run
	refs  atomic.Int32
}

func (r *run) id(i int) []byte {
	off := len(runMagic) + i*r.esize
	return r.data[off : off+chunk.IDSize]
}

func (r *run) entry(i int) []byte {
	off := len(runMagic) + i*r.esize
	return r.data[off : off+r.esize]
}

func (r *run) acquire() { r.refs.Add(1) }

func (r *run) release() {
	if r.refs.Add(-1) == 0 && r.data != nil {
		_ = unix.Munmap(r.data)
		r.data = nil
	}
}

// search returns the index of the first entry whose ID is not below id.
// IDs are uniform hashes, so the entry is near n*id/2^256: the search
// starts in a window around that guess and falls back to the whole run
// only if the window does not hold it.
func (r *run) search(id chunk.ID) int {
	lo, hi := 0, r.n
	if r.n > 64 {
		guess, _ := bits.Mul64(binary.BigEndian.Uint64(id[:8]), uint64(r.n))
		w := 4*int(math.Sqrt(float64(r.n))) + 32
		a, b := max(int(guess)-w, 0), min(int(guess)+w, r.n)
		if (a == 0 || bytes.Compare(r.id(a-1), id[:]) < 0) && (b == r.n || bytes.Compare(r.id(b), id[:]) >= 0) {
			lo, hi = a, b
		}
	}
	return lo + sort.Search(hi-lo, func(i int) bool { return bytes.Compare(r.id(lo+i), id[:]) >= 0 })
}

// find looks id up. A held entry that does not decode gives a
// *CorruptChunkError.
func (r *run) find(id chunk.ID) (chunkLoc, bool, error) {
	i := r.search(id)
	if i == r.n || !bytes.Equal(r.id(i), id[:]) {
		return chunkLoc{}, false, nil
	}
	loc, err := decodeRunLoc(r.entry(i))
	if err != nil {
		return chunkLoc{}, true, &chunk.CorruptChunkError{ID: id, Err: err}
	}
	return loc, true, nil
}

// openRun maps and checks the run at path: its magic, length, hash (a MAC
// under key, for a sealed run) and the order of its IDs. A run is sealed
// exactly when key is not nil. A file that fails gives an error matching
// errBadRun; a file that is gone, one matching fs.ErrNotExist.
func openRun(path string, key *crypt.MasterKey) (*run, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: opening index run: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("chunkstore: opening index run: %w", err)
	}
	size := fi.Size()
	name := filepath.Base(path)
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w %s: %s", errBadRun, name, fmt.Sprintf(format, args...))
	}
	esize := int64(runEntrySize)
	if key != nil {
		esize = sealedRunEntry
	}
	if size < int64(len(runMagic)+runTrailerSize) || (size-int64(len(runMagic)+runTrailerSize))%esize != 0 || size > math.MaxInt {
		return nil, bad("%d bytes is not a whole run", size)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: mapping index run %s: %w", name, err)
	}
	r := &run{name: name, data: data, n: int((size - int64(len(runMagic)+runTrailerSize)) / esize), esize: int(esize)}
	r.refs.Store(1)
	if err := r.check(key); err != nil {
		r.release()
		return nil, fmt.Errorf("%w %s: %w", errBadRun, name, err)
	}
	return r, nil
}

func (r *run) check(key *crypt.MasterKey) error {
	d := r.data
	switch magic := string(d[:len(runMagic)]); {
	case key == nil && magic == sealedRunMagic:
		return errors.New("a sealed run, in a store without a key")
	case key != nil && magic == runMagic:
		return errors.New("a plain run, in an encrypted store")
	case magic != runMagic && magic != sealedRunMagic:
		return fmt.Errorf("magic %q", d[:len(runMagic)])
	}
	end := len(d) - runTrailerSize
	if key != nil {
		// The MAC first: nothing else of the file is trusted before it.
		mac := key.NewMAC(crypt.KindIndex, "")
		_, _ = mac.Write(d[:end+8])
		if !crypt.EqualMAC(mac.Sum(nil), d[end+8:]) {
			return fmt.Errorf("MAC mismatch: %w", crypt.ErrTampered)
		}
	}
	if n := binary.LittleEndian.Uint64(d[end : end+8]); n != uint64(r.n) {
		return fmt.Errorf("count %d, but %d entries", n, r.n)
	}
	if key == nil {
		sum := blake3.Sum256(d[:end+8])
		if !bytes.Equal(sum[:], d[end+8:]) {
			return errors.New("checksum mismatch")
		}
	}
	for i := 1; i < r.n; i++ {
		if bytes.Compare(r.id(i-1), r.id(i)) >= 0 {
			return fmt.Errorf("entry %d out of order", i)
		}
	}
	return nil
}

// runWriter writes a run to a temporary file in dir; commit makes it
// visible under its final name.
type runWriter struct {
	dir    string
	f      *os.File
	w      *bufio.Writer
	h      hash.Hash // BLAKE3-256, or the MAC of a sealed run
	esize  int
	sealed bool
	n      uint64
	last   chunk.ID
	buf    []byte
	owner  owner
}

// newRunWriter starts a run in dir, sealed if key is not nil; sizeHint is
// the number of entries expected, or 0 when unknown.
func newRunWriter(dir string, o owner, sizeHint int, key *crypt.MasterKey) (*runWriter, error) {
	f, err := os.CreateTemp(dir, runTmpPrefix)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: writing index run: %w", err)
	}
	rw := &runWriter{dir: dir, f: f, h: blake3.New(), esize: runEntrySize, owner: o}
	magic := runMagic
	if key != nil {
		rw.h, rw.esize, rw.sealed, magic = key.NewMAC(crypt.KindIndex, ""), sealedRunEntry, true, sealedRunMagic
	}
	bufSize := 1 << 20
	if sizeHint > 0 {
		bufSize = min(bufSize, len(runMagic)+sizeHint*rw.esize+runTrailerSize)
	}
	rw.w = bufio.NewWriterSize(f, bufSize)
	rw.write([]byte(magic))
	return rw, nil
}

func (rw *runWriter) write(b []byte) {
	_, _ = rw.w.Write(b) // the error is sticky; commit sees it at Flush
	_, _ = rw.h.Write(b)
}

// add appends e; IDs must come in strictly increasing order.
func (rw *runWriter) add(e runEntry) error {
	if rw.n > 0 && bytes.Compare(e.id[:], rw.last[:]) <= 0 {
		return fmt.Errorf("chunkstore: index run entries out of order at %s", e.id.Short())
	}
	if e.loc.Sealed != rw.sealed {
		return fmt.Errorf("chunkstore: a sealed and a plain record in one index run, at %s", e.id.Short())
	}
	rw.buf = appendRunEntry(rw.buf[:0], e)
	rw.write(rw.buf)
	rw.n++
	rw.last = e.id
	return nil
}

// commit finishes the file, syncs it and renames it into place. It returns
// the run, mapped from the file it wrote: a merge in another process may
// remove the name before this one could open it again.
func (rw *runWriter) commit() (*run, error) {
	tmp := rw.f.Name()
	rw.write(binary.LittleEndian.AppendUint64(nil, rw.n))
	_, _ = rw.w.Write(rw.h.Sum(nil))
	err := rw.w.Flush()
	if err == nil {
		err = rw.f.Chmod(0o644)
	}
	if err == nil {
		err = rw.owner.file(rw.f)
	}
	if err == nil {
		err = rw.f.Sync()
	}
	var r *run
	if err == nil {
		size := len(runMagic) + int(rw.n)*rw.esize + runTrailerSize
		r = &run{n: int(rw.n), esize: rw.esize}
		r.refs.Store(1)
		r.data, err = unix.Mmap(int(rw.f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	}
	err = errors.Join(err, rw.f.Close())
	if err == nil {
		r.name, err = renameNew(tmp, rw.dir, runExt)
	}
	if err == nil {
		err = syncDir(rw.dir)
	}
	if err != nil {
		if r != nil {
			r.release()
		}
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("chunkstore: writing index run: %w", err)
	}
	return r, nil
}

func (rw *runWriter) abort() {
	rw.f.Close()
	_ = os.Remove(rw.f.Name())
}

// renameNew links tmp into dir under a fresh random name with ext, never
// replacing a file, and removes tmp; it returns the name.
func renameNew(tmp, dir, ext string) (string, error) {
	for {
		name := fmt.Sprintf("%016x%s", randUint64(), ext)
		err := os.Link(tmp, filepath.Join(dir, name))
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		return name, os.Remove(tmp)
	}
}

// writeRun writes entries, sorted by ID and unique, as a new run in dir,
// sealed if key is not nil.
func writeRun(dir string, entries []runEntry, o owner, key *crypt.MasterKey) (*run, error) {
	rw, err := newRunWriter(dir, o, len(entries), key)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if err := rw.add(e); err != nil {
			rw.abort()
			return nil, err
		}
	}
	return rw.commit()
}

// mergeRuns calls fn for each ID of runs in order, once, with its entry in
// the first run (in the order given) that holds it.
func mergeRuns(runs []*run, fn func(id chunk.ID, e []byte) error) error {
	pos := make([]int, len(runs))
	for {
		best := -1
		for k, r := range runs {
			if pos[k] == r.n {
				continue
			}
			if best < 0 || bytes.Compare(r.id(pos[k]), runs[best].id(pos[best])) < 0 {
				best = k
			}
		}
		if best < 0 {
			return nil
		}
		id := chunk.ID(runs[best].id(pos[best]))
		if err := fn(id, runs[best].entry(pos[best])); err != nil {
			return err
		}
		for k, r := range runs {
			if pos[k] < r.n && bytes.Equal(r.id(pos[k]), id[:]) {
				pos[k]++
			}
		}
	}
}

// listRunNames returns the names of the runs in dir.
func listRunNames(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: listing index runs: %w", err)
	}
	var names []string
	for _, e := range ents {
		if n := e.Name(); strings.HasSuffix(n, runExt) && !strings.HasPrefix(n, ".") && e.Type().IsRegular() {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names, nil
}

// Compaction keeps the number of runs logarithmic in the number of chunks:
// runs are grouped in levels by size (a level holds up to compactFanIn
// times the entries of the one below), and once compactFanIn runs share a
// level they are merged into one.
const (
	compactBase  = 4096
	compactFanIn = 4
)

func runLevel(n int) int {
	l := 0
	for n >= compactBase {
		n /= compactFanIn
		l++
	}
	return l
}

// compactionPick returns the runs to merge next: every run of the lowest
// level that has compactFanIn of them and, if maxMerge is not 0, at most
// maxMerge entries in all; or nil.
func compactionPick(runs []*run, maxMerge int) []*run {
	levels := map[int][]*run{}
	entries := map[int]int{}
	for _, r := range runs {
		l := runLevel(r.n)
		levels[l] = append(levels[l], r)
		entries[l] += r.n
	}
	low := math.MaxInt
	for l, rs := range levels {
		if len(rs) >= compactFanIn && l < low && (maxMerge == 0 || entries[l] <= maxMerge) {
			low = l
		}
	}
	if low == math.MaxInt {
		return nil
	}
	return levels[low]
}
