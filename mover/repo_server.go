package mover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/crypt"
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
	if _, err := chunkstore.ListRepo(s.repoContext(), s.o.Repo); err != nil {
		return fmt.Errorf("repository %s: %w", s.o.Repo, err)
	}
	// Opened once now, so that a repository this build cannot serve fails
	// the start; then held only while peers use it (repoHold).
	linger := s.o.RepoLinger
	switch {
	case linger == 0:
		linger = repoLinger
	case linger < 0:
		linger = 0
	}
	s.repos = &repoHold{dir: s.o.Repo, ctx: s.repoContext(), log: s.log, linger: linger, wait: repoLockWait}
	if _, err := s.repos.acquire(); err != nil {
		return err
	}
	s.repos.release()
	s.metrics.reg.MustRegister(NewRepoCollector(s.o.Repo, RepoCollectorOptions{CacheFor: repoMetricsCacheFor, Log: s.log, PasswordFile: s.o.RepoPasswordFile}))
	return nil
}

// repoContext is the context the served repository is opened and read
// under: it carries the repository's passphrase file.
func (s *Server) repoContext() context.Context {
	if s.o.RepoPasswordFile == "" {
		return context.Background()
	}
	return chunkstore.WithPasswordFile(context.Background(), s.o.RepoPasswordFile)
}

func (s *Server) closeRepo() {
	if s.repos != nil {
		s.repos.close()
	}
}

// connRepo returns a connection's handle on the served repository.
func (s *Server) connRepo() *connRepo { return &connRepo{hold: s.repos} }

// repoRequest answers a repository request on the control stream:
// ListPoints, GetPoint or GetWAL. A refusal is an Error; the connection
// stays usable.
func (s *Server) repoRequest(peer PeerID, cs *controlStream, cr *connRepo, m protocol.Message, log *slog.Logger) error {
	reply, err := s.repoReply(peer, cs.version, cr, m)
	if err != nil {
		log.Warn("repository request refused", "request", m.Type().String(), "err", err)
		return cs.write(protocol.ToWire(sealWireError(err)))
	}
	return cs.write(reply)
}

func (s *Server) repoReply(peer PeerID, version uint16, cr *connRepo, m protocol.Message) (protocol.Message, error) {
	if err := s.trust.Check(peer, PermRead); err != nil {
		return nil, err
	}
	repo, err := cr.get()
	if err != nil {
		return nil, err
	}
	switch m := m.(type) {
	case *protocol.ListPoints:
		rps, err := repo.List()
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
		rp, err := repo.Resolve(m.ID)
		if errors.Is(err, chunkstore.ErrNoRestorePoint) {
			return nil, fmt.Errorf("%w: %w", protocol.ErrNotFound, err)
		}
		if err != nil {
			return nil, err
		}
		return pointToWire(rp)
	case *protocol.GetWAL:
		return walRecord(repo, version, m)
	}
	return nil, fmt.Errorf("%w: unexpected %s", protocol.ErrProtocol, m.Type())
}

// serveFetch answers the GetChunks requests of a fetch stream, in order,
// until the client closes its side: for each ID, a ChunkData or an Error
// about that chunk. version is the connection's protocol version (see
// chunkForFetch). A refusal (no read permission, no repository) answers the
// request with one Error and ends the stream; the permission is checked on
// every request.
func (s *Server) serveFetch(ctx context.Context, peer PeerID, version uint16, cr *connRepo, st *quic.Stream, log *slog.Logger) {
	defer closeStream(st)
	stop := context.AfterFunc(ctx, func() {
		st.CancelRead(quic.StreamErrorCode(protocol.CloseShutdown))
		st.CancelWrite(quic.StreamErrorCode(protocol.CloseShutdown))
	})
	defer stop()
	rd := protocol.NewReader(st, protocol.MaxControlFrameSize)
	rd.SetFrameTimeout(s.o.FrameTimeout)
	bufs := fetchBufPool.Get().(*fetchBufs)
	defer fetchBufPool.Put(bufs)
	for {
		m, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("reading fetch request", "err", err)
				_ = protocol.WriteMessage(st, protocol.ToWire(fmt.Errorf("%w: reading fetch request: %w", protocol.ErrProtocol, err)))
			}
			return
		}
		req, ok := m.(*protocol.GetChunks)
		if !ok {
			_ = protocol.WriteMessage(st, protocol.ToWire(fmt.Errorf("%w: expected GetChunks on a fetch stream, got %s", protocol.ErrProtocol, m.Type())))
			return
		}
		// Every request, not only the first: a permission taken away
		// (or the peer untrusted) ends the stream at its next request.
		if err := s.trust.Check(peer, PermRead); err != nil {
			log.Warn("chunk fetch refused", "err", err)
			_ = protocol.WriteMessage(st, protocol.ToWire(err))
			return
		}
		repo, err := cr.get()
		if err != nil {
			_ = protocol.WriteMessage(st, protocol.ToWire(err))
			return
		}
		if err := s.answerFetch(ctx, st, version, repo.Store(), req.IDs, bufs, log); err != nil {
			return
		}
	}
}

// answerFetch writes the answer to one GetChunks; an error means the stream
// is unusable.
func (s *Server) answerFetch(ctx context.Context, st *quic.Stream, version uint16, store chunkstore.Store, ids []chunk.ID, bufs *fetchBufs, log *slog.Logger) error {
	for _, id := range ids {
		m, err := chunkForFetch(ctx, store, version, id, bufs)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			log.Error("serving chunk failed", "chunk", id.String(), "err", err)
			if err := protocol.WriteMessage(st, protocol.ToWire(fmt.Errorf("chunk %s: %w", id, err))); err != nil {
				return err
			}
			continue
		}
		if tamper := tamperFetch.Load(); tamper != nil {
			m.Payload = (*tamper)(id, m.Payload)
		}
		bufs.frame = protocol.AppendFrame(bufs.frame[:0], &m)
		if _, err := st.Write(bufs.frame); err != nil {
			return err
		}
	}
	return nil
}

// chunkForFetch returns chunk id as it goes to a peer speaking version. A
// store that hands out chunks as stored (chunkstore.RawReader) gives them
// as they are, neither decoded nor verified, when version knows their codec:
// the client verifies every chunk (PROTOCOL 7.2), and decoding, hashing and
// encoding again here cost more CPU than the rest of a fetch. Otherwise the
// chunk is decoded (and, through Get, verified) and encoded at the fastest
// level. The payload aliases bufs until the next call.
func chunkForFetch(ctx context.Context, store chunkstore.Store, version uint16, id chunk.ID, bufs *fetchBufs) (protocol.ChunkData, error) {
	var plain []byte
	if raw, ok := store.(chunkstore.RawReader); ok {
		stored, info, err := raw.GetStored(ctx, id, bufs.stored[:0])
		if err != nil {
			return protocol.ChunkData{}, err
		}
		bufs.stored = stored[:0]
		if protocol.KnowsCodec(version, info.Codec) {
			return protocol.ChunkData{ID: id, Codec: info.Codec, PlainLen: uint32(info.PlainLen), Payload: stored}, nil
		}
		if plain, err = chunk.Decompress(bufs.plain[:0], stored, info.Codec, info.PlainLen); err != nil {
			return protocol.ChunkData{}, &chunk.CorruptChunkError{ID: id, Err: err}
		}
	} else {
		var err error
		if plain, err = store.Get(ctx, id, bufs.plain[:0]); err != nil {
			return protocol.ChunkData{}, err
		}
	}
	bufs.plain = plain[:0]
	packed, codec := chunk.Compress(bufs.packed[:0], plain, chunk.LevelFastest)
	bufs.packed = packed[:0]
	return protocol.ChunkData{ID: id, Codec: codec, PlainLen: uint32(len(plain)), Payload: packed}, nil
}

// fetchBufs are the buffers of one fetch stream, pooled: zeroing fresh
// buffers for each stream cost more CPU than reading short batches.
type fetchBufs struct{ stored, plain, packed, frame []byte }

var fetchBufPool = sync.Pool{New: func() any { return new(fetchBufs) }}

// tamperFetch, set only by tests, alters a chunk's encoded payload as it
// leaves the server, as a faulty link or a lying server would.
var tamperFetch atomic.Pointer[func(id chunk.ID, payload []byte) []byte]

// sealWireError gives an encrypted repository's object or key file that
// does not open its wire code: corrupt, as a chunk that fails its hash is
// (the peer's exit 7), not internal.
func sealWireError(err error) error {
	if errors.Is(err, crypt.ErrTampered) || errors.Is(err, crypt.ErrKeyFileCorrupt) || errors.Is(err, crypt.ErrNoKey) {
		return fmt.Errorf("%w: %w", protocol.ErrCorrupt, err)
	}
	return err
}
