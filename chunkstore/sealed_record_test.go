package chunkstore

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/crypt"
)

// testSealedRecord encodes data as a sealed record under key, as Put does.
func testSealedRecord(key *crypt.MasterKey, data []byte) []byte {
	l := &Local{key: key, opts: LocalOptions{}.withDefaults()}
	id := chunk.Sum(data)
	bp, rec, _ := l.sealRecord(id, l.indexKey(id), data)
	out := bytes.Clone(rec)
	putBuf(bp)
	return out
}

// A sealed record's clear header decodes to its object ID and length, a
// scan walks sealed records without the key, and the record opens under
// its object ID only, to the inner header and the stored bytes.
func TestSealedRecordRoundTrip(t *testing.T) {
	key := crypt.NewMasterKey()
	chunks := [][]byte{[]byte("a"), bytes.Repeat([]byte("abc"), 1000), make([]byte, 70000)}
	var pack []byte
	for _, c := range chunks {
		pack = append(pack, testSealedRecord(key, c)...)
	}
	var offs []int64
	end, err := scanSealedRecords(bytes.NewReader(pack), 0, int64(len(pack)), func(off int64, h sealedHeader) error {
		offs = append(offs, off)
		return nil
	})
	require.NoError(t, err)
	require.EqualValues(t, len(pack), end)
	require.Len(t, offs, len(chunks))
	for i, c := range chunks {
		id := chunk.Sum(c)
		rec := pack[offs[i]:]
		h, err := decodeSealedRecordHeader(rec)
		require.NoError(t, err)
		require.Equal(t, key.ObjectID(id), h.OID)
		rec = bytes.Clone(rec[:h.size()])
		other := chunk.Sum([]byte("other"))
		oid := key.ObjectID(other)
		_, err = key.Open(nil, crypt.KindChunk, string(oid[:]), rec[sealedHeaderSize:])
		require.ErrorIs(t, err, crypt.ErrTampered, "opened under another chunk's object ID")
		inner, err := key.OpenInPlace(crypt.KindChunk, string(h.OID[:]), rec[sealedHeaderSize:])
		require.NoError(t, err)
		ih, stored, err := decodeInner(inner)
		require.NoError(t, err)
		require.Equal(t, id, ih.ID)
		require.EqualValues(t, len(c), ih.PlainLen)
		plain, err := chunk.Decompress(nil, stored, ih.Codec, int(ih.PlainLen))
		require.NoError(t, err)
		require.Equal(t, c, plain)
	}
	// A torn tail stops the scan at the last whole record.
	end, err = scanSealedRecords(bytes.NewReader(pack[:len(pack)-1]), 0, int64(len(pack)-1), nil)
	require.NoError(t, err)
	require.Equal(t, offs[len(offs)-1], end)
}

func FuzzSealedRecordHeader(f *testing.F) {
	f.Add(testSealedRecord(crypt.NewMasterKey(), []byte("hello"))[:sealedHeaderSize])
	f.Add([]byte(sealedMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeSealedRecordHeader(b)
		if err != nil {
			return
		}
		require.GreaterOrEqual(t, h.SealedLen, uint32(minSealedLen))
		require.LessOrEqual(t, h.SealedLen, uint32(maxSealedLen))
		enc := make([]byte, sealedHeaderSize)
		putSealedRecordHeader(enc, h)
		require.Equal(t, b[:sealedHeaderSize], enc)
	})
}

func FuzzInner(f *testing.F) {
	f.Add(make([]byte, innerHeaderSize+5))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, stored, err := decodeInner(b)
		if err != nil {
			return
		}
		require.NoError(t, h.validate())
		require.EqualValues(t, len(stored), h.StoredLen)
		enc := make([]byte, innerHeaderSize)
		putInner(enc, h)
		require.Equal(t, b[:innerHeaderSize], enc)
	})
}

func FuzzSealedRunLoc(f *testing.F) {
	f.Add(appendRunEntry(nil, runEntry{loc: chunkLoc{Pack: 1 << 63, Offset: 4096, StoredLen: minSealedLen + 10, Sealed: true}}))
	f.Add(make([]byte, sealedRunEntry))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) != sealedRunEntry {
			return
		}
		loc, err := decodeRunLoc(b)
		if err != nil {
			return
		}
		require.True(t, loc.Sealed)
		require.NoError(t, loc.validate())
		require.Equal(t, b[chunk.IDSize:], appendRunEntry(nil, runEntry{loc: loc})[chunk.IDSize:])
	})
}

// A sealed run refuses to open without its key, under another key, and a
// plain run refuses to open with one.
func TestSealedRunKeys(t *testing.T) {
	key := crypt.NewMasterKey()
	dir := t.TempDir()
	entries := []runEntry{{id: chunk.Sum([]byte("a")), loc: chunkLoc{Pack: 1 << 63, StoredLen: minSealedLen + 1, Sealed: true}}}
	r, err := writeRun(dir, entries, owner{}, key)
	require.NoError(t, err)
	p := dir + "/" + r.name
	r.release()
	r, err = openRun(p, key)
	require.NoError(t, err)
	loc, ok, err := r.find(entries[0].id)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, entries[0].loc, loc)
	r.release()
	_, err = openRun(p, nil)
	require.ErrorIs(t, err, errBadRun)
	_, err = openRun(p, crypt.NewMasterKey())
	require.ErrorIs(t, err, errBadRun)
	require.ErrorIs(t, err, crypt.ErrTampered)

	plain := []runEntry{{id: chunk.Sum([]byte("a")), loc: chunkLoc{Pack: 1 << 63, StoredLen: 1, PlainLen: 1}}}
	r, err = writeRun(dir, plain, owner{}, nil)
	require.NoError(t, err)
	p = dir + "/" + r.name
	r.release()
	_, err = openRun(p, key)
	require.ErrorIs(t, err, errBadRun)
	// A sealed entry in a plain run, or the reverse, is refused when written.
	_, err = writeRun(dir, entries, owner{}, nil)
	require.Error(t, err)
}
