package mover

import (
	"context"
	"sync"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// readAhead keeps the bytes the chunker has just read, cut and hashed, so
// that the data workers send them from memory instead of reading each file a
// second time (docs/design/0005, step 1.3). The chunker reads into slabs
// taken from here; each chunk it cuts is a slice of the current slab and is
// remembered under its (file, chunk) position until a worker takes it. A
// slab is reused once the chunker has moved past it and no chunk of it is
// remembered or being sent.
//
// The memory is bounded. After each batch of chunks it publishes, the
// chunker waits (wait) while every slab is in use. Slabs come back as
// workers send their chunks, and as the receiver's Needs say which chunks it
// will not ask for (Need.Decided: it has them already): those are forgotten.
// Every chunk held has been published, so the receiver can decide it: the
// wait always ends. Should the chunker still need a slab with none free, the
// oldest one no worker is sending from is taken back and its chunks
// forgotten; a worker then reads those chunks from the file, as it does for
// chunk lists that came from the chunk cache.
//
// On a long path (longPath) the chunker does not wait for the receiver's
// decisions: a slab whose chunks no Need has asked for yet is taken back
// at once. There a decision takes a round trip, in which the chunker would
// cut tens of MB, while reading a 4 MiB slab again takes well under a
// millisecond. It still waits while every slab holds chunks asked for or
// being sent: then the link, not the round trip, is what it waits for.
//
// The bytes held are exactly those that were hashed into each chunk's ID, so
// a chunk sent from here always matches its ID, even if the file has changed
// since.
type readAhead struct {
	slabSize int
	maxSlabs int

	mu      sync.Mutex // guards everything below
	chunks  map[chunkPos]heldChunk
	live    []*slab // in the order the chunker took them, oldest first
	free    []*slab
	current *slab         // the chunker's
	room    chan struct{} // closed and replaced when a slab comes back or may be taken back
	// long: the chunker takes back slabs whose chunks are undecided rather
	// than wait for the receiver (longPath).
	long    bool
	hits    int64
	evicted int64
}

type chunkPos struct{ file, chunk uint32 }

type heldChunk struct {
	s     *slab
	data  []byte
	asked bool // a Need of this connection named it
}

// A slab is one buffer of the chunker's. held counts its remembered chunks,
// asked those of them a Need asked for, busy the workers sending from it.
type slab struct {
	buf               []byte
	held, asked, busy int
	keys              []chunkPos // remembered chunks, to forget them on eviction
}

// newReadAhead returns a readAhead of at most budget bytes, in slabs of 4
// MiB or what a chunker cutting with p needs, or nil if budget cannot hold
// four slabs: too little to be worth it.
func newReadAhead(budget int64, p chunk.Params) *readAhead {
	size := max(4<<20, chunk.MinAllocSize(p))
	n := int(budget / int64(size))
	if n < 4 {
		return nil
	}
	return &readAhead{slabSize: size, maxSlabs: n, chunks: map[chunkPos]heldChunk{}, room: make(chan struct{})}
}

// alloc returns a buffer for the chunker (Chunker.SetAlloc): a free slab, a
// new one while under budget, or the oldest one no worker is using, whose
// chunks are forgotten. The chunker's previous slab stays live while it
// holds chunks.
func (r *readAhead) alloc() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := r.current; old != nil {
		r.current = nil
		r.retire(old)
	}
	var s *slab
	switch {
	case len(r.free) > 0:
		s = r.free[len(r.free)-1]
		r.free = r.free[:len(r.free)-1]
	case len(r.live) < r.maxSlabs:
		s = &slab{buf: make([]byte, r.slabSize)}
	default:
		i := r.undecided()
		if i < 0 {
			for j, old := range r.live {
				if old.busy == 0 {
					i = j
					break
				}
			}
		}
		if i < 0 { // every slab is being sent from: go over budget once
			s = &slab{buf: make([]byte, r.slabSize)}
			break
		}
		s = r.live[i]
		r.live = append(r.live[:i], r.live[i+1:]...)
		for _, k := range s.keys {
			delete(r.chunks, k)
		}
		r.evicted += int64(s.held)
		s.keys, s.held, s.asked = s.keys[:0], 0, 0
	}
	r.live = append(r.live, s)
	r.current = s
	return s.buf
}

// undecided returns the index in live of the oldest slab that a long path
// takes back rather than wait for (see readAhead), -1 if none: not the
// chunker's, no worker sending from it, no chunk of it asked for.
func (r *readAhead) undecided() int {
	if !r.long {
		return -1
	}
	for i, s := range r.live {
		if s != r.current && s.busy == 0 && s.asked == 0 {
			return i
		}
	}
	return -1
}

// wake ends the chunker's wait, to look again.
func (r *readAhead) wake() {
	close(r.room)
	r.room = make(chan struct{})
}

// longPath says that the path is long: from now on the chunker takes back
// slabs whose chunks are undecided rather than wait for the receiver.
func (r *readAhead) longPath() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.long = true
	r.wake()
}

// retire frees s if nothing needs it any more.
func (r *readAhead) retire(s *slab) {
	if s == r.current || s.held > 0 || s.busy > 0 {
		if r.long && s != r.current && s.busy == 0 && s.asked == 0 {
			r.wake() // it may be taken back now
		}
		return
	}
	for i, l := range r.live {
		if l == s {
			r.live = append(r.live[:i], r.live[i+1:]...)
			break
		}
	}
	s.keys, s.asked = s.keys[:0], 0
	if len(s.buf) == r.slabSize && len(r.free)+len(r.live) < r.maxSlabs {
		r.free = append(r.free, s)
	}
	r.wake()
}

// wait blocks while the chunker's next slab would have to be taken back
// from chunks not sent yet (on a long path: from chunks asked for or being
// sent), or until ctx is done.
func (r *readAhead) wait(ctx context.Context) {
	for {
		r.mu.Lock()
		full, room := r.full(), r.room
		r.mu.Unlock()
		if !full {
			return
		}
		select {
		case <-room:
		case <-ctx.Done():
			return
		}
	}
}

// full reports whether the chunker must wait for a slab; r.mu is held.
func (r *readAhead) full() bool {
	return len(r.free) == 0 && len(r.live) >= r.maxSlabs && r.undecided() < 0
}

// need records a Need of file f: chunks are asked for, and, below decided in
// f and in every file before it (the receiver decides in manifest order),
// the chunks not asked for will not be: they are forgotten.
func (r *readAhead) need(f uint32, chunks []uint32, decided uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range chunks {
		if h, ok := r.chunks[chunkPos{f, c}]; ok && !h.asked {
			h.asked = true
			h.s.asked++
			r.chunks[chunkPos{f, c}] = h
		}
	}
	var empty []*slab
	for _, s := range r.live {
		kept := s.keys[:0]
		for i, k := range s.keys {
			if k.file > f || k.file == f && k.chunk >= decided {
				kept = append(kept, s.keys[i:]...) // chunking order: the rest are later
				break
			}
			h, ok := r.chunks[k]
			switch {
			case !ok: // taken
			case h.asked:
				kept = append(kept, k)
			default:
				delete(r.chunks, k)
				s.held--
			}
		}
		s.keys = kept
		if s.held == 0 {
			empty = append(empty, s)
		}
		if len(s.keys) > 0 && (s.keys[len(s.keys)-1].file > f || s.keys[len(s.keys)-1].file == f && s.keys[len(s.keys)-1].chunk >= decided) {
			break
		}
	}
	for _, s := range empty {
		r.retire(s)
	}
}

// newConnection forgets which chunks were asked for: a receiver decides
// again on each connection.
func (r *readAhead) newConnection() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, h := range r.chunks {
		h.asked = false
		r.chunks[k] = h
	}
	for _, s := range r.live {
		s.asked = 0
	}
	if r.long {
		r.wake()
	}
}

// hold remembers chunk c of file f, a slice of the chunker's current slab.
func (r *readAhead) hold(f, c uint32, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.current
	if s == nil || len(data) == 0 {
		return
	}
	k := chunkPos{f, c}
	if _, dup := r.chunks[k]; dup {
		return
	}
	r.chunks[k] = heldChunk{s: s, data: data}
	s.keys = append(s.keys, k)
	s.held++
}

// take returns the bytes of chunk c of file f if they are held, and a
// function the caller must call once it no longer reads them. A chunk is
// taken once: a resend after a reconnect reads the file.
func (r *readAhead) take(f, c uint32) ([]byte, func(), bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h, ok := r.chunks[chunkPos{f, c}]
	if !ok {
		return nil, nil, false
	}
	delete(r.chunks, chunkPos{f, c})
	s := h.s
	s.held--
	if h.asked {
		s.asked--
	}
	s.busy++
	r.hits++
	return h.data, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		s.busy--
		r.retire(s)
	}, true
}

// stats returns the chunks sent from memory and those forgotten for room.
func (r *readAhead) stats() (hits, evicted int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hits, r.evicted
}
