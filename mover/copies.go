package mover

import (
	"encoding/binary"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// copySlots is the size of a receiver's copyTable: 4096 chunks, about 256
// MiB of data at the default 64 KiB average, in 256 KiB of memory.
const copySlots = 4096

// copyTableBytes is what a copyTable costs, charged with the transfer
// (transferCost).
const copyTableBytes = copySlots * 64

// copyTable remembers where verified copies of chunks written by this
// transfer are in DEST.partial, so that a chunk listed again is copied
// locally instead of asked for. It has a fixed number of slots, one per ID
// hash, and a newer chunk replaces an older one in its slot: it costs the
// same for any tree size, and forgetting a copy costs only a chunk sent
// twice. Repeated chunks of a dump are mostly near each other (runs of
// equal pages), and chunks committed by earlier transfers are found
// through the dedupe index instead. Not safe for concurrent use.
type copyTable struct {
	slots [copySlots]copySlot
}

type copySlot struct {
	id  chunk.ID
	loc loc // loc.n == 0: empty
}

func (t *copyTable) slot(id chunk.ID) *copySlot {
	// IDs are BLAKE3 hashes: any four bytes spread evenly.
	return &t.slots[binary.LittleEndian.Uint32(id[:4])%copySlots]
}

// get returns where a copy of id is, if the table still knows one.
func (t *copyTable) get(id chunk.ID) (loc, bool) {
	s := t.slot(id)
	if s.loc.n == 0 || s.id != id {
		return loc{}, false
	}
	return s.loc, true
}

// add remembers a copy of id at l, replacing whatever shared its slot.
func (t *copyTable) add(id chunk.ID, l loc) {
	s := t.slot(id)
	s.id, s.loc = id, l
}
