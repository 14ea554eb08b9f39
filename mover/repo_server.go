package mover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
)

// errNoRepo answers repository requests to a mover started without --repo.
var errNoRepo = fmt.Errorf("%w: this mover serves no repository (start it with --repo DIR)", protocol.ErrNotFound)

// openRepo opens the repository the server serves, if any.
func (s *Server) openRepo() error {
	if s.o.Repo == "" {
		return nil
	}
	// Opening would create a missing repository; serving one must not.
	if _, err := chunkstore.ListRepo(s.o.Repo); err != nil {
		return fmt.Errorf("repository %s: %w", s.o.Repo, err)
	}
	r, err := chunkstore.OpenRepo(s.o.Repo, s.log)
	if err != nil {
		return fmt.Errorf("repository %s: %w", s.o.Repo, err)
	}
	s.repo = r
	return nil
}

func (s *Server) closeRepo() {
	if s.repo != nil {
		s.repo.Close()
	}
}

// repoRequest answers a repository request on the control stream: ListPoints
// or GetPoint. A refusal is an Error; the connection stays usable.
func (s *Server) repoRequest(peer PeerID, cs *controlStream, m protocol.Message, log *slog.Logger) error {
	reply, err := s.repoReply(peer, m)
	if err != nil {
		log.Warn("repository request refused", "request", m.Type().String(), "err", err)
		return cs.write(protocol.ToWire(err))
	}
	return cs.write(reply)
}

func (s *Server) repoReply(peer PeerID, m protocol.Message) (protocol.Message, error) {
	if err := s.trust.Check(peer, PermRead); err != nil {
		return nil, err
	}
	if s.repo == nil {
		return nil, errNoRepo
	}
	switch m := m.(type) {
	case *protocol.ListPoints:
		rps, err := s.repo.List()
		if err != nil {
			return nil, err
		}
		if len(rps) > protocol.MaxPoints {
			rps = rps[len(rps)-protocol.MaxPoints:] // the newest
		}
		reply := &protocol.PointList{}
		for _, rp := range rps {
			reply.IDs = append(reply.IDs, rp.ID)
		}
		return reply, nil
	case *protocol.GetPoint:
		rp, err := s.repo.Resolve(m.ID)
		if errors.Is(err, chunkstore.ErrNoRestorePoint) {
			return nil, fmt.Errorf("%w: %w", protocol.ErrNotFound, err)
		}
		if err != nil {
			return nil, err
		}
		return protocol.PointFromRepo(rp)
	}
	return nil, fmt.Errorf("%w: unexpected %s", protocol.ErrProtocol, m.Type())
}

// serveFetch answers the one GetChunks of a fetch stream: for each ID in
// order, a ChunkData or an Error about that chunk. Chunks are read (and so
// verified) from the store and recompressed at the fastest level: the store
// hands out plain content only.
func (s *Server) serveFetch(ctx context.Context, peer PeerID, st *quic.Stream, log *slog.Logger) {
	defer closeStream(st)
	stop := context.AfterFunc(ctx, func() {
		st.CancelRead(quic.StreamErrorCode(protocol.CloseShutdown))
		st.CancelWrite(quic.StreamErrorCode(protocol.CloseShutdown))
	})
	defer stop()
	m, err := protocol.NewReader(st, protocol.MaxControlFrameSize).Next()
	if err != nil {
		log.Warn("reading fetch request", "err", err)
		_ = protocol.WriteMessage(st, protocol.ToWire(fmt.Errorf("%w: reading fetch request: %w", protocol.ErrProtocol, err)))
		return
	}
	req, ok := m.(*protocol.GetChunks)
	if !ok {
		_ = protocol.WriteMessage(st, protocol.ToWire(fmt.Errorf("%w: expected GetChunks on a fetch stream, got %s", protocol.ErrProtocol, m.Type())))
		return
	}
	if err := s.trust.Check(peer, PermRead); err != nil {
		log.Warn("chunk fetch refused", "err", err)
		_ = protocol.WriteMessage(st, protocol.ToWire(err))
		return
	}
	if s.repo == nil {
		_ = protocol.WriteMessage(st, protocol.ToWire(errNoRepo))
		return
	}
	store := s.repo.Store()
	plainBuf := make([]byte, 0, 256<<10)
	packedBuf := make([]byte, 0, 256<<10)
	frame := make([]byte, 0, 256<<10)
	for _, id := range req.IDs {
		plain, err := store.Get(ctx, id, plainBuf[:0])
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Error("serving chunk failed", "chunk", id.String(), "err", err)
			if err := protocol.WriteMessage(st, protocol.ToWire(fmt.Errorf("chunk %s: %w", id, err))); err != nil {
				return
			}
			continue
		}
		plainBuf = plain[:0]
		packed, codec := chunkstore.Compress(packedBuf[:0], plain, chunkstore.LevelFastest)
		packedBuf = packed[:0]
		if tamper := tamperFetch.Load(); tamper != nil {
			packed = (*tamper)(id, packed)
		}
		frame = protocol.AppendFrame(frame[:0], &protocol.ChunkData{ID: id, Codec: codec, PlainLen: uint32(len(plain)), Payload: packed})
		if _, err := st.Write(frame); err != nil {
			return
		}
	}
}

// tamperFetch, set only by tests, alters a chunk's encoded payload as it
// leaves the server, as a faulty link or a lying server would.
var tamperFetch atomic.Pointer[func(id chunkstore.ID, payload []byte) []byte]
