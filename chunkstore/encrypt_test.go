package chunkstore_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/chunkstore/storetest"
)

// Sealed record and run layouts, as documented in pack.go and runs.go; the
// tamper tests poke at them on purpose.
const (
	sealedMagic      = "PGE1"
	sealedHeaderSize = 44
	sealedRunMagic   = "PGPIDX\x00\x02"
	sealedRunEntry   = 52
	runTrailerSize   = 8 + 32
)

// An encrypted store, in a directory and on a Remote, passes the same
// conformance suite as a plain one.
func TestEncryptedConformance(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   chunkstore.LocalOptions
		remote bool
	}{
		{"dir", chunkstore.LocalOptions{}, false},
		{"dir small packs", chunkstore.LocalOptions{PackSize: 256 << 10, FlushBytes: 100 << 10}, false},
		{"dir uncompressed", chunkstore.LocalOptions{NoCompression: true}, false},
		{"remote", chunkstore.LocalOptions{}, true},
		{"remote small packs", chunkstore.LocalOptions{PackSize: 256 << 10, FlushBytes: 100 << 10}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) chunkstore.Store {
				opts := tc.opts
				opts.Key = crypt.NewMasterKey()
				if tc.remote {
					opts.Remote = dirBackend(t)
				}
				l, err := chunkstore.OpenLocal(t.TempDir(), opts)
				require.NoError(t, err)
				return l
			})
		})
	}
}

// A plain store still iterates in chunk ID order (storetest asks only for
// a stable one, which an encrypted store's object ID order is).
func TestEncryptedPlainIterateOrder(t *testing.T) {
	l, err := chunkstore.OpenLocal(t.TempDir(), chunkstore.LocalOptions{})
	require.NoError(t, err)
	defer l.Close()
	putChunks(t, l, storetest.Chunks(9, 40))
	require.NoError(t, l.Flush(t.Context()))
	var seen []chunk.ID
	require.NoError(t, l.Iterate(t.Context(), func(id chunk.ID, _ chunkstore.Info) error {
		seen = append(seen, id)
		return nil
	}))
	require.Len(t, seen, 40)
	require.True(t, slices.IsSortedFunc(seen, func(a, b chunk.ID) int { return bytes.Compare(a[:], b[:]) }))
}

// knownChunks are chunks whose plaintext holds a marker, uncompressible
// around it so that a store without compression would keep it verbatim.
func knownChunks(n int) [][]byte {
	r := rand.New(rand.NewPCG(7, 7))
	out := make([][]byte, n)
	for i := range out {
		c := storetest.RandomBytes(r, 2000+i*100)
		copy(c[500:], "KNOWN-PLAINTEXT-MARKER")
		out[i] = c
	}
	return out
}

// filesUnder returns the contents of every regular file under dirs, by path.
func filesUnder(t *testing.T, dirs ...string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, d := range dirs {
		require.NoError(t, filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(p)
			out[p] = b
			return err
		}))
	}
	return out
}

// No file of an encrypted store, in a directory or on a Remote (its
// objects and its cache), holds a plain chunk ID, in binary or hex, or a
// known plaintext; the same check finds them in a plain store, so that it
// is not vacuous.
func TestEncryptedNoPlainIDs(t *testing.T) {
	chunks := knownChunks(30)
	for _, tc := range []struct {
		name      string
		key       bool
		remote    bool
		wantFound bool
	}{
		{"plain dir (control)", false, false, true},
		{"dir", true, false, false},
		{"remote", true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := chunkstore.LocalOptions{NoCompression: true, PackSize: 32 << 10}
			dirs := []string{dir}
			if tc.key {
				opts.Key = crypt.NewMasterKey()
			}
			if tc.remote {
				root := t.TempDir()
				b := dirBackendAt(t, root)
				opts.Remote = b
				dirs = append(dirs, root)
			}
			l, err := chunkstore.OpenLocal(dir, opts)
			require.NoError(t, err)
			ids := putChunks(t, l, chunks)
			require.NoError(t, l.Flush(t.Context()))
			requireChunks(t, l, chunks)
			require.NoError(t, l.Close())

			files := filesUnder(t, dirs...)
			var packs, runs int
			for p := range files {
				switch filepath.Ext(p) {
				case ".pack":
					packs++
				case ".idx":
					runs++
				}
			}
			require.NotZero(t, packs)
			require.NotZero(t, runs)
			found := false
			for p, b := range files {
				if bytes.Contains(b, []byte("KNOWN-PLAINTEXT-MARKER")) {
					found = true
					if !tc.wantFound {
						t.Errorf("%s holds a known plaintext", p)
					}
				}
				for _, id := range ids {
					if bytes.Contains(b, id[:]) || bytes.Contains(b, []byte(hex.EncodeToString(id[:]))) {
						found = true
						if !tc.wantFound {
							t.Errorf("%s holds the plain ID %s", p, id.Short())
						}
					}
				}
			}
			require.Equal(t, tc.wantFound, found)
		})
	}
}

// sealedRecord is a sealed record found in a pack file.
type sealedRecord struct {
	pack string
	off  int
	size int
	oid  crypt.ObjectID
}

// sealedRecords walks the sealed records of every pack under dir by their
// clear headers, as a scan without the key does.
func sealedRecords(t *testing.T, dir string) map[crypt.ObjectID]sealedRecord {
	t.Helper()
	out := map[crypt.ObjectID]sealedRecord{}
	packs, err := filepath.Glob(filepath.Join(dir, "packs", "*.pack"))
	require.NoError(t, err)
	for _, p := range packs {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		for off := 0; off+sealedHeaderSize <= len(b); {
			require.Equal(t, sealedMagic, string(b[off:off+4]), "%s at %d", p, off)
			var r sealedRecord
			r.pack, r.off = p, off
			copy(r.oid[:], b[off+4:off+36])
			r.size = sealedHeaderSize + int(binary.LittleEndian.Uint32(b[off+36:off+40]))
			out[r.oid] = r
			off += r.size
		}
	}
	return out
}

// alterFile applies fn to the bytes of the file at p.
func alterFile(t *testing.T, p string, fn func(b []byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(p, fn(b), 0o644))
}

// remac recomputes a sealed run's MAC: what only a holder of the key can
// do, so that the tests reach the checks behind the run's.
func remac(key *crypt.MasterKey, b []byte) []byte {
	end := len(b) - runTrailerSize
	mac := key.NewMAC(crypt.KindIndex, "")
	mac.Write(b[:end+8])
	copy(b[end+8:], mac.Sum(nil))
	return b
}

// Every alteration of an encrypted store's packs and runs is reported by
// Get and Verify as corruption, or reads as missing chunks from a run that
// is refused whole; none ever yields data.
func TestEncryptedTamper(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	chunks := make([][]byte, 6)
	for i := range chunks {
		chunks[i] = storetest.RandomBytes(r, 3000) // one size: records can swap places
	}
	ids := ids(chunks)
	type victim struct {
		idx     []int // chunks that must fail
		missing bool  // they read as missing (a refused run), not as corrupt
		sealed  bool  // the seal is what refuses them (crypt.ErrTampered)
	}
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, dir string, key *crypt.MasterKey, recs map[crypt.ObjectID]sealedRecord) victim
	}{
		{"flip sealed byte", func(t *testing.T, dir string, key *crypt.MasterKey, recs map[crypt.ObjectID]sealedRecord) victim {
			rec := recs[key.ObjectID(ids[1])]
			alterFile(t, rec.pack, func(b []byte) []byte { b[rec.off+sealedHeaderSize+100] ^= 1; return b })
			return victim{idx: []int{1}, sealed: true}
		}},
		{"flip tag byte", func(t *testing.T, dir string, key *crypt.MasterKey, recs map[crypt.ObjectID]sealedRecord) victim {
			rec := recs[key.ObjectID(ids[2])]
			alterFile(t, rec.pack, func(b []byte) []byte { b[rec.off+rec.size-1] ^= 0x80; return b })
			return victim{idx: []int{2}, sealed: true}
		}},
		{"flip clear header byte", func(t *testing.T, dir string, key *crypt.MasterKey, recs map[crypt.ObjectID]sealedRecord) victim {
			rec := recs[key.ObjectID(ids[0])]
			alterFile(t, rec.pack, func(b []byte) []byte { b[rec.off+10] ^= 1; return b })
			return victim{idx: []int{0}}
		}},
		{"swap records in pack", func(t *testing.T, dir string, key *crypt.MasterKey, recs map[crypt.ObjectID]sealedRecord) victim {
			a, b := recs[key.ObjectID(ids[1])], recs[key.ObjectID(ids[4])]
			require.Equal(t, a.pack, b.pack)
			require.Equal(t, a.size, b.size)
			alterFile(t, a.pack, func(p []byte) []byte {
				ra := slices.Clone(p[a.off : a.off+a.size])
				copy(p[a.off:], p[b.off:b.off+b.size])
				copy(p[b.off:], ra)
				return p
			})
			return victim{idx: []int{1, 4}}
		}},
		{"swap records, clear headers rewritten", func(t *testing.T, dir string, key *crypt.MasterKey, recs map[crypt.ObjectID]sealedRecord) victim {
			// The store moves record 4 under chunk 1's object ID, with a
			// clear header that says so and a valid CRC: only the seal,
			// bound to the object ID, can tell.
			a, b := recs[key.ObjectID(ids[1])], recs[key.ObjectID(ids[4])]
			alterFile(t, a.pack, func(p []byte) []byte {
				ra := slices.Clone(p[a.off : a.off+a.size])
				copy(p[a.off:], p[b.off:b.off+b.size])
				copy(p[b.off:], ra)
				for _, r := range []sealedRecord{a, b} {
					copy(p[r.off+4:r.off+36], r.oid[:])
					binary.LittleEndian.PutUint32(p[r.off+40:], crc32.Checksum(p[r.off:r.off+40], crc32.MakeTable(crc32.Castagnoli)))
				}
				return p
			})
			return victim{idx: []int{1, 4}, sealed: true}
		}},
		{"swap index entries", func(t *testing.T, dir string, key *crypt.MasterKey, recs map[crypt.ObjectID]sealedRecord) victim {
			// Two entries' locations swapped, the MAC left as it was: the
			// run is refused whole.
			runs := runFiles(t, dir)
			require.Len(t, runs, 1)
			alterFile(t, runs[0], func(b []byte) []byte { return swapEntries(b, 0, 3) })
			return victim{idx: []int{0, 1, 2, 3, 4, 5}, missing: true}
		}},
		{"swap index entries, MAC recomputed", func(t *testing.T, dir string, key *crypt.MasterKey, recs map[crypt.ObjectID]sealedRecord) victim {
			// As if the index could be forged: the records themselves
			// still refuse to be read under another chunk's ID.
			runs := runFiles(t, dir)
			require.Len(t, runs, 1)
			var moved []int
			alterFile(t, runs[0], func(b []byte) []byte {
				b = remac(key, swapEntries(b, 0, 3))
				for _, e := range []int{0, 3} {
					off := len(sealedRunMagic) + e*sealedRunEntry
					for i, id := range ids {
						if oid := key.ObjectID(id); bytes.Equal(oid[:], b[off:off+32]) {
							moved = append(moved, i)
						}
					}
				}
				return b
			})
			require.Len(t, moved, 2)
			return victim{idx: moved}
		}},
		{"truncate run", func(t *testing.T, dir string, key *crypt.MasterKey, recs map[crypt.ObjectID]sealedRecord) victim {
			runs := runFiles(t, dir)
			require.Len(t, runs, 1)
			alterFile(t, runs[0], func(b []byte) []byte { return b[:len(b)-sealedRunEntry] })
			return victim{idx: []int{0, 1, 2, 3, 4, 5}, missing: true}
		}},
		{"truncate pack", func(t *testing.T, dir string, key *crypt.MasterKey, recs map[crypt.ObjectID]sealedRecord) victim {
			var last sealedRecord
			for _, r := range recs {
				if r.off > last.off {
					last = r
				}
			}
			alterFile(t, last.pack, func(b []byte) []byte { return b[:last.off+last.size-20] })
			for i, id := range ids {
				if key.ObjectID(id) == last.oid {
					return victim{idx: []int{i}}
				}
			}
			t.Fatal("no chunk has the last record")
			return victim{}
		}},
		{"plain run planted", func(t *testing.T, dir string, key *crypt.MasterKey, recs map[crypt.ObjectID]sealedRecord) victim {
			// A plain store's run, naming the same chunks by plain ID,
			// is refused in an encrypted store.
			p := t.TempDir()
			pl, err := chunkstore.OpenLocal(p, chunkstore.LocalOptions{})
			require.NoError(t, err)
			putChunks(t, pl, chunks)
			require.NoError(t, pl.Close())
			planted := runFiles(t, p)
			require.Len(t, planted, 1)
			b, err := os.ReadFile(planted[0])
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Join(dir, "idx", "00000000000000aa.idx"), b, 0o644))
			return victim{}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			key := crypt.NewMasterKey()
			opts := chunkstore.LocalOptions{Key: key, NoCompression: true}
			l, err := chunkstore.OpenLocal(dir, opts)
			require.NoError(t, err)
			putChunks(t, l, chunks)
			require.NoError(t, l.Close())
			v := tc.tamper(t, dir, key, sealedRecords(t, dir))

			l, err = chunkstore.OpenLocal(dir, opts)
			require.NoError(t, err)
			defer l.Close()
			bad := map[int]bool{}
			for _, i := range v.idx {
				bad[i] = true
			}
			for i, id := range ids {
				dst := []byte("dst")
				got, err := l.Get(t.Context(), id, dst)
				if !bad[i] {
					require.NoError(t, err, "chunk %d", i)
					require.Equal(t, chunks[i], got[3:], "chunk %d", i)
					continue
				}
				require.Equal(t, []byte("dst"), got, "chunk %d: data returned with an error", i)
				if v.missing {
					require.ErrorIs(t, err, chunk.ErrNotFound, "chunk %d", i)
				} else {
					var ce *chunk.CorruptChunkError
					require.ErrorAs(t, err, &ce, "chunk %d", i)
					require.Equal(t, id, ce.ID, "chunk %d", i)
					if v.sealed {
						require.ErrorIs(t, err, crypt.ErrTampered, "chunk %d", i)
					}
				}
				got, _, err = l.GetStored(t.Context(), id, []byte("dst"))
				require.Error(t, err)
				require.Equal(t, []byte("dst"), got, "chunk %d: stored bytes returned with an error", i)
			}
			if v.missing || tc.name == "plain run planted" {
				require.NotEmpty(t, l.Damaged(), "the altered run must be refused")
			}
			var reported int
			st, err := l.Verify(t.Context(), func(id chunk.ID, err error) {
				reported++
				var ce *chunk.CorruptChunkError
				require.ErrorAs(t, err, &ce)
				if id == (chunk.ID{}) {
					// Not opened: the message names the object, not a zero chunk ID.
					require.Contains(t, err.Error(), "object ")
					require.NotContains(t, err.Error(), "0000000000000000")
				}
			})
			require.NoError(t, err)
			if v.missing {
				require.Zero(t, st.Chunks)
			} else {
				require.Equal(t, len(v.idx), st.Corrupt)
				require.Equal(t, len(v.idx), reported)
				require.Equal(t, len(chunks), st.Chunks)
			}
		})
	}
}

// swapEntries swaps the locations (pack, offset, sealed length) of entries
// i and j of a sealed run, keeping the object IDs in order.
func swapEntries(b []byte, i, j int) []byte {
	oi := len(sealedRunMagic) + i*sealedRunEntry + 32
	oj := len(sealedRunMagic) + j*sealedRunEntry + 32
	li := slices.Clone(b[oi : oi+20])
	copy(b[oi:oi+20], b[oj:oj+20])
	copy(b[oj:oj+20], li)
	return b
}

// A store is opened only as what it is: a key for a plain store, none for
// an encrypted one, and another store's key are each refused at open with
// an error that says which, in a directory and on a Remote.
func TestEncryptedFormatRefusals(t *testing.T) {
	for _, remote := range []bool{false, true} {
		name := "dir"
		if remote {
			name = "remote"
		}
		t.Run(name, func(t *testing.T) {
			open := func(t *testing.T, key *crypt.MasterKey) func(opts chunkstore.LocalOptions) (*chunkstore.Local, error) {
				b := dirBackend(t)
				dir := t.TempDir()
				return func(opts chunkstore.LocalOptions) (*chunkstore.Local, error) {
					if remote {
						opts.Remote = b
						dir = t.TempDir() // another host's cache
					}
					return chunkstore.OpenLocal(dir, opts)
				}
			}
			key := crypt.NewMasterKey()

			t.Run("encrypted without key", func(t *testing.T) {
				o := open(t, key)
				l, err := o(chunkstore.LocalOptions{Key: key})
				require.NoError(t, err)
				putChunks(t, l, storetest.Chunks(1, 3))
				require.NoError(t, l.Close())
				_, err = o(chunkstore.LocalOptions{})
				require.ErrorIs(t, err, chunkstore.ErrEncrypted)
				require.ErrorContains(t, err, "encrypted")
			})
			t.Run("plain with key", func(t *testing.T) {
				o := open(t, key)
				l, err := o(chunkstore.LocalOptions{})
				require.NoError(t, err)
				putChunks(t, l, storetest.Chunks(1, 3))
				require.NoError(t, l.Close())
				_, err = o(chunkstore.LocalOptions{Key: key})
				require.ErrorIs(t, err, chunkstore.ErrNotEncrypted)
			})
			t.Run("wrong key", func(t *testing.T) {
				o := open(t, key)
				l, err := o(chunkstore.LocalOptions{Key: key})
				require.NoError(t, err)
				chunks := storetest.Chunks(1, 3)
				putChunks(t, l, chunks)
				require.NoError(t, l.Close())
				_, err = o(chunkstore.LocalOptions{Key: crypt.NewMasterKey()})
				require.ErrorIs(t, err, chunkstore.ErrWrongKey)
				require.ErrorIs(t, err, crypt.ErrTampered)
				l, err = o(chunkstore.LocalOptions{Key: key})
				require.NoError(t, err, "the right key still opens it")
				requireChunks(t, l, chunks)
				require.NoError(t, l.Close())
			})
		})
	}
}

// A directory store's format marker altered: its check removed, or made
// garbage, is refused as tampered, never taken for a plain store.
func TestEncryptedFormatMarkerTampered(t *testing.T) {
	key := crypt.NewMasterKey()
	for _, tc := range []struct {
		name  string
		alter func(string) string
	}{
		{"check removed", func(s string) string { return strings.SplitN(s, "\n", 2)[0] + "\n" }},
		{"check garbage", func(s string) string { return strings.Replace(s, "check ", "check AAAA", 1) }},
		{"plain marker", func(string) string { return "pgporter-chunkstore-2\n" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l, err := chunkstore.OpenLocal(dir, chunkstore.LocalOptions{Key: key})
			require.NoError(t, err)
			require.NoError(t, l.Close())
			alterFile(t, filepath.Join(dir, "format"), func(b []byte) []byte { return []byte(tc.alter(string(b))) })
			_, err = chunkstore.OpenLocal(dir, chunkstore.LocalOptions{Key: key})
			require.Error(t, err)
			require.True(t, errors.Is(err, crypt.ErrTampered) || errors.Is(err, chunkstore.ErrWrongKey) ||
				errors.Is(err, chunkstore.ErrNotEncrypted), "%v", err)
		})
	}
}

// GetStored of an encrypted store hands out the opened record's stored
// bytes with the inner header's Info: what a repository mover sends a peer
// that holds no key.
func TestEncryptedGetStored(t *testing.T) {
	l, err := chunkstore.OpenLocal(t.TempDir(), chunkstore.LocalOptions{Key: crypt.NewMasterKey()})
	require.NoError(t, err)
	defer l.Close()
	chunks := append(storetest.EdgeChunks(), storetest.Chunks(5, 10)...)
	ids := putChunks(t, l, chunks)
	for _, flushed := range []bool{false, true} {
		if flushed {
			require.NoError(t, l.Flush(t.Context()))
		}
		for i, id := range ids {
			got, info, err := l.GetStored(t.Context(), id, []byte("pre"))
			require.NoError(t, err)
			require.Equal(t, "pre", string(got[:3]))
			require.Equal(t, len(chunks[i]), info.PlainLen)
			require.Equal(t, len(got)-3, info.StoredLen)
			plain, err := chunk.Decompress(nil, got[3:], info.Codec, info.PlainLen)
			require.NoError(t, err)
			require.Equal(t, id, chunk.Sum(plain))
		}
	}
}

func dirBackendAt(t *testing.T, root string) *objstore.Dir {
	t.Helper()
	d, err := objstore.OpenDir(root)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d
}

// On a Remote too, a sealed record altered in the object store is refused
// as tampered when read through the block cache by another host, and an
// altered run object is refused whole (after one fetch again), its chunks
// reading as missing.
func TestEncryptedTamperRemote(t *testing.T) {
	root := t.TempDir()
	b := dirBackendAt(t, root)
	key := crypt.NewMasterKey()
	opts := chunkstore.LocalOptions{Key: key, Remote: b, NoCompression: true}
	l, err := chunkstore.OpenLocal(t.TempDir(), opts)
	require.NoError(t, err)
	chunks := knownChunks(5)
	ids := putChunks(t, l, chunks)
	require.NoError(t, l.Close())

	recs := sealedRecords(t, filepath.Join(root, "chunks"))
	rec := recs[key.ObjectID(ids[2])]
	alterFile(t, rec.pack, func(p []byte) []byte { p[rec.off+sealedHeaderSize+50] ^= 4; return p })
	l, err = chunkstore.OpenLocal(t.TempDir(), opts) // another host: an empty cache
	require.NoError(t, err)
	for i, id := range ids {
		got, err := l.Get(t.Context(), id, nil)
		if i != 2 {
			require.NoError(t, err)
			require.Equal(t, chunks[i], got)
			continue
		}
		require.ErrorIs(t, err, crypt.ErrTampered)
		require.Empty(t, got)
	}
	require.NoError(t, l.Close())

	runs := runFiles(t, filepath.Join(root, "chunks"))
	require.Len(t, runs, 1)
	alterFile(t, runs[0], func(p []byte) []byte { p[len(sealedRunMagic)+40] ^= 1; return p })
	l, err = chunkstore.OpenLocal(t.TempDir(), opts)
	require.NoError(t, err)
	defer l.Close()
	require.Len(t, l.Damaged(), 1)
	_, err = l.Get(t.Context(), ids[0], nil)
	require.ErrorIs(t, err, chunk.ErrNotFound)
}

// Runs of an encrypted store merge into sealed runs that read back, and a
// WriteOnly writer (wal-push's) with the key writes chunks another opener
// finds, in object ID order, with the inner headers' Info.
func TestEncryptedCompactionAndWriteOnly(t *testing.T) {
	dir := t.TempDir()
	key := crypt.NewMasterKey()
	l, err := chunkstore.OpenLocal(dir, chunkstore.LocalOptions{Key: key})
	require.NoError(t, err)
	var all [][]byte
	for i := range 2 * compactFanIn {
		cs := storetest.Chunks(uint64(100+i), 5)
		putChunks(t, l, cs)
		require.NoError(t, l.Flush(t.Context()))
		all = append(all, cs...)
	}
	require.Less(t, len(runFiles(t, dir)), 2*compactFanIn, "no merge happened")
	require.NoError(t, l.Close())

	w, err := chunkstore.OpenLocal(dir, chunkstore.LocalOptions{Key: key, WriteOnly: true})
	require.NoError(t, err)
	more := storetest.Chunks(200, 5)
	putChunks(t, w, more)
	putChunks(t, w, more) // held in its pending set: not written twice
	require.NoError(t, w.Close())
	all = append(all, more...)

	l, err = chunkstore.OpenLocal(dir, chunkstore.LocalOptions{Key: key})
	require.NoError(t, err)
	defer l.Close()
	requireChunks(t, l, all)
	requireVerifyClean(t, l, len(all))
	want := map[chunk.ID]int{}
	for _, c := range all {
		want[chunk.Sum(c)] = len(c)
	}
	var oids []crypt.ObjectID
	require.NoError(t, l.Iterate(t.Context(), func(id chunk.ID, info chunkstore.Info) error {
		require.Equal(t, want[id], info.PlainLen)
		delete(want, id)
		oids = append(oids, key.ObjectID(id))
		return nil
	}))
	require.Empty(t, want)
	require.True(t, slices.IsSortedFunc(oids, func(a, b crypt.ObjectID) int { return bytes.Compare(a[:], b[:]) }))
}
