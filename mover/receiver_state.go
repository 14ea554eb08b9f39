package mover

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// Receiver state keys in the mover's pebble store:
//
//	t/<tid>/meta            JSON transferMeta
//	t/<tid>/p/<path>\0<idx> ID(32) off(8) len(4): a chunk position durable in DEST.partial
//	t/<tid>/done            JSON transferDone
//	t/<tid>/commit          JSON commitRecord, journaled before the rename into place
//	d/<dest>                JSON destRecord: the transfer that owns DEST.partial, and which directory it is
//	x/<peer>/<ID>           abs path(len-prefixed) off(8) len(4): a copy in a tree this peer committed (dedupe)
func keyMeta(tid string) []byte      { return []byte("t/" + tid + "/meta") }
func keyDone(tid string) []byte      { return []byte("t/" + tid + "/done") }
func keyPosPrefix(tid string) []byte { return []byte("t/" + tid + "/p/") }
func keyPos(tid, p string, idx uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte("t/"+tid+"/p/"+p+"\x00"), idx)
}
func keyDest(dest string) []byte { return []byte("d/" + dest) }

// keyDedupe is per peer: a sender learns from what it need not send only
// about content it sent itself.
func keyDedupe(peer PeerID, id chunk.ID) []byte {
	return append([]byte("x/"+peer.String()+"/"), id[:]...)
}

type transferMeta struct {
	Dest    string       `json:"dest"`
	Peer    string       `json:"peer"`
	Params  chunk.Params `json:"params"`
	Files   uint64       `json:"files"`
	Bytes   uint64       `json:"bytes"`
	Started time.Time    `json:"started"`
}

type transferDone struct {
	Dest         string    `json:"dest"`
	Files        uint64    `json:"files"`
	Bytes        uint64    `json:"bytes"`
	ManifestHash Hash      `json:"manifest_blake3"`
	Committed    time.Time `json:"committed"`
}

type posRecord struct {
	id  chunk.ID
	off int64
	n   uint32
}

func encodePos(r posRecord) []byte {
	b := make([]byte, 0, 44)
	b = append(b, r.id[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(r.off))
	return binary.BigEndian.AppendUint32(b, r.n)
}

func decodePos(b []byte) (posRecord, bool) {
	if len(b) != 44 {
		return posRecord{}, false
	}
	var r posRecord
	copy(r.id[:], b)
	r.off = int64(binary.BigEndian.Uint64(b[32:]))
	r.n = binary.BigEndian.Uint32(b[40:])
	return r, true
}

// loadStored counts the durable positions of this transfer and indexes, as
// far as the budget allows, the chunks they hold for local copies. The
// positions themselves stay in pebble.
func (r *receiver) loadStored() error {
	prefix := keyPosPrefix(r.tid)
	it, err := r.s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[len(prefix):]
		if len(k) < 5 || k[len(k)-5] != 0 {
			continue
		}
		rec, ok := decodePos(it.Value())
		if !ok {
			continue
		}
		r.addCopy(string(k[:len(k)-5]), rec)
		r.durableBytes += int64(rec.n)
		r.durableChunks++
	}
	r.resuming = r.durableChunks > 0
	return it.Error()
}

// storedPos looks up the position a previous connection made durable.
func (r *receiver) storedPos(path string, idx uint32) (posRecord, bool, error) {
	v, ok, err := dbGet(r.s.db, keyPos(r.tid, path, idx))
	if err != nil || !ok {
		return posRecord{}, false, err
	}
	rec, ok := decodePos(v)
	return rec, ok, nil
}

// forgetFile drops the durable positions of a file that failed verification.
func (r *receiver) forgetFile(f *rfile) error {
	start := keyPos(r.tid, f.hdr.Path, 0)
	end := prefixEnd([]byte("t/" + r.tid + "/p/" + f.hdr.Path + "\x00"))
	if err := r.s.db.DeleteRange(start, end, pebble.Sync); err != nil {
		return fmt.Errorf("forgetting %s: %w", f.hdr.Path, err)
	}
	return nil
}
