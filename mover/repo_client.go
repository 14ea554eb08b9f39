package mover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"
)

// RemoteRepoOptions configure a RemoteRepo. The zero value is ready to use.
type RemoteRepoOptions struct {
	// Streams is how many fetch requests may be in flight at once, each on
	// its own QUIC stream (default 16, at most 63: the server's stream
	// limit, 64, less the control stream).
	Streams int
	// Conns is how many QUIC connections carry the fetch streams (default
	// 2, at most 4): each has its own quic-go run loop per side (packing,
	// acknowledging, encryption) and its own congestion and flow-control
	// windows; 2 fetched 20–28 % faster than 1 across 20 ms and without
	// FUSE (docs/BENCHMARKS.md). Fetch stream k uses connection k mod
	// Conns; List, Resolve and Tree's control requests use the first.
	// Each connection's receive window is its own (at most 128 MiB), so
	// Conns also multiplies what the repository mover may make this side
	// buffer. A connection the server refuses (its limit of connections
	// per peer) leaves its fetches to the first.
	Conns int
	// Batch is the most chunk IDs one fetch request asks for (default 16).
	// Gets that queue while every stream is busy go out together.
	Batch int
	// RetryFor bounds how long a request keeps reconnecting through network
	// failures before it fails (default 2m; negative: no retry). A read on a
	// mount blocks that long rather than failing with EIO at once.
	RetryFor time.Duration
	// IdleTimeout is how long a silent connection lives (default 30s).
	IdleTimeout time.Duration
	Log         *slog.Logger
}

func (o RemoteRepoOptions) withDefaults() RemoteRepoOptions {
	if o.Streams <= 0 {
		o.Streams = 16
	}
	// Fetch streams stay open, so one past the server's credit would wait
	// for credit forever, and the Gets in its batch with it.
	o.Streams = min(o.Streams, int(QUICConfig().MaxIncomingStreams)-1)
	if o.Conns <= 0 {
		o.Conns = defaultRepoConns
	}
	o.Conns = min(o.Conns, maxRepoConns, o.Streams)
	if o.Batch <= 0 {
		o.Batch = 16
	}
	o.Batch = min(o.Batch, protocol.MaxGetChunks)
	if o.RetryFor == 0 {
		o.RetryFor = 2 * time.Minute
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

const (
	defaultRepoConns = 2
	// maxRepoConns bounds Conns: more connections than cores buy nothing,
	// and each holds a socket and a server slot (ServerOptions.MaxConnsPerPeer).
	maxRepoConns = 4
)

// ErrRepoClosed is returned by the methods of a closed RemoteRepo.
var ErrRepoClosed = errors.New("mover: remote repository is closed")

// RemoteRepo reads a repository served by another mover ('pgporter mover
// serve --repo'), which must trust this mover's identity with read. Its Get
// satisfies staging.ChunkReader: it is safe for concurrent use, and every
// chunk is verified against its BLAKE3 ID before it is returned.
//
// Concurrent Gets share Conns QUIC connections: up to Streams fetch requests
// are in flight, each for up to Batch chunks. Each lost connection is
// redialled on its own; a request retries for up to RetryFor.
type RemoteRepo struct {
	id   *Identity
	addr string
	peer PeerID
	o    RemoteRepoOptions
	log  *slog.Logger

	conns []*repoConn // Conns of them; the first carries the control requests

	ctlMu sync.Mutex // serialises request/reply pairs on the control stream

	reqs      chan *fetchReq
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	workers   sync.WaitGroup
}

// repoConn is one of a RemoteRepo's connections, redialled on its own after
// a failure.
type repoConn struct {
	mu   sync.Mutex // guards conn, cs; held while dialling
	conn *quic.Conn // nil until dialled or after a failure
	cs   *controlStream

	rtt atomic.Int64 // the connection's smoothed RTT in ns, as of its last fetch

	// refused is set once the server refused this connection (its limit of
	// connections per peer); its fetches then use the first connection.
	refused atomic.Bool
}

// errConnRefused is connection's answer for a connection the server
// refused: its fetches go over the first.
var errConnRefused = errors.New("mover: repository mover refused an extra connection")

// refusedConn reports whether err is the server's refusal of a connection.
func refusedConn(err error) bool {
	ae, ok := errors.AsType[*quic.ApplicationError](err)
	return ok && ae.Remote && uint64(ae.ErrorCode) == protocol.CloseRefused
}

type fetchReq struct {
	id  chunk.ID
	dst []byte        // the Get's buffer: the worker decodes into it once it has claimed it
	res chan fetchRes // buffered: the worker never blocks on an abandoned Get

	// state hands dst over: reqWaiting, then reqClaimed by the worker
	// that writes into dst, or reqAbandoned by a Get that returned
	// without waiting, whose dst the worker must not touch.
	state atomic.Int32
}

const (
	reqWaiting = iota
	reqClaimed
	reqAbandoned
)

func (q *fetchReq) claim() bool   { return q.state.CompareAndSwap(reqWaiting, reqClaimed) }
func (q *fetchReq) abandon() bool { return q.state.CompareAndSwap(reqWaiting, reqAbandoned) }

type fetchRes struct {
	data []byte
	err  error
}

// DialRepo connects to the repository mover at addr, which must present
// peer's identity, as the mover whose identity is under home. It dials once
// to report trust problems at once; later failures reconnect.
func DialRepo(ctx context.Context, home, addr string, peer PeerID, o RemoteRepoOptions) (*RemoteRepo, error) {
	id, err := LoadIdentity(home)
	if err != nil {
		return nil, err
	}
	o = o.withDefaults()
	r := &RemoteRepo{id: id, addr: addr, peer: peer, o: o, log: o.Log, reqs: make(chan *fetchReq), done: make(chan struct{})}
	for range o.Conns {
		r.conns = append(r.conns, &repoConn{})
	}
	// The first connection reports trust problems at once; the others
	// are dialled by their first fetch.
	if _, _, err := r.connection(ctx, r.conns[0]); err != nil {
		return nil, err
	}
	r.workers.Add(o.Streams)
	for k := range o.Streams {
		go r.worker(r.conns[k%len(r.conns)])
	}
	return r, nil
}

// Close stops the fetch workers and closes the connection. Gets in flight
// fail with ErrRepoClosed. It may be called twice.
func (r *RemoteRepo) Close() error {
	r.closeOnce.Do(func() {
		close(r.done)
		for _, rc := range r.conns {
			rc.mu.Lock()
			if rc.conn != nil {
				rc.conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseOK), "")
				rc.conn, rc.cs = nil, nil
			}
			rc.mu.Unlock()
		}
		r.workers.Wait()
	})
	return nil
}

// connection returns rc's live connection, dialling if there is none.
func (r *RemoteRepo) connection(ctx context.Context, rc *repoConn) (*quic.Conn, *controlStream, error) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	select {
	case <-r.done:
		return nil, nil, ErrRepoClosed
	default:
	}
	if rc.conn != nil && rc.conn.Context().Err() == nil {
		return rc.conn, rc.cs, nil
	}
	if rc.refused.Load() {
		return nil, nil, errConnRefused
	}
	conn, cs, err := dialMover(ctx, r.addr, r.id, r.peer, r.o.IdleTimeout)
	if err != nil && rc != r.conns[0] && refusedConn(err) {
		// The first connection was admitted, so this is the server's limit
		// of connections per peer, not a lack of trust.
		r.log.Warn("repository mover refused an extra connection; fetching over fewer", "peer", r.peer.Short(), "err", err)
		rc.refused.Store(true)
		return nil, nil, errConnRefused
	}
	if err != nil {
		// dialMover's hint asks for send; reading a repository needs read.
		if ue, ok := errors.AsType[*UntrustedError](err); ok {
			ue.Need = PermRead
		}
		return nil, nil, err
	}
	rc.conn, rc.cs = conn, cs
	rc.rtt.Store(int64(conn.ConnectionStats().SmoothedRTT))
	return conn, cs, nil
}

// RTT returns the smoothed round-trip time to the repository mover: the
// least of its connections', each as of its last fetch; 0 before the first.
// With it a mount reads ahead by round trip × rate (staging.LatencyReader).
// The least, because the connections share one path: a larger one is a
// connection whose run loop waited for a CPU, not a longer path.
func (r *RemoteRepo) RTT() time.Duration {
	var least int64
	for _, rc := range r.conns {
		if v := rc.rtt.Load(); v > 0 && (least == 0 || v < least) {
			least = v
		}
	}
	return time.Duration(least)
}

// drop closes conn, one of rc's, after a failure on it, unless it was
// replaced already.
func (r *RemoteRepo) drop(rc *repoConn, conn *quic.Conn) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), "")
	if rc.conn == conn {
		rc.conn, rc.cs = nil, nil
	}
}

// retry runs fn until it succeeds, fails for good, or has failed for
// RetryFor, reconnecting in between with a growing pause.
func (r *RemoteRepo) retry(ctx context.Context, what string, fn func() error) error {
	pause := newBackoff(100 * time.Millisecond)
	// DialRepo got an answer: a mover silent since is one restarting.
	plan := retryPlan{retryFor: r.o.RetryFor, start: time.Now(), contacted: true}
	for {
		err := fn()
		if err == nil || !retryable(err) || r.o.RetryFor < 0 || errors.Is(err, ErrRepoClosed) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		now := time.Now()
		deadline, first := plan.fail(now, err)
		if pause.past(now, deadline) {
			return fmt.Errorf("%s: giving up after %s of failed reconnects to %s: %w", what, r.o.RetryFor, r.addr, err)
		}
		if first {
			r.log.Warn("repository request interrupted; retrying", "peer", r.peer.Short(), "addr", r.addr, "request", what, "until", deadline.Format(time.TimeOnly), "err", err)
		} else {
			r.log.Debug("repository request interrupted; retrying", "addr", r.addr, "request", what, "err", err, "retry_in", pause.next)
		}
		if err := pause.wait(ctx, r.done, ErrRepoClosed); err != nil {
			return err
		}
	}
}

// request sends m on the control stream and returns the reply.
func (r *RemoteRepo) request(ctx context.Context, m protocol.Message) (protocol.Message, error) {
	var reply protocol.Message
	err := r.retry(ctx, m.Type().String(), func() error {
		rc := r.conns[0]
		conn, cs, err := r.connection(ctx, rc)
		if err != nil {
			return err
		}
		r.ctlMu.Lock()
		defer r.ctlMu.Unlock()
		// Stream reads take no context: dropping the connection ends them.
		stop := context.AfterFunc(ctx, func() { r.drop(rc, conn) })
		defer stop()
		if err := cs.write(m); err != nil {
			r.drop(rc, conn)
			return err
		}
		reply, err = cs.next()
		if _, remote := errors.AsType[*protocol.RemoteError](err); err != nil && !remote {
			r.drop(rc, conn)
		}
		return err
	})
	return reply, err
}

// List returns the repository's restore points, oldest first.
func (r *RemoteRepo) List(ctx context.Context) ([]chunkstore.RestorePoint, error) {
	m, err := r.request(ctx, &protocol.ListPoints{})
	if err != nil {
		return nil, fmt.Errorf("listing restore points of %s: %w", r.addr, err)
	}
	pl, ok := m.(*protocol.PointList)
	if !ok {
		return nil, fmt.Errorf("%w: expected PointList, got %s", protocol.ErrProtocol, m.Type())
	}
	rps := make([]chunkstore.RestorePoint, 0, len(pl.IDs))
	for _, id := range pl.IDs {
		rp, err := r.Resolve(ctx, id)
		if err != nil {
			return nil, err
		}
		rps = append(rps, *rp)
	}
	return rps, nil
}

// Resolve returns the restore point named id, or the newest for "latest".
// An unknown one gives an error matching chunkstore.ErrNoRestorePoint.
func (r *RemoteRepo) Resolve(ctx context.Context, id string) (*chunkstore.RestorePoint, error) {
	if err := protocol.ValidPointID(id); err != nil {
		return nil, fmt.Errorf("%w: %w", chunkstore.ErrNoRestorePoint, err)
	}
	m, err := r.request(ctx, &protocol.GetPoint{ID: id})
	if errors.Is(err, protocol.ErrNotFound) {
		return nil, fmt.Errorf("%w: %q at %s: %w", chunkstore.ErrNoRestorePoint, id, r.addr, err)
	}
	if err != nil {
		return nil, fmt.Errorf("resolving restore point %s at %s: %w", id, r.addr, err)
	}
	p, ok := m.(*protocol.Point)
	if !ok {
		return nil, fmt.Errorf("%w: expected Point, got %s", protocol.ErrProtocol, m.Type())
	}
	if id != "latest" && p.ID != id {
		return nil, fmt.Errorf("%w: asked for restore point %s, got %s", protocol.ErrProtocol, id, p.ID)
	}
	return pointFromWire(p), nil
}

// Tree reads and decodes rp's tree, fetching its chunks in parallel.
func (r *RemoteRepo) Tree(ctx context.Context, rp *chunkstore.RestorePoint) ([]chunkstore.Node, error) {
	parts := make([][]byte, len(rp.Tree))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.o.Streams * r.o.Batch)
	for i, id := range rp.Tree {
		g.Go(func() error {
			var err error
			parts[i], err = r.Get(gctx, id, nil)
			if err != nil {
				return fmt.Errorf("reading tree chunk %s: %w", id.Short(), err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("restore point %s: %w", rp.ID, err)
	}
	var enc []byte
	for _, p := range parts {
		if len(enc)+len(p) > chunkstore.MaxTreeBytes {
			return nil, fmt.Errorf("restore point %s: %w: above %d bytes", rp.ID, chunkstore.ErrBadTree, chunkstore.MaxTreeBytes)
		}
		enc = append(enc, p...)
	}
	nodes, err := chunkstore.DecodeTree(enc)
	if err != nil {
		return nil, fmt.Errorf("restore point %s: %w", rp.ID, err)
	}
	return nodes, nil
}

// Get appends the plain content of chunk id to dst, after checking that it
// hashes to id; a fetch worker decodes it straight into dst's spare room.
// A chunk the server cannot read (missing, corrupt in its store) or that
// arrives corrupt fails at once: *chunk.CorruptChunkError for
// corruption, an error matching chunk.ErrNotFound for a missing chunk.
// Network failures are retried for up to RetryFor. Once Get returns, nothing
// else writes into dst's array.
func (r *RemoteRepo) Get(ctx context.Context, id chunk.ID, dst []byte) ([]byte, error) {
	q := &fetchReq{id: id, dst: dst, res: make(chan fetchRes, 1)}
	select {
	case r.reqs <- q:
	case <-ctx.Done():
		return dst, ctx.Err()
	case <-r.done:
		return dst, ErrRepoClosed
	}
	var res fetchRes
	select {
	case res = <-q.res:
	case <-ctx.Done():
		if q.abandon() {
			return dst, ctx.Err()
		}
		// A worker is decoding into dst: it answers without blocking.
		res = <-q.res
	}
	if res.err != nil {
		return dst, res.err
	}
	return res.data, nil
}

// worker serves Gets: it takes one, adds whatever else is queued up to a
// batch, and fetches them on one stream of rc.
func (r *RemoteRepo) worker(rc *repoConn) {
	defer r.workers.Done()
	// A batch is not cancelled with the Gets that wait for it (they stop
	// waiting); Close ends it by closing the connection.
	ctx := context.Background()
	var fst fetchStream
	defer fst.close()
	for {
		var batch []*fetchReq
		select {
		case q := <-r.reqs:
			batch = append(batch, q)
		case <-r.done:
			return
		}
	fill:
		for len(batch) < r.o.Batch {
			select {
			case q := <-r.reqs:
				batch = append(batch, q)
			default:
				break fill
			}
		}
		r.fetch(ctx, rc, &fst, batch)
	}
}

// fetchStream is a worker's fetch stream, reused for its requests one after
// the other: opening a stream per request cost more than the request.
type fetchStream struct {
	conn *quic.Conn // the connection st belongs to
	st   *quic.Stream
	rd   *protocol.Reader
}

// reset abandons the stream after a failure.
func (f *fetchStream) reset() {
	if f.st != nil {
		f.st.CancelRead(quic.StreamErrorCode(protocol.CloseShutdown))
		f.st.CancelWrite(quic.StreamErrorCode(protocol.CloseShutdown))
	}
	*f = fetchStream{}
}

// close ends the stream in order: the server sees the end of the requests.
func (f *fetchStream) close() {
	if f.st != nil {
		f.st.Close()
		f.st.CancelRead(0)
	}
	*f = fetchStream{}
}

// fetch answers every request of batch on rc, retrying the chunks not yet
// received through connection failures.
func (r *RemoteRepo) fetch(ctx context.Context, rc *repoConn, fst *fetchStream, batch []*fetchReq) {
	waiting := map[chunk.ID][]*fetchReq{}
	var ids []chunk.ID
	for _, q := range batch {
		if waiting[q.id] == nil {
			ids = append(ids, q.id)
		}
		waiting[q.id] = append(waiting[q.id], q)
	}
	answer := func(id chunk.ID, res fetchRes) {
		for _, q := range waiting[id] {
			q.res <- res
		}
		delete(waiting, id)
	}
	// deliver decodes and verifies chunk m into the buffer of the first Get
	// still waiting for it, and copies it into the buffers of the others
	// (the same ID asked twice), before any of them has its answer and so
	// its buffer back.
	deliver := func(m *protocol.ChunkData) {
		var claimed []*fetchReq
		for _, q := range waiting[m.ID] {
			if q.claim() {
				claimed = append(claimed, q)
			} // else its Get gave up: its dst is no longer ours
		}
		delete(waiting, m.ID)
		if len(claimed) == 0 {
			return
		}
		first := claimed[0]
		out, err := r.decode(first.dst, m)
		for _, q := range claimed[1:] {
			if err != nil {
				q.res <- fetchRes{err: err}
			} else {
				q.res <- fetchRes{data: append(q.dst, out[len(first.dst):]...)}
			}
		}
		first.res <- fetchRes{data: out, err: err}
	}
	err := r.retry(ctx, "GetChunks", func() error {
		var rest []chunk.ID
		for _, id := range ids {
			if waiting[id] != nil {
				rest = append(rest, id)
			}
		}
		err := r.fetchOnce(ctx, rc, fst, rest, deliver, answer)
		if err != nil {
			fst.reset()
		}
		return err
	})
	if err != nil {
		for id := range waiting {
			answer(id, fetchRes{err: fmt.Errorf("fetching chunk %s from %s: %w", id.Short(), r.addr, err)})
		}
	}
}

// decode appends chunk m's plain content to dst, after checking that it
// hashes to m.ID; on failure, a *chunk.CorruptChunkError, logged.
func (r *RemoteRepo) decode(dst []byte, m *protocol.ChunkData) ([]byte, error) {
	n := len(dst)
	out, err := chunk.Decompress(dst, m.Payload, m.Codec, int(m.PlainLen))
	if err != nil {
		err = &chunk.CorruptChunkError{ID: m.ID, Err: fmt.Errorf("from %s: %w", r.addr, err)}
	} else if err = chunk.VerifyContent(m.ID, out[n:]); err != nil {
		err = &chunk.CorruptChunkError{ID: m.ID, Err: fmt.Errorf("from %s: %w", r.addr, chunk.ErrHashMismatch)}
	}
	if err != nil {
		r.log.Error("chunk from repository mover is corrupt", "chunk", m.ID.String(), "peer", r.peer.Short(), "err", err)
		return dst, err
	}
	return out, nil
}

// fetchOnce asks for ids on fst, opening it on rc's live connection if
// needed, and hands each chunk to deliver (which must be done with its
// payload when it returns) and each Error to answer. It returns an error
// when the stream failed before every answer arrived (the caller then
// resets fst); the chunks already answered are not asked for again.
func (r *RemoteRepo) fetchOnce(ctx context.Context, rc *repoConn, fst *fetchStream, ids []chunk.ID, deliver func(*protocol.ChunkData), answer func(chunk.ID, fetchRes)) error {
	if len(ids) == 0 {
		return nil
	}
	conn, cs, err := r.connection(ctx, rc)
	if errors.Is(err, errConnRefused) {
		rc = r.conns[0]
		conn, cs, err = r.connection(ctx, rc)
	}
	if err != nil {
		return err
	}
	version := cs.version
	var frame []byte
	if fst.st == nil || fst.conn != conn {
		fst.reset()
		st, err := conn.OpenStreamSync(ctx)
		if err != nil {
			r.drop(rc, conn)
			return fmt.Errorf("opening fetch stream: %w", err)
		}
		*fst = fetchStream{conn: conn, st: st, rd: protocol.NewReader(st, protocol.MaxFrameSize)}
		frame = []byte{byte(protocol.StreamFetch)}
	}
	st, rd := fst.st, fst.rd
	stop := context.AfterFunc(ctx, func() { st.CancelRead(quic.StreamErrorCode(protocol.CloseShutdown)) })
	defer stop()
	frame = protocol.AppendFrame(frame, &protocol.GetChunks{IDs: ids})
	if _, err := st.Write(frame); err != nil {
		return fmt.Errorf("writing fetch request: %w", err)
	}
	defer func() { rc.rtt.Store(int64(conn.ConnectionStats().SmoothedRTT)) }()
	var first error // the first answer, if an Error: maybe a refusal of the whole request
	for i, id := range ids {
		m, err := rd.Next()
		if err != nil {
			if errors.Is(err, io.EOF) && first != nil {
				return permanentError{fmt.Errorf("fetching chunks from %s: %w", r.addr, first)}
			}
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("fetch stream ended after %d of %d chunks: %w", i, len(ids), io.ErrUnexpectedEOF)
			}
			if errors.Is(err, protocol.ErrProtocol) || errors.Is(err, protocol.ErrTooLarge) {
				err = permanentError{err}
			}
			return err
		}
		switch m := m.(type) {
		case *protocol.ChunkData:
			if m.ID != id {
				return permanentError{fmt.Errorf("%w: asked for chunk %s, got %s", protocol.ErrProtocol, id.Short(), m.ID.Short())}
			}
			if !protocol.KnowsCodec(version, m.Codec) {
				return permanentError{fmt.Errorf("%w: chunk %s in codec %s, which protocol %d does not have", protocol.ErrProtocol, id.Short(), m.Codec, version)}
			}
			deliver(m)
		case *protocol.Error:
			re := m.Err()
			if i == 0 {
				first = re
			}
			switch {
			case errors.Is(re, protocol.ErrCorrupt):
				err = &chunk.CorruptChunkError{ID: id, Err: fmt.Errorf("in the repository at %s: %w", r.addr, re)}
			case errors.Is(re, protocol.ErrNotFound):
				err = fmt.Errorf("%w: %s at %s: %w", chunk.ErrNotFound, id.Short(), r.addr, re)
			case i == 0 && (errors.Is(re, protocol.ErrPermission) || errors.Is(re, protocol.ErrProtocol)):
				// A refusal of the whole request comes first and ends the
				// stream.
				return permanentError{fmt.Errorf("fetching chunks from %s: %w", r.addr, re)}
			default:
				err = fmt.Errorf("chunk %s at %s: %w", id.Short(), r.addr, re)
			}
			answer(id, fetchRes{err: err})
		default:
			return permanentError{fmt.Errorf("%w: unexpected %s on a fetch stream", protocol.ErrProtocol, m.Type())}
		}
	}
	return nil
}

// ParsePeerAddr parses "ADDR#PEER_ID", the form of a mover's address on the
// command line: a UDP host:port, then the peer ID it must present.
func ParsePeerAddr(s string) (addr string, peer PeerID, err error) {
	addr, id, ok := strings.Cut(s, "#")
	if !ok || addr == "" || id == "" {
		return "", PeerID{}, fmt.Errorf("mover address %q: want ADDR#PEER_ID, e.g. repo1:7448#ID with the ID 'pgporter mover id' prints there", s)
	}
	if err := ValidateAddr(addr); err != nil {
		return "", PeerID{}, err
	}
	if peer, err = ParsePeerID(id); err != nil {
		return "", PeerID{}, fmt.Errorf("mover address %q: %w", s, err)
	}
	return addr, peer, nil
}
