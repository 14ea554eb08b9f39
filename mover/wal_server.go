package mover

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
)

// The WAL archive of a repository mover (protocol 9): a peer trusted with
// read reads a record with GetWAL (then its chunks on a fetch stream, as
// any chunk), for wal-fetch --repo-peer; a peer trusted with archive pushes
// a WAL file on an archive stream, for wal-push --repo-peer. Nothing a
// pusher sends is trusted: its offer is checked whole (name, sizes, the
// chunk-list hash recomputed) before anything is stored or allocated from
// it, every chunk against its ID, and the record appears only once its
// chunks are durable (chunkstore.CommitWAL).

// walPushMaxMerge caps the index entries the flush of one push may merge,
// as wal-push's own: archive_command waits for it.
const walPushMaxMerge = 1 << 20

// walRecord answers GetWAL: the record of an archived WAL file.
func walRecord(repo *chunkstore.Repo, version uint16, m *protocol.GetWAL) (protocol.Message, error) {
	if version < protocol.WALVersion {
		return nil, fmt.Errorf("%w: GetWAL needs protocol %d, this connection speaks %d", protocol.ErrProtocol, protocol.WALVersion, version)
	}
	w, err := repo.WALRecord(m.Name)
	if err != nil {
		return nil, walWireError(err)
	}
	// A record this repository holds but the wire cannot carry (or that
	// does not hold together) is damage, not the client's fault.
	if err := w.Check(); err != nil {
		return nil, fmt.Errorf("%w: archived WAL file %s: %w", protocol.ErrCorrupt, m.Name, err)
	}
	rec, err := walToWire(w)
	if err != nil {
		return nil, fmt.Errorf("%w: archived WAL file %s: %w", protocol.ErrCorrupt, m.Name, err)
	}
	return rec, nil
}

// walWireError gives a WAL archive error its wire code.
func walWireError(err error) error {
	switch {
	case errors.Is(err, chunkstore.ErrBadWALName):
		return fmt.Errorf("%w: %w", protocol.ErrBadPath, err)
	case errors.Is(err, chunkstore.ErrBadWALRecord):
		return fmt.Errorf("%w: %w", protocol.ErrProtocol, err)
	case errors.Is(err, chunkstore.ErrWALConflict):
		return fmt.Errorf("%w: %w", protocol.ErrConflict, err)
	case errors.Is(err, chunkstore.ErrWALNotFound):
		return fmt.Errorf("%w: %w", protocol.ErrNotFound, err)
	}
	return err
}

// walToWire is the wire form of a WAL record.
func walToWire(w *chunkstore.WALFile) (*protocol.WALRecord, error) {
	hash, err := hex.DecodeString(w.Hash)
	if err != nil || len(hash) != 32 {
		return nil, fmt.Errorf("hash %q is not 32 bytes of hex", w.Hash)
	}
	rec := &protocol.WALRecord{Name: w.Name, Size: uint64(w.Size), Hash: [32]byte(hash), Chunks: make([]protocol.ChunkRef, len(w.Chunks))}
	for i, c := range w.Chunks {
		rec.Chunks[i] = protocol.ChunkRef{ID: c.ID, Len: c.Len}
	}
	return rec, nil
}

// walFromWire is the record a WALRecord (or PushWAL) describes, not yet
// checked: the caller runs WALFile.Check.
func walFromWire(m *protocol.WALRecord) *chunkstore.WALFile {
	w := &chunkstore.WALFile{Name: m.Name, Size: int64(m.Size), Hash: hex.EncodeToString(m.Hash[:]), Chunks: make([]chunkstore.ChunkRef, len(m.Chunks))}
	for i, c := range m.Chunks {
		w.Chunks[i] = chunkstore.ChunkRef{ID: c.ID, Len: c.Len}
	}
	return w
}

// serveArchive answers the one push of an archive stream: WALPushed once
// the WAL file is durable in the repository, or an Error (the stream then
// ends; the connection stays usable).
func (s *Server) serveArchive(ctx context.Context, peer PeerID, version uint16, cr *connRepo, st *quic.Stream, log *slog.Logger) {
	defer closeStream(st)
	stop := context.AfterFunc(ctx, func() {
		st.CancelRead(quic.StreamErrorCode(protocol.CloseShutdown))
		st.CancelWrite(quic.StreamErrorCode(protocol.CloseShutdown))
	})
	defer stop()
	name, already, sent, err := s.archive(ctx, peer, version, cr, st)
	if err != nil {
		if ctx.Err() == nil {
			s.metrics.refused.Inc()
			log.Warn("WAL push refused", "file", name, "err", err)
			_ = protocol.WriteMessage(st, protocol.ToWire(err))
		}
		return
	}
	log.Info("WAL file archived", "file", name, "already", already, "chunks_received", sent)
	_ = protocol.WriteMessage(st, &protocol.WALPushed{Already: already})
}

// archive reads a push from st and stores it; it returns the file's name
// (once known), whether the repository held it already, and how many
// chunks the peer sent.
func (s *Server) archive(ctx context.Context, peer PeerID, version uint16, cr *connRepo, st *quic.Stream) (name string, already bool, sent int, err error) {
	if version < protocol.WALVersion {
		return "", false, 0, fmt.Errorf("%w: an archive stream needs protocol %d, this connection speaks %d", protocol.ErrProtocol, protocol.WALVersion, version)
	}
	rd := protocol.NewReader(st, protocol.MaxControlFrameSize)
	rd.SetFrameTimeout(s.o.FrameTimeout)
	m, err := rd.Next()
	if errors.Is(err, io.EOF) {
		err = fmt.Errorf("%w: the stream ended before PushWAL", protocol.ErrProtocol)
	}
	if err != nil {
		return "", false, 0, fmt.Errorf("reading the push: %w", err)
	}
	offer, ok := m.(*protocol.PushWAL)
	if !ok {
		return "", false, 0, fmt.Errorf("%w: expected PushWAL on an archive stream, got %s", protocol.ErrProtocol, m.Type())
	}
	name = offer.Name
	if err := s.trust.Check(peer, PermArchive); err != nil {
		return name, false, 0, err
	}
	repo, err := cr.get()
	if err != nil {
		return name, false, 0, err
	}
	w := walFromWire(&offer.WALRecord)
	if err := w.Check(); err != nil {
		return name, false, 0, walWireError(err)
	}
	if already, err := repo.ArchivedWAL(w); err != nil || already {
		return name, already, 0, walWireError(err)
	}

	// Ask for the chunks the repository lacks, each ID once. Those it holds
	// stay: a prune, which could remove them, waits for this mover's
	// shared lock.
	store := repo.Store()
	ids := make([]chunk.ID, len(w.Chunks))
	for i, c := range w.Chunks {
		ids[i] = c.ID
	}
	held, err := store.HasMany(ctx, ids)
	if err != nil {
		return name, false, 0, err
	}
	var need []uint32
	asked := map[chunk.ID]bool{}
	maxLen := 0
	for i, ok := range held {
		if ok || asked[ids[i]] {
			continue
		}
		asked[ids[i]] = true
		need = append(need, uint32(i))
		maxLen = max(maxLen, int(w.Chunks[i].Len))
	}
	if err := protocol.WriteMessage(st, &protocol.WALNeed{Chunks: need}); err != nil {
		return name, false, 0, err
	}

	if len(need) > 0 {
		// A frame buffer and a decode buffer of the largest chunk asked
		// for: charged to the peer's stream budget while the chunks come.
		cost := streamCost(maxLen)
		if err := s.streams.acquire(ctx, peer, cost, nil); err != nil {
			return name, false, 0, err
		}
		defer s.streams.release(peer, cost)
		rd = protocol.NewReader(st, maxLen+protocol.DataFrameOverhead)
		rd.SetFrameTimeout(s.o.FrameTimeout)
		var plain []byte
		for _, i := range need {
			want := w.Chunks[i]
			m, err := rd.Next()
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: the stream ended after %d of %d chunks", protocol.ErrProtocol, sent, len(need))
			}
			if err != nil {
				return name, false, sent, fmt.Errorf("reading chunk %d of the push: %w", i, err)
			}
			cd, ok := m.(*protocol.ChunkData)
			switch {
			case !ok:
				return name, false, sent, fmt.Errorf("%w: expected ChunkData on an archive stream, got %s", protocol.ErrProtocol, m.Type())
			case cd.ID != want.ID:
				return name, false, sent, fmt.Errorf("%w: expected chunk %s (index %d), got %s", protocol.ErrProtocol, want.ID.Short(), i, cd.ID.Short())
			case cd.PlainLen != want.Len:
				return name, false, sent, fmt.Errorf("%w: chunk %s has %d bytes, the offer said %d", protocol.ErrProtocol, want.ID.Short(), cd.PlainLen, want.Len)
			case !protocol.KnowsCodec(version, cd.Codec):
				return name, false, sent, fmt.Errorf("%w: chunk %s in codec %s, which protocol %d does not have", protocol.ErrProtocol, want.ID.Short(), cd.Codec, version)
			}
			if plain, err = chunk.Decompress(plain[:0], cd.Payload, cd.Codec, int(cd.PlainLen)); err != nil {
				return name, false, sent, &chunk.CorruptChunkError{ID: want.ID, Err: err}
			}
			// Put hashes the chunk against its ID before it stores it.
			if err := store.Put(ctx, want.ID, plain); err != nil {
				if errors.Is(err, chunkstore.ErrIDMismatch) {
					err = &chunk.CorruptChunkError{ID: want.ID, Err: chunk.ErrHashMismatch}
				}
				return name, false, sent, err
			}
			sent++
		}
	}
	already, err = repo.CommitWAL(ctx, w)
	return name, already, sent, walWireError(err)
}
