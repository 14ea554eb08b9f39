package mover

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/internal/pebbledb"
	"github.com/pgporter/pgporter/mover/fec"
	"github.com/pgporter/pgporter/protocol"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/quic-go/quic-go"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// ServerOptions configure a mover daemon. Zero values are defaults.
type ServerOptions struct {
	Home   string   // identity, trust list, state
	Listen string   // UDP address, default ":7448"
	Roots  []string // directories transfers may write into
	Repo   string   // backup repository served to peers trusted with read; "" serves none
	// RepoPasswordFile holds the passphrase of Repo if it is encrypted;
	// "": chunkstore's default ($PGPORTER_REPO_PASSWORD). Peers get
	// chunks opened: they never need the key.
	RepoPasswordFile string
	// Serving, if set, is called once Serve accepts connections and
	// /healthz says so: where a caller announces that the mover is up.
	Serving func()
	// RepoLinger is how long Repo stays open (its shared lock held) after
	// the last connection that used it ended; default 10s, negative: not
	// at all. A prune of the repository can run once it is closed.
	RepoLinger   time.Duration
	Jobs         JobRunner     // runs jobs for peers trusted with orchestrate; nil runs none
	Reserve      int64         // bytes of free space a transfer must leave; default 64 MiB
	SyncBytes    int64         // make chunks durable after this many bytes; default 64 MiB
	SyncInterval time.Duration // ... or after this long; default 1s
	// FrameTimeout bounds how long a frame may take to arrive once it has
	// started, and how long a new connection may take to send its Hello:
	// a peer trickling bytes (slow-loris) is dropped after it. Default 2m,
	// above the connection idle timeout so that a link outage the
	// connection survives does not end a frame.
	FrameTimeout time.Duration
	// MaxConnsPerPeer bounds the connections one peer may hold open at once
	// (each carries at most QUICConfig's MaxIncomingStreams streams);
	// connections above it are refused. Default 128.
	MaxConnsPerPeer int
	// HandshakeRate is how many connection attempts a second (Initial
	// packets: one or two per new connection) the server takes, in bursts
	// of twice that, before it makes each further client prove its address
	// with a QUIC Retry first, one more round trip: a flood of handshakes
	// from spoofed addresses then costs the server almost nothing.
	// Default 64.
	HandshakeRate float64
	// TrustRecheck is how often the server checks the trust list (which it
	// rereads when the file changed, e.g. by 'pgporter mover untrust' in
	// another process) for peers that hold connections and are no longer
	// trusted, and closes those connections. Default 1s.
	TrustRecheck time.Duration
	// PeerMemory bounds the memory the transfers of one peer may make the
	// mover hold (chunk positions waiting for data, data stream buffers,
	// open transfers); TotalMemory bounds it over all peers. They bound
	// memory, not the size of a dump: past them the receiver asks for
	// chunks as earlier ones arrive, and data streams wait.
	// Defaults 512 MiB and 2 GiB.
	PeerMemory  int64
	TotalMemory int64
	Log         *slog.Logger
	// VerifyCommit makes the receiver read every file again at commit and
	// check it, cut with the transfer's chunking parameters, against its
	// chunk-list hash. Without it the commit checks the durable positions
	// (every byte of which was verified on arrival, or re-read when a
	// resumed transfer reached it): this re-read only catches a file
	// changed under DEST.partial while the transfer ran, at the cost of
	// reading the tree once more.
	VerifyCommit bool
	// OnDurable, if set, is called after each durability barrier with the
	// transfer's durable byte count (tests use it to interrupt at a point).
	OnDurable func(transferID string, durableBytes int64)
	// partialHook, if set, is called as DEST.partial is made (makePartial):
	// "made" before its identity is journaled, "journaled" before it is
	// renamed into place, "renamed" before the transfer's records are
	// journaled. An error it returns ends the open there: tests use it to
	// leave the state a crash at that point leaves.
	partialHook func(at string) error
}

func (o ServerOptions) withDefaults() ServerOptions {
	if o.Listen == "" {
		o.Listen = ":7448"
	}
	if o.Reserve == 0 {
		o.Reserve = 64 << 20
	}
	if o.SyncBytes <= 0 {
		o.SyncBytes = 64 << 20
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = time.Second
	}
	if o.FrameTimeout <= 0 {
		o.FrameTimeout = 2 * time.Minute
	}
	if o.MaxConnsPerPeer <= 0 {
		o.MaxConnsPerPeer = 128
	}
	if o.HandshakeRate <= 0 {
		o.HandshakeRate = 64
	}
	if o.TrustRecheck <= 0 {
		o.TrustRecheck = time.Second
	}
	if o.PeerMemory <= 0 {
		o.PeerMemory = 512 << 20
	}
	if o.TotalMemory <= 0 {
		o.TotalMemory = 2 << 30
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

type serveRoot struct {
	dir  string // absolute, symlinks resolved
	root *os.Root
}

// Server is a mover daemon: it accepts QUIC connections from trusted peers
// and serves transfers into its roots.
type Server struct {
	o       ServerOptions
	log     *slog.Logger
	id      *Identity
	trust   *TrustStore
	db      *pebbledb.DB
	roots   []serveRoot
	repos   *repoHold // nil without ServerOptions.Repo
	tr      *quic.Transport
	ln      *quic.Listener
	metrics *metrics

	// Peers that frame their datagrams for loss repair (package fec):
	// the listening transport hands their frames to fecConn, and fecTr,
	// on it, serves their connections on the same UDP port.
	fecConn *fec.Bridge
	fecTr   *quic.Transport
	fecLn   *quic.Listener

	// Memory budgets, per peer and in all: half for chunk positions (and
	// files), 3/8 for data stream buffers, 1/8 for open transfers.
	positions, streams, transfers *memBudget
	windows                       *windows // connection receive windows, charged to streams

	mu        sync.Mutex // guards active, peerConns
	active    map[string]*activeTransfer
	peerConns map[PeerID]map[*quic.Conn]Perm // open connections by peer, with their roles (noteRole)

	conns sync.WaitGroup // connection handlers

	serving atomic.Bool // Serve accepts connections: /healthz says ok
}

type activeTransfer struct {
	peer   PeerID
	cost   int64 // of the transfers budget, held until release
	dest   string
	conn   *quic.Conn
	cancel context.CancelCauseFunc
	done   chan struct{}

	// Joined connections (protocol 5). token, rcv and closing are guarded
	// by Server.mu; ready is closed once rcv is set. The connection that
	// opened the transfer waits for joined before it releases the
	// transfer, so a successor never writes while a joined connection can.
	token   [protocol.JoinTokenLen]byte
	rcv     *receiver
	closing bool
	ready   chan struct{}
	joined  sync.WaitGroup
}

// errPreempted ends a transfer whose sender reconnected.
var errPreempted = errors.New("mover: the sender reconnected; this connection is superseded")

// NewServer loads the identity and trust list under o.Home, opens the state,
// checks the roots and starts listening.
func NewServer(o ServerOptions) (*Server, error) {
	o = o.withDefaults()
	s := &Server{o: o, log: o.Log, active: map[string]*activeTransfer{}, peerConns: map[PeerID]map[*quic.Conn]Perm{}, metrics: newMetrics()}
	s.metrics.reg.MustRegister(newPeerCollector(s))
	s.positions = newMemBudget("chunk positions", o.PeerMemory/2, o.TotalMemory/2)
	s.streams = newMemBudget("data streams", o.PeerMemory*3/8, o.TotalMemory*3/8)
	s.transfers = newMemBudget("transfers", o.PeerMemory/8, o.TotalMemory/8)
	s.windows = newWindows(s.streams)
	var err error
	if s.id, err = LoadIdentity(o.Home); err != nil {
		return nil, err
	}
	if s.trust, err = OpenTrust(o.Home); err != nil {
		return nil, err
	}
	for _, r := range o.Roots {
		abs, err := filepath.Abs(r)
		if err == nil {
			abs, err = filepath.EvalSymlinks(abs)
		}
		if err != nil {
			s.closeRoots()
			return nil, fmt.Errorf("root %s: %w", r, err)
		}
		rt, err := os.OpenRoot(abs)
		if err != nil {
			s.closeRoots()
			return nil, fmt.Errorf("root %s: %w", r, err)
		}
		s.roots = append(s.roots, serveRoot{dir: abs, root: rt})
	}
	if err := s.openRepo(); err != nil {
		s.closeRoots()
		return nil, err
	}
	if s.db, err = openDB(filepath.Join(o.Home, "mover"), moverStateFormat, s.log); err != nil {
		s.closeRepo()
		s.closeRoots()
		return nil, err
	}
	if err := s.listen(o.Listen); err != nil {
		s.db.Close()
		s.closeRepo()
		s.closeRoots()
		return nil, fmt.Errorf("listening on %s: %w", o.Listen, err)
	}
	return s, nil
}

// listen opens the UDP socket and the QUIC listener on it. The transport
// answers packets of connections it does not know (its predecessor's, if
// this mover was restarted) with stateless resets, so that peers give up
// those connections at once and redial.
func (s *Server) listen(addr string) error {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		return err
	}
	bufs, err := sizeUDPBuffers(udp)
	if err != nil {
		udp.Close()
		return err
	}
	bufs.Warn(s.log, "mover serve")
	s.metrics.udpRcvBuf.Set(float64(bufs.Recv))
	s.metrics.udpSndBuf.Set(float64(bufs.Send))
	handshakes := rate.NewLimiter(rate.Limit(s.o.HandshakeRate), max(1, int(2*s.o.HandshakeRate)))
	verify := func(net.Addr) bool {
		if handshakes.Allow() {
			return false
		}
		s.metrics.retries.Inc()
		return true
	}
	s.fecConn = fec.NewBridge(func(b []byte, a net.Addr) (int, error) { return s.tr.WriteTo(b, a) }, udp.LocalAddr())
	pc, diverted := serverPacketConn(udp, s.fecConn.Handle)
	s.tr = &quic.Transport{
		Conn:                pc,
		StatelessResetKey:   s.id.StatelessResetKey(),
		VerifySourceAddress: verify,
	}
	qc := QUICConfig()
	qc.AllowConnectionWindowIncrease = s.windows.allow
	tc := ServerTLSConfig(s.id, s.trust, s.log)
	if s.ln, err = s.tr.Listen(tc, qc); err != nil {
		udp.Close()
		return err
	}
	if !diverted {
		go readFrames(s.tr, s.fecConn)
	}
	s.fecTr = &quic.Transport{Conn: s.fecConn, StatelessResetKey: s.id.StatelessResetKey(), VerifySourceAddress: verify}
	s.metrics.registerRepair(s.fecConn.Stats)
	if s.fecLn, err = s.fecTr.Listen(tc, fecQUICConfig(qc)); err != nil {
		s.ln.Close()
		s.fecConn.Close()
		s.tr.Close()
		udp.Close()
		return err
	}
	return nil
}

func (s *Server) closeRoots() {
	for _, r := range s.roots {
		r.root.Close()
	}
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// ID is the server's peer ID.
func (s *Server) ID() PeerID { return s.id.ID }

// MetricsHandler serves the Prometheus metrics.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})
}

// Serve accepts connections until ctx ends, then closes every connection,
// waits for their handlers (which make written data durable) and releases
// the server. It always returns a non-nil error: ctx's on shutdown.
func (s *Server) Serve(ctx context.Context) error {
	s.log.Info("mover serving", "listen", s.ln.Addr().String(), "peer_id", s.id.ID.String(), "roots", len(s.roots))
	defer s.close()
	s.serving.Store(true)
	defer context.AfterFunc(ctx, func() { s.serving.Store(false) })()
	defer s.serving.Store(false)
	if s.o.Serving != nil {
		s.o.Serving()
	}
	wctx, stopWatch := context.WithCancel(ctx)
	s.conns.Add(1)
	go func() {
		defer s.conns.Done()
		s.watchTrust(wctx)
	}()
	defer stopWatch()
	s.conns.Go(func() {
		if err := s.accept(ctx, s.fecLn); err != nil && ctx.Err() == nil {
			s.log.Warn("no longer accepting framed (FEC) connections", "err", err)
		}
	})
	return s.accept(ctx, s.ln)
}

// accept serves the connections ln accepts until ctx ends or ln fails.
func (s *Server) accept(ctx context.Context, ln *quic.Listener) error {
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("accepting: %w", err)
		}
		s.metrics.connections.Inc()
		s.conns.Add(1)
		go func() {
			defer s.conns.Done()
			s.handleConn(ctx, conn)
		}()
	}
}

func (s *Server) close() {
	s.ln.Close()
	s.fecLn.Close()
	s.conns.Wait()
	s.fecTr.Close()
	s.fecConn.Close()
	s.tr.Close()
	s.tr.Conn.Close()
	s.db.Close()
	s.closeRepo()
	s.closeRoots()
}

// handleConn serves one peer connection: a control stream first, then data
// streams for the transfer it opens.
func (s *Server) handleConn(ctx context.Context, conn *quic.Conn) {
	peer, err := PeerFromState(conn.ConnectionState().TLS)
	if err != nil {
		conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseRefused), "no peer certificate")
		return
	}
	log := s.log.With("peer", peer.Short(), "remote", conn.RemoteAddr().String())
	if !s.admit(peer, conn) {
		s.metrics.refused.Inc()
		log.Warn("refused a connection: too many from this peer", "limit", s.o.MaxConnsPerPeer)
		conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseRefused), fmt.Sprintf("too many connections from this peer (limit %d)", s.o.MaxConnsPerPeer))
		return
	}
	defer s.leave(peer, conn)
	s.windows.track(conn, peer, time.Now())
	defer s.windows.release(conn)
	stop := context.AfterFunc(ctx, func() { conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), "mover shutting down") })
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseOK), "")

	st, cs, ok := s.acceptControl(ctx, conn, peer, log)
	if !ok {
		return
	}
	// The repository is held from the connection's first request of it to
	// its end (repoHold).
	c := &serverConn{s: s, cancel: cancel, conn: conn, st: st, peer: peer, cs: cs, cr: s.connRepo(), log: log, ready: make(chan struct{})}
	defer c.cr.release()
	defer c.wg.Wait()
	defer cancel()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.acceptStreams(ctx)
	}()
	for {
		m, err := cs.next()
		if err != nil {
			refuseMalformed(ctx, conn, cs, err)
			return
		}
		if !c.handle(ctx, m) {
			return
		}
	}
}

// acceptControl accepts the connection's first stream, which must be its
// control stream, and exchanges Hello on it. On failure it has closed the
// connection (unless ctx ended) and returns false.
func (s *Server) acceptControl(ctx context.Context, conn *quic.Conn, peer PeerID, log *slog.Logger) (*quic.Stream, *controlStream, bool) {
	// A peer that connects must say Hello in time: a connection kept
	// alive without one would hold a slot for nothing.
	hctx, hcancel := context.WithTimeout(ctx, s.o.FrameTimeout)
	st, err := conn.AcceptStream(hctx)
	hcancel()
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("no control stream in time; closing", "timeout", s.o.FrameTimeout)
			conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseProtocolError), "no control stream in time")
		}
		return nil, nil, false
	}
	_ = st.SetReadDeadline(time.Now().Add(s.o.FrameTimeout))
	var kind [1]byte
	if _, err := io.ReadFull(st, kind[:]); err != nil || protocol.StreamKind(kind[0]) != protocol.StreamControl {
		log.Warn("first stream is not a control stream; closing", "err", err)
		conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseProtocolError), "expected control stream")
		return nil, nil, false
	}
	cs := newControlStream(st)
	if err := cs.serverHello(); err != nil {
		log.Warn("hello failed", "err", err, "peer_software", cs.peerSoftware)
		conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseProtocolError), "hello failed")
		return nil, nil, false
	}
	log.Debug("connected", "peer_software", cs.peerSoftware, "protocol", cs.version)
	if err := notePeerSeen(s.o.Home, peer, cs.peerSoftware); err != nil {
		log.Debug("recording the peer's software", "err", err)
	}
	_ = st.SetReadDeadline(time.Time{})
	cs.r.SetFrameTimeout(s.o.FrameTimeout)
	return st, cs, true
}

// serverConn is one peer connection past its Hello: the control stream
// read by handleConn, and the data, fetch and archive streams accepted
// beside it.
type serverConn struct {
	s      *Server
	cancel context.CancelFunc // ends the connection's context, and so its streams
	conn   *quic.Conn
	st     *quic.Stream // the control stream
	peer   PeerID
	cs     *controlStream
	cr     *connRepo
	log    *slog.Logger

	// Data streams wait for the transfer this connection opens or joins:
	// ready is closed once rcv is set.
	rmu   sync.Mutex // guards rcv
	rcv   *receiver
	ready chan struct{}
	wg    sync.WaitGroup // stream handlers
}

// handle serves one control message and reports whether the connection
// reads another.
func (c *serverConn) handle(ctx context.Context, m protocol.Message) bool {
	switch m := m.(type) {
	case *protocol.OpenTransfer:
		c.s.noteRole(c.peer, c.conn, PermSend)
		return c.handleOpen(ctx, m)
	case *protocol.JoinTransfer:
		c.s.noteRole(c.peer, c.conn, PermSend)
		c.handleJoin(ctx, m)
		return false
	case *protocol.ListPoints, *protocol.GetPoint, *protocol.GetWAL:
		c.s.noteRole(c.peer, c.conn, PermRead)
		return c.s.repoRequest(c.peer, c.cs, c.cr, m, c.log) == nil
	case *protocol.RunJob:
		c.s.noteRole(c.peer, c.conn, PermOrchestrate)
		c.s.runJob(ctx, c.conn, c.peer, c.cs, m, c.log)
		linger(ctx, c.conn)
		return false
	case *protocol.SpaceQuery:
		return c.handleSpaceQuery(m)
	case *protocol.Abandon:
		c.s.noteRole(c.peer, c.conn, PermSend)
		return c.handleAbandon(ctx, m)
	default:
		c.refuse(ctx, fmt.Errorf("%w: unexpected %s", protocol.ErrProtocol, m.Type()))
		return false
	}
}

// setReceiver hands r to the data streams waiting for it.
func (c *serverConn) setReceiver(r *receiver) {
	c.rmu.Lock()
	c.rcv = r
	c.rmu.Unlock()
	close(c.ready)
}

// refuse tells the peer why its request was refused and lingers for it
// to read that.
func (c *serverConn) refuse(ctx context.Context, err error) {
	c.cs.sendError(err)
	linger(ctx, c.conn)
}

// handleOpen opens and runs the transfer m asks for. It reports whether
// the connection reads another message: only after "already complete".
func (c *serverConn) handleOpen(ctx context.Context, m *protocol.OpenTransfer) bool {
	s := c.s
	tctx, tcancel := context.WithCancelCause(ctx)
	a := &activeTransfer{peer: c.peer, dest: m.Dest, conn: c.conn, cancel: tcancel, done: make(chan struct{}), ready: make(chan struct{})}
	r, err := s.openTransfer(tctx, c.peer, c.cs, m, a, c.log)
	if err != nil || r == nil {
		tcancel(nil)
		s.release(m.TransferID, a)
	}
	if err != nil {
		s.metrics.refused.Inc()
		c.log.Warn("transfer refused", "transfer", m.TransferID, "dest", m.Dest, "err", err)
		c.refuse(ctx, err)
		return false
	}
	if r == nil { // already complete
		return true
	}
	r.ctx, r.cancel = tctx, tcancel
	c.setReceiver(r)
	s.mu.Lock()
	a.rcv = r
	s.mu.Unlock()
	close(a.ready)
	stopCtl := context.AfterFunc(tctx, func() { c.st.CancelRead(quic.StreamErrorCode(protocol.CloseShutdown)) })
	err = s.runTransfer(tctx, r)
	stopCtl()
	tcancel(nil)
	if err != nil {
		c.log.Warn("transfer failed", "transfer", r.tid, "err", err)
	}
	// The sender closes the connection once it has read Committed
	// or the Error (sent by r.fail); closing first would discard it.
	linger(ctx, c.conn)
	// A successor connection may take over only once this one's
	// data streams, and those of joined connections, can no longer
	// write into the tree.
	c.cancel()
	c.wg.Wait()
	s.mu.Lock()
	a.closing = true
	s.mu.Unlock()
	a.joined.Wait()
	s.release(r.tid, a)
	return false
}

// handleJoin serves data streams for the open transfer m joins, until
// the transfer or this connection ends.
func (c *serverConn) handleJoin(ctx context.Context, m *protocol.JoinTransfer) {
	r, a, err := c.s.join(ctx, c.peer, c.cs, m)
	if err != nil {
		c.s.metrics.refused.Inc()
		c.log.Warn("refused a connection joining a transfer", "transfer", m.TransferID, "err", err)
		c.refuse(ctx, err)
		return
	}
	c.log.Debug("connection joined a transfer", "transfer", m.TransferID)
	c.setReceiver(r)
	// Data streams until the transfer ends (committed, failed or
	// superseded) or this connection does; then none may write.
	select {
	case <-r.ctx.Done():
	case <-c.conn.Context().Done():
	}
	c.cancel()
	c.wg.Wait()
	a.joined.Done()
}

// handleSpaceQuery answers the free space at m.Path to a peer trusted
// with send or orchestrate. It reports whether the connection reads
// another message.
func (c *serverConn) handleSpaceQuery(m *protocol.SpaceQuery) bool {
	// Asked before sending, or by an orchestrator planning an export
	// (which may hold orchestrate only).
	role := PermSend
	if c.s.trust.Check(c.peer, PermSend) != nil {
		role = PermOrchestrate
	}
	c.s.noteRole(c.peer, c.conn, role)
	if err := c.s.trust.Check(c.peer, role); err != nil {
		c.cs.sendError(err)
		return true
	}
	free, total, err := c.s.space(m.Path)
	if err != nil {
		c.cs.sendError(err)
		return true
	}
	return c.cs.write(&protocol.SpaceReply{Free: free, Total: total}) == nil
}

// acceptStreams accepts the connection's other streams until it ends.
func (c *serverConn) acceptStreams(ctx context.Context) {
	for {
		ds, err := c.conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.serveStream(ctx, ds)
		}()
	}
}

// serveStream serves a stream by the kind its first byte names: a fetch,
// an archive or a transfer's data.
func (c *serverConn) serveStream(ctx context.Context, ds *quic.Stream) {
	var k [1]byte
	if _, err := ds.Read(k[:]); err == nil && protocol.StreamKind(k[0]) == protocol.StreamFetch {
		c.s.noteRole(c.peer, c.conn, PermRead)
		c.s.serveFetch(ctx, c.peer, c.cs.version, c.cr, ds, c.log)
		return
	}
	if protocol.StreamKind(k[0]) == protocol.StreamArchive {
		c.s.noteRole(c.peer, c.conn, PermArchive)
		c.s.serveArchive(ctx, c.peer, c.cs.version, c.cr, ds, c.log)
		return
	}
	if protocol.StreamKind(k[0]) != protocol.StreamData {
		closeStream(ds)
		return
	}
	select {
	case <-c.ready:
	case <-ctx.Done():
		return
	}
	c.rmu.Lock()
	r := c.rcv
	c.rmu.Unlock()
	c.serveData(r, ds)
}

// serveData reads a data stream of r's transfer, within the limit of
// streams per transfer and the peer's stream memory.
func (c *serverConn) serveData(r *receiver, ds *quic.Stream) {
	s := c.s
	if n := r.streams.Add(1); n > protocol.MaxDataStreams {
		r.streams.Add(-1)
		c.log.Warn("refused a data stream: too many for this transfer", "transfer", r.tid, "limit", protocol.MaxDataStreams)
		ds.CancelRead(quic.StreamErrorCode(protocol.CloseRefused))
		ds.CancelWrite(quic.StreamErrorCode(protocol.CloseRefused))
		return
	}
	defer r.streams.Add(-1)
	// A stream waits for its buffers' budget without reading:
	// flow control holds the sender meanwhile.
	cost := streamCost(r.meta.Params.Max)
	if err := s.streams.acquire(r.ctx, c.peer, cost, nil); err != nil {
		closeStream(ds)
		return
	}
	defer s.streams.release(c.peer, cost)
	// Stream reads ignore contexts: a failed or superseded
	// transfer cancels them.
	stop := context.AfterFunc(r.ctx, func() { ds.CancelRead(quic.StreamErrorCode(protocol.CloseShutdown)) })
	if err := r.readData(r.ctx, ds, c.cs.version); err != nil {
		r.fail(err)
	}
	stop()
	closeStream(ds)
}

// refuseMalformed tells the peer why its request could not be read (a
// malformed message, a job of a version this mover does not speak) and
// closes the connection: with CloseRefused for a version, with
// CloseProtocolError otherwise. Other read errors (the connection ended,
// a frame trickled past its timeout, the peer's own Error) close nothing
// here.
func refuseMalformed(ctx context.Context, conn *quic.Conn, cs *controlStream, err error) {
	if _, remote := errors.AsType[*protocol.RemoteError](err); remote || errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	code := protocol.CloseProtocolError
	switch {
	case errors.Is(err, protocol.ErrVersion):
		code = protocol.CloseRefused
	case !errors.Is(err, protocol.ErrProtocol):
		return
	}
	cs.sendError(err)
	linger(ctx, conn)
	conn.CloseWithError(quic.ApplicationErrorCode(code), "malformed request")
}

// linger gives the peer a moment to read a final Error before the
// connection closes: closing at once would discard it in flight. The peer
// closes on reading it.
func linger(ctx context.Context, conn *quic.Conn) {
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-conn.Context().Done():
	case <-ctx.Done():
	case <-t.C:
	}
}

// rootFor returns the root that holds abs and abs relative to it.
func (s *Server) rootFor(abs string) (*os.Root, string) {
	best, rel := -1, ""
	for i, r := range s.roots {
		x, err := filepath.Rel(r.dir, abs)
		if err != nil || x == "." || x == ".." || strings.HasPrefix(x, ".."+string(filepath.Separator)) {
			continue
		}
		if best < 0 || len(r.dir) > len(s.roots[best].dir) {
			best, rel = i, x
		}
	}
	if best < 0 {
		return nil, ""
	}
	return s.roots[best].root, rel
}

func (s *Server) rootDir(rt *os.Root) string {
	for _, r := range s.roots {
		if r.root == rt {
			return r.dir
		}
	}
	return ""
}

// space reports free and total bytes of the filesystem holding path, which
// must be inside a root.
func (s *Server) space(p string) (free, total uint64, err error) {
	p = filepath.Clean(p)
	rt, _ := s.rootFor(p)
	for _, r := range s.roots {
		if r.dir == p {
			rt = r.root
		}
	}
	if rt == nil {
		return 0, 0, fmt.Errorf("%w: %s is not inside any of this mover's roots", protocol.ErrBadPath, p)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(s.rootDir(rt), &st); err != nil {
		return 0, 0, fmt.Errorf("statfs: %w", err)
	}
	return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
}

// openTransfer checks a transfer request and prepares its receiver. It
// returns nil, nil when the transfer is already complete (after telling the
// sender so).
// On success (and on "already complete") a is registered as the active
// transfer of m.TransferID; the caller releases it.
func (s *Server) openTransfer(ctx context.Context, peer PeerID, cs *controlStream, m *protocol.OpenTransfer, a *activeTransfer, log *slog.Logger) (*receiver, error) {
	o := &openRequest{s: s, peer: peer, cs: cs, m: m, log: log}
	if err := o.validate(); err != nil {
		return nil, err
	}
	if !s.transfers.tryAcquire(peer, transferCost) {
		return nil, s.transfers.errBudget(peer, transferCost)
	}
	a.cost = transferCost
	if err := s.register(ctx, m, a); err != nil {
		return nil, err
	}
	if err := o.putBackReplaced(); err != nil {
		return nil, err
	}
	if complete, err := o.checkDone(); complete || err != nil {
		return nil, err
	}
	if complete, err := o.checkExistingDest(); complete || err != nil {
		return nil, err
	}
	r := o.newReceiver()
	rec, err := o.adoptPartial(r)
	if err != nil {
		return nil, err
	}
	if err := r.loadStored(); err != nil {
		return nil, err
	}
	free, err := o.checkSpace(r)
	if err != nil {
		return nil, err
	}
	if err := o.startPartial(r, rec); err != nil {
		return nil, err
	}
	if err := o.replyOpened(r, a, free); err != nil {
		r.proot.Close()
		return nil, err
	}
	return r, nil
}

// openRequest is an OpenTransfer being checked and prepared: the steps of
// openTransfer share it.
type openRequest struct {
	s    *Server
	peer PeerID
	cs   *controlStream
	m    *protocol.OpenTransfer
	log  *slog.Logger

	rt      *os.Root // the root that holds m.Dest
	rel     string   // m.Dest relative to rt
	replace bool     // FlagOverwrite

	// The transfer's commit record, if it journaled one for m.Dest: a
	// commit of it was interrupted, or its done record is missing.
	commit     commitRecord
	committing bool
}

// validate checks the request itself, before anything is charged or
// registered for it: the peer may send, the ID, counts and chunking
// parameters are sane, and m.Dest is a clean path inside a root.
func (o *openRequest) validate() error {
	m := o.m
	if err := o.s.trust.Check(o.peer, PermSend); err != nil {
		return err
	}
	if !validTransferID(m.TransferID) {
		return fmt.Errorf("%w: bad transfer ID %q", protocol.ErrProtocol, m.TransferID)
	}
	if m.Files > maxFiles {
		return fmt.Errorf("%w: %d files announced; a transfer may have at most %d", protocol.ErrTooLarge, m.Files, maxFiles)
	}
	if m.Params.Min == 0 || m.Params.Avg == 0 || m.Params.Max == 0 {
		return fmt.Errorf("%w: chunking parameters %s are incomplete", protocol.ErrProtocol, m.Params)
	}
	if m.Params.Min < protocol.MinChunkMin {
		return fmt.Errorf("%w: chunk minimum %d is below %d, the least this mover accepts", protocol.ErrProtocol, m.Params.Min, protocol.MinChunkMin)
	}
	if err := m.Params.Validate(); err != nil {
		return fmt.Errorf("%w: %v", protocol.ErrProtocol, err)
	}
	if m.Flags != 0 && o.cs.version < protocol.DirVersion {
		return fmt.Errorf("%w: OpenTransfer flags need protocol %d", protocol.ErrProtocol, protocol.DirVersion)
	}
	o.replace = m.Flags&protocol.FlagOverwrite != 0
	if !filepath.IsAbs(m.Dest) || filepath.Clean(m.Dest) != m.Dest || strings.HasSuffix(m.Dest, ".partial") {
		return fmt.Errorf("%w: destination %q must be a clean absolute path not ending in .partial", protocol.ErrBadPath, m.Dest)
	}
	if o.rt, o.rel = o.s.rootFor(m.Dest); o.rt == nil {
		return fmt.Errorf("%w: destination %s is not inside any of this mover's roots", protocol.ErrPermission, m.Dest)
	}
	return nil
}

// register makes a the active transfer of m.TransferID.
//
// One attempt per transfer and per destination: a reconnecting sender
// supersedes the attempt it lost (its connection and those that joined
// it), which may not have noticed yet. The check and the registration are
// one critical section, so two transfers can never both write
// DEST.partial.
func (s *Server) register(ctx context.Context, m *protocol.OpenTransfer, a *activeTransfer) error {
	return s.claim(ctx, m.TransferID, m.Dest, a, func(*activeTransfer) bool { return true }, "superseded by a new connection of the same transfer")
}

// claim makes a the active transfer tid, writing dest, as register says.
// An attempt of tid that is there already is superseded (its connection
// closed with why) if supersede, called under s.mu, says so, and makes
// the claim busy otherwise.
func (s *Server) claim(ctx context.Context, tid, dest string, a *activeTransfer, supersede func(old *activeTransfer) bool, why string) error {
	for {
		s.mu.Lock()
		for other, t := range s.active {
			if t.dest == dest && other != tid {
				s.mu.Unlock()
				return fmt.Errorf("%w: transfer %s is writing %s now", protocol.ErrBusy, other, dest)
			}
		}
		old := s.active[tid]
		if old == nil {
			s.active[tid] = a
			s.mu.Unlock()
			return nil
		}
		ok := supersede(old)
		s.mu.Unlock()
		if !ok {
			return fmt.Errorf("%w: transfer %s is open now", protocol.ErrBusy, tid)
		}
		old.cancel(errPreempted)
		old.conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), why)
		select {
		case <-old.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// putBackReplaced reads the transfer's commit record and undoes a
// replacement (FlagOverwrite) interrupted by a crash between moving the
// old DEST aside and renaming the new one into place: the old one goes
// back, and is replaced again if this transfer asks to.
func (o *openRequest) putBackReplaced() error {
	c, committing, err := o.s.commitRecord(o.m.TransferID)
	if err != nil {
		return err
	}
	o.commit, o.committing = c, committing && c.Dest == o.m.Dest
	if o.committing && c.Aside != "" {
		if back, err := PutBack(o.rt, o.rel, c.Aside); err != nil {
			return err
		} else if back {
			o.log.Info("put back a destination whose replacement was interrupted", "transfer", o.m.TransferID, "dest", o.m.Dest)
		}
	}
	return nil
}

// checkDone reports whether the transfer finished already, after telling
// the sender so. Only the very tree this transfer committed counts: a real
// directory whose manifest, read without following links, has the hash
// journaled before the rename. With FlagOverwrite, anything else there is
// replaced; else it is refused.
func (o *openRequest) checkDone() (complete bool, err error) {
	m := o.m
	v, ok, err := dbGet(o.s.db, keyDone(m.TransferID))
	if err != nil || !ok {
		return false, err
	}
	var d transferDone
	if json.Unmarshal(v, &d) == nil && d.Dest == m.Dest {
		if _, err := o.rt.Lstat(o.rel); err == nil {
			h, herr := committedManifestHash(o.rt, o.rel)
			changed := sourceChanged(m, d.Files, d.Bytes)
			switch {
			case herr != nil || h != d.ManifestHash:
				if !o.replace {
					return false, notCommitted(m.Dest, herr)
				}
			case changed != nil:
				if !o.replace {
					return false, changed
				}
			default:
				return true, o.s.replyComplete(o.cs, m, &d)
			}
		}
	}
	// The tree was removed, or is to be replaced: send it again from
	// scratch.
	_ = o.s.db.Delete(keyDone(m.TransferID), pebble.Sync)
	return false, nil
}

// sourceChanged refuses a DEST that holds what this transfer committed
// earlier (files, bytes) when the source now announces other counts. A
// growing tree (no counts announced) is judged by its transfer ID alone.
func sourceChanged(m *protocol.OpenTransfer, files, bytes uint64) error {
	if (m.Files == 0 && m.Bytes == 0) || (files == m.Files && bytes == m.Bytes) {
		return nil
	}
	was, now := bytesize.Format(int64(bytes)), bytesize.Format(int64(m.Bytes))
	if was == now { // say what differs
		was, now = fmt.Sprintf("%d bytes", bytes), fmt.Sprintf("%d bytes", m.Bytes)
	}
	return fmt.Errorf("%w: %s holds what this transfer committed earlier (%d files, %s), but the source now has %d files, %s; remove it, choose another destination or send with --overwrite",
		protocol.ErrConflict, m.Dest, files, was, m.Files, now)
}

// checkExistingDest decides about a DEST that exists and has no done
// record: this transfer's own commit, interrupted by a crash before its
// done record, is recorded and reported complete; anything else is
// refused, or with FlagOverwrite left to be replaced at commit if it is a
// directory.
func (o *openRequest) checkExistingDest() (complete bool, err error) {
	m := o.m
	fi, err := o.rt.Lstat(o.rel)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("%w: %s: %v", protocol.ErrBadPath, m.Dest, err)
	}
	why := o.notOurCommit()
	if why == nil {
		return true, o.recordInterruptedCommit()
	}
	switch {
	case !o.replace:
		return false, why
	case fi.Mode()&fs.ModeSymlink != 0 || !fi.IsDir():
		return false, fmt.Errorf("%w: %s is not a directory: --overwrite replaces only a directory", protocol.ErrConflict, m.Dest)
	}
	if o.committing {
		// An earlier commit of this transfer is not what DEST holds:
		// its record says nothing any more.
		if err := o.s.db.Delete(keyCommit(m.TransferID), pebble.Sync); err != nil {
			return false, err
		}
	}
	o.log.Info("the destination exists and will be replaced when the transfer commits", "transfer", m.TransferID, "dest", m.Dest)
	return false, nil
}

// notOurCommit says why the existing DEST is not the tree this transfer
// committed, or returns nil if it is. A crash between the rename and the
// done record leaves our own tree there, and the commit record journaled
// before the rename. Only a DEST this transfer journaled has its manifest
// read.
func (o *openRequest) notOurCommit() error {
	m, c := o.m, o.commit
	if !o.committing {
		return fmt.Errorf("%w: %s exists; remove it, choose another destination or send with --overwrite", protocol.ErrConflict, m.Dest)
	}
	h, herr := committedManifestHash(o.rt, o.rel)
	if herr != nil || h != c.ManifestHash {
		return notCommitted(m.Dest, herr)
	}
	return sourceChanged(m, c.Files, c.Bytes)
}

// recordInterruptedCommit records the done record a crash kept this
// transfer's commit from writing, and tells the sender it is complete.
func (o *openRequest) recordInterruptedCommit() error {
	m, c := o.m, o.commit
	o.s.removeAside(o.rt, c, o.log)
	d := transferDone{Dest: m.Dest, Files: c.Files, Bytes: c.Bytes, ManifestHash: c.ManifestHash, Committed: time.Now().UTC()}
	if err := o.s.recordDone(m.TransferID, o.peer, d); err != nil {
		return err
	}
	o.log.Info("recorded a commit interrupted by a crash", "transfer", m.TransferID, "dest", m.Dest)
	return o.s.replyComplete(o.cs, m, &d)
}

func (o *openRequest) newReceiver() *receiver {
	s, m := o.s, o.m
	return &receiver{
		s: s, log: o.log, tid: m.TransferID, peer: o.peer, cs: o.cs, root: o.rt, rootDir: s.rootDir(o.rt),
		rel: o.rel, partial: o.rel + ".partial", replace: o.replace,
		meta:    transferMeta{Dest: m.Dest, Peer: o.peer.String(), Params: m.Params, Files: m.Files, Bytes: m.Bytes, Started: time.Now().UTC()},
		pending: map[chunk.ID][]pos{}, paths: map[string]bool{},
		kick: make(chan struct{}, 1), arrived: make(chan struct{}, 1),
	}
}

// adoptPartial returns DEST's record of the transfer that owns
// DEST.partial, if any, and forgets positions that no longer describe it.
// A different transfer that left DEST.partial behind is taken over: its
// positions are forgotten, its bytes are overwritten or reused by hash.
func (o *openRequest) adoptPartial(r *receiver) (*destRecord, error) {
	s, m := o.s, o.m
	var rec *destRecord
	if v, ok, err := dbGet(s.db, keyDest(m.Dest)); err != nil {
		return nil, err
	} else if ok {
		d := decodeDestRecord(v)
		rec = &d
		if d.Transfer != m.TransferID {
			o.log.Info("taking over an abandoned partial destination", "dest", m.Dest, "old_transfer", d.Transfer, "transfer", m.TransferID)
			p := keyPosPrefix(d.Transfer)
			_ = s.db.DeleteRange(p, prefixEnd(p), pebble.NoSync)
		}
	}
	if _, err := o.rt.Lstat(r.partial); errors.Is(err, fs.ErrNotExist) {
		// DEST.partial was removed: positions recorded for it describe
		// nothing any more.
		p := keyPosPrefix(m.TransferID)
		if err := s.db.DeleteRange(p, prefixEnd(p), pebble.Sync); err != nil {
			return nil, err
		}
	}
	return rec, nil
}

// checkSpace refuses a transfer whose remaining bytes do not fit beside
// the reserve, sets r's budget and returns the free space.
func (o *openRequest) checkSpace(r *receiver) (free uint64, err error) {
	s, m := o.s, o.m
	need := int64(m.Bytes) - r.durableBytes
	free, _, err = s.space(m.Dest)
	if err != nil {
		return 0, err
	}
	if need > 0 && int64(free)-s.o.Reserve < need {
		return 0, fmt.Errorf("%w: %s needs %s more but %s is free (keeping %s in reserve)", protocol.ErrNoSpace, m.Dest, bytesize.Format(need), bytesize.Format(int64(free)), bytesize.Format(s.o.Reserve))
	}
	// A growing tree's files must fit too: this also bounds the chunk
	// positions (and so the memory) its manifest can make us track.
	r.budget = int64(free) - s.o.Reserve + r.durableBytes
	return free, nil
}

// startPartial opens (or creates) DEST.partial as r.proot and records the
// transfer's metadata and DEST's record. On error r.proot is closed.
func (o *openRequest) startPartial(r *receiver, rec *destRecord) error {
	s, m := o.s, o.m
	hook := func(at string) error {
		if s.o.partialHook == nil {
			return nil
		}
		return s.o.partialHook(at)
	}
	journal := func(d destRecord) error {
		if !d.Pending {
			if err := hook("made"); err != nil {
				return err
			}
		}
		d.Peer = o.peer.String()
		v, _ := json.Marshal(d)
		if err := s.db.Set(keyDest(m.Dest), v, pebble.Sync); err != nil {
			return err
		}
		if !d.Pending {
			return hook("journaled")
		}
		return nil
	}
	proot, drec, err := openPartial(o.rt, r.partial, rec, r.tid, journal)
	if err == nil {
		if err = hook("renamed"); err != nil {
			proot.Close()
			return err
		}
	}
	if err != nil {
		if errors.Is(err, errNotOurs) {
			return err
		}
		return fmt.Errorf("%w: creating %s.partial: %v", protocol.ErrBadPath, m.Dest, err)
	}
	r.proot = proot
	b := s.db.NewBatch()
	meta, _ := json.Marshal(r.meta)
	b.Set(keyMeta(r.tid), meta, nil)
	drec.Peer = o.peer.String()
	dv, _ := json.Marshal(drec)
	b.Set(keyDest(m.Dest), dv, nil)
	if err := b.Commit(pebble.Sync); err != nil {
		b.Close()
		proot.Close()
		return err
	}
	b.Close()
	r.fc = newFileCache(proot, ".", 256)
	return nil
}

// replyOpened tells the sender the transfer's state: new or resumed, what
// is durable already, the free space and (protocol 5) the token that lets
// its other connections join.
func (o *openRequest) replyOpened(r *receiver, a *activeTransfer, free uint64) error {
	s, m := o.s, o.m
	state := protocol.StateNew
	if r.durableChunks > 0 {
		state = protocol.StateResume
	}
	o.log.Info("transfer opened", "transfer", r.tid, "dest", m.Dest, "state", state, "files", m.Files, "bytes", m.Bytes, "durable_bytes", r.durableBytes)
	ts := &protocol.TransferState{State: state, DurableBytes: uint64(r.durableBytes), DurableChunks: uint64(r.durableChunks), Free: free}
	if o.cs.version >= protocol.JoinVersion {
		s.mu.Lock()
		_, _ = rand.Read(a.token[:]) // crypto/rand: never fails on Linux
		ts.JoinToken = a.token
		s.mu.Unlock()
	}
	return o.cs.write(ts)
}

// errJoin refuses a JoinTransfer: no transfer of this peer with that ID
// and token is open (it may have ended, or never been this peer's).
var errJoin = fmt.Errorf("%w: no open transfer of this peer with that ID and join token", protocol.ErrPermission)

// join admits conn's JoinTransfer into the open transfer it names, if the
// same peer opened it and got the same token, and answers TransferState.
// On success the caller holds a.joined and serves data streams for r.
func (s *Server) join(ctx context.Context, peer PeerID, cs *controlStream, m *protocol.JoinTransfer) (*receiver, *activeTransfer, error) {
	if cs.version < protocol.JoinVersion {
		return nil, nil, fmt.Errorf("%w: JoinTransfer needs protocol %d", protocol.ErrProtocol, protocol.JoinVersion)
	}
	if err := s.trust.Check(peer, PermSend); err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	a := s.active[m.TransferID]
	ok := a != nil && a.peer == peer && a.token != ([protocol.JoinTokenLen]byte{}) &&
		subtle.ConstantTimeCompare(a.token[:], m.Token[:]) == 1
	s.mu.Unlock()
	if !ok {
		return nil, nil, errJoin
	}
	select {
	case <-a.ready:
	case <-a.done:
		return nil, nil, errJoin
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	s.mu.Lock()
	if a.closing || a.rcv.ctx.Err() != nil {
		s.mu.Unlock()
		return nil, nil, errJoin
	}
	a.joined.Add(1)
	r := a.rcv
	s.mu.Unlock()
	r.mu.Lock()
	ts := &protocol.TransferState{State: protocol.StateResume, DurableBytes: uint64(r.durableBytes), DurableChunks: uint64(r.durableChunks)}
	r.mu.Unlock()
	if err := cs.write(ts); err != nil {
		a.joined.Done()
		return nil, nil, err
	}
	return r, a, nil
}

// notCommitted refuses a DEST that exists but is not provably the tree a
// transfer committed.
func notCommitted(dest string, why error) error {
	if why == nil {
		why = errors.New("its manifest differs from the one committed")
	}
	return fmt.Errorf("%w: %s exists but is not the tree this transfer committed (%v); remove it or choose another destination", protocol.ErrConflict, dest, why)
}

// removeAside deletes the DEST a commit replaced (commitRecord.Aside), once
// the new tree is in place. A failure is logged, not returned: the
// transfer is committed, and the leftover is named for the operator.
func (s *Server) removeAside(rt *os.Root, c commitRecord, log *slog.Logger) {
	if c.Aside == "" {
		return
	}
	if err := RemoveAside(rt, c.Aside); err != nil {
		log.Warn("the replaced destination could not be removed; remove it by hand", "dest", c.Dest, "path", filepath.Join(s.rootDir(rt), c.Aside), "err", err)
	}
}

// commitRecord reads the commit record of tid, if there is one.
func (s *Server) commitRecord(tid string) (commitRecord, bool, error) {
	v, ok, err := dbGet(s.db, keyCommit(tid))
	if err != nil || !ok {
		return commitRecord{}, false, err
	}
	var c commitRecord
	if err := json.Unmarshal(v, &c); err != nil {
		return commitRecord{}, false, nil
	}
	return c, true, nil
}

func (s *Server) replyComplete(cs *controlStream, m *protocol.OpenTransfer, d *transferDone) error {
	s.log.Info("transfer already complete", "transfer", m.TransferID, "dest", m.Dest)
	if err := cs.write(&protocol.TransferState{State: protocol.StateComplete, DurableBytes: m.Bytes}); err != nil {
		return err
	}
	return nil
}

// runTransfer runs r, counting it in the metrics. The caller registered
// it as active and releases it once nothing of the connection can touch the
// tree.
func (s *Server) runTransfer(ctx context.Context, r *receiver) error {
	s.metrics.transfersOpen.Inc()
	defer s.metrics.transfersOpen.Dec()
	labels := prometheus.Labels{"transfer": r.tid, "peer": r.peer.String()}
	r.progress = s.metrics.transferDurable.With(labels)
	s.metrics.transferTotal.With(labels).Set(float64(r.meta.Bytes))
	defer func() {
		s.metrics.transferDurable.Delete(labels)
		s.metrics.transferTotal.Delete(labels)
	}()
	err := r.run(ctx)
	if err != nil {
		s.metrics.transfersFail.Inc()
	}
	return err
}

// admit counts a new connection of peer, refusing it above the per-peer
// limit; leave uncounts an admitted one.
func (s *Server) admit(peer PeerID, conn *quic.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.peerConns[peer]) >= s.o.MaxConnsPerPeer {
		return false
	}
	if s.peerConns[peer] == nil {
		s.peerConns[peer] = map[*quic.Conn]Perm{}
	}
	s.peerConns[peer][conn] = 0
	return true
}

func (s *Server) leave(peer PeerID, conn *quic.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.peerConns[peer], conn)
	if len(s.peerConns[peer]) == 0 {
		delete(s.peerConns, peer)
	}
}

// watchTrust closes, every TrustRecheck, the connections of peers no
// longer in the trust list: untrusting a peer ends its transfers, fetches
// and jobs, not only its later requests.
func (s *Server) watchTrust(ctx context.Context) {
	t := time.NewTicker(s.o.TrustRecheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.closeUntrusted()
	}
}

// closeUntrusted closes the connections of every connected peer that the
// trust list (reread if it changed on disk) no longer holds.
func (s *Server) closeUntrusted() {
	s.mu.Lock()
	peers := make([]PeerID, 0, len(s.peerConns))
	for p := range s.peerConns {
		peers = append(peers, p)
	}
	s.mu.Unlock()
	for _, p := range peers {
		if _, ok := s.trust.Lookup(p); ok {
			continue
		}
		s.mu.Lock()
		conns := make([]*quic.Conn, 0, len(s.peerConns[p]))
		for c := range s.peerConns[p] {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		if len(conns) > 0 {
			s.log.Warn("closing the connections of a peer no longer trusted", "peer", p.Short(), "connections", len(conns))
		}
		for _, c := range conns {
			c.CloseWithError(quic.ApplicationErrorCode(protocol.CloseRefused), "peer no longer trusted")
		}
	}
}

// Untrust removes id from the trust list and closes its connections at
// once (a 'pgporter mover untrust' run in another process takes effect
// within TrustRecheck).
func (s *Server) Untrust(id PeerID) error {
	if err := s.trust.Untrust(id); err != nil {
		return err
	}
	s.closeUntrusted()
	return nil
}

// release forgets a as the active transfer of tid.
func (s *Server) release(tid string, a *activeTransfer) {
	s.mu.Lock()
	if s.active[tid] == a {
		delete(s.active, tid)
	}
	s.mu.Unlock()
	s.transfers.release(a.peer, a.cost)
	close(a.done)
}
