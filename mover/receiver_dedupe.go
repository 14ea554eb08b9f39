package mover

import (
	"encoding/binary"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// addCopy remembers where a verified copy of rec's chunk is, in a table of
// fixed size (it only saves sending a chunk twice): memory that does not
// grow with the tree.
func (r *receiver) addCopy(path string, rec posRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.copies == nil {
		r.copies = new(copyTable)
	}
	r.copies.add(rec.id, loc{path: path, off: rec.off, n: rec.n})
}

// copyOf returns where a verified copy of id is, if the table knows one.
func (r *receiver) copyOf(id chunk.ID) (loc, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.copies == nil {
		return loc{}, false
	}
	return r.copies.get(id)
}

// copyLocal copies a chunk already in DEST.partial to position p, after
// checking its hash. It reports whether it did.
func (r *receiver) copyLocal(l loc, p pos, id chunk.ID) bool {
	bp := r.buf()
	defer r.bufs.Put(bp)
	buf := (*bp)[:p.n]
	if err := r.fc.readAt(l.path, buf, l.off); err != nil || chunk.Sum(buf) != id {
		return false
	}
	if err := r.writeChunk(buf, id, []pos{p}); err != nil {
		r.fail(err)
		return false
	}
	r.s.metrics.localChunks.Inc()
	return true
}

// copyDeduped copies a chunk from a tree committed by an earlier transfer.
func (r *receiver) copyDeduped(p pos, id chunk.ID) bool {
	v, ok, err := dbGet(r.s.db, keyDedupe(r.peer, id))
	if err != nil || !ok {
		return false
	}
	abs, off, n, ok := decodeDedupe(v)
	if !ok || n != p.n {
		return false
	}
	root, rel := r.s.rootFor(abs)
	if root == nil {
		return false
	}
	f, err := root.Open(rel)
	if err != nil {
		return false
	}
	defer f.Close()
	bp := r.buf()
	defer r.bufs.Put(bp)
	buf := (*bp)[:p.n]
	if _, err := f.ReadAt(buf, off); err != nil || chunk.Sum(buf) != id {
		return false
	}
	if err := r.writeChunk(buf, id, []pos{p}); err != nil {
		r.fail(err)
		return false
	}
	r.s.metrics.dedupedChunks.Inc()
	return true
}

func encodeDedupe(abs string, off int64, n uint32) []byte {
	b := binary.AppendUvarint(nil, uint64(len(abs)))
	b = append(b, abs...)
	b = binary.BigEndian.AppendUint64(b, uint64(off))
	return binary.BigEndian.AppendUint32(b, n)
}

func decodeDedupe(b []byte) (string, int64, uint32, bool) {
	l, k := binary.Uvarint(b)
	if k <= 0 || l > uint64(len(b)-k) || len(b)-k-int(l) != 12 {
		return "", 0, 0, false
	}
	abs := string(b[k : k+int(l)])
	b = b[k+int(l):]
	return abs, int64(binary.BigEndian.Uint64(b)), binary.BigEndian.Uint32(b[8:]), true
}
