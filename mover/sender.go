package mover

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/buildinfo"
	"github.com/pgporter/pgporter/internal/pebbledb"
	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
)

// Software is this build, as Hello tells the peer: "pgporter" and the
// release and commit (internal/buildinfo).
var Software = "pgporter " + buildinfo.Get().Short()

// SendOptions configure one Send. The zero value of every field but Src and
// Dest is a sensible default.
type SendOptions struct {
	// Src is the local directory or regular file to send. A directory's
	// tree lands at Dest; a file lands in the directory Dest, under its
	// own name.
	Src        string
	Dest       string       // absolute path on the receiver, inside one of its roots
	TransferID string       // default: derived from Src, Dest and the receiver's peer ID
	Params     chunk.Params // default chunk.DefaultParams
	Streams    int          // parallel data streams per connection, default 4
	// Connections bounds the QUIC connections of one transfer (protocol 5,
	// each with Streams data streams): 0 (auto) adds one, up to
	// autoConnections, each quarter second the first loses more than 0.1%
	// of its packets; N > 0 opens N at once. A receiver below protocol 5 gets one.
	Connections int
	// LossRepair is "auto" (default), "on" or "off" (protocol 11,
	// lossrepair.go, LossRepairAuto): auto frames the connections added
	// for loss or for a long path, and the first when the last send to the
	// peer needed it; on frames every connection, the first too (a
	// receiver below protocol 11 then never answers).
	LossRepair string
	// Compression is "auto" (default) or a chunkstore level name; "s2"
	// fails against a receiver below protocol 6.
	Compression string
	// Feed, if set, announces Src's files as they are completed (a dump
	// still being written); the transfer commits once the feed is closed.
	// Without it, Src is listed when Send starts.
	Feed *FileFeed
	// SrcRoot, if set, is Src already opened (the caller keeps it open
	// until Send returns and closes it): with a Feed, the producer may
	// rename Src before Send opens it.
	SrcRoot *os.Root
	// ReadAhead bounds the memory that keeps chunks between cutting and
	// sending them, so that each byte is read from the source once (it is
	// read again only for chunks that did not fit); 0 means 32 MiB,
	// negative none.
	ReadAhead   int64
	BWLimit     int64         // aggregate wire bytes per second; 0 means no limit
	RetryFor    time.Duration // reconnect budget after a network failure; default 2m, negative disables; a mover that never answered gets at most 10s
	IdleTimeout time.Duration // a connection silent this long is dead; default 30s
	// Overwrite replaces an existing directory at Dest when the transfer
	// commits (protocol 8; the old one is moved aside until then).
	Overwrite bool
	// SkipSpecial sends a source that holds symlinks, devices, FIFOs or
	// sockets without them (SendResult.Skipped lists them); without it such
	// a source is refused with the list (SpecialFilesError).
	SkipSpecial bool
	// Progress, if set, is called from one goroutine as the receiver reports
	// durable progress.
	Progress func(SendProgress)
}

func (o SendOptions) withDefaults() SendOptions {
	if o.Params == (chunk.Params{}) {
		o.Params = chunk.DefaultParams
	}
	if o.Streams <= 0 {
		o.Streams = 4
	}
	if o.Compression == "" {
		o.Compression = "auto"
	}
	if o.LossRepair == "" {
		o.LossRepair = LossRepairAuto
	}
	if o.RetryFor == 0 {
		o.RetryFor = 2 * time.Minute
	}
	if o.ReadAhead == 0 {
		o.ReadAhead = 32 << 20
	}
	return o
}

// Validate reports the first problem with o.
func (o SendOptions) Validate() error {
	o = o.withDefaults()
	switch {
	case o.Src == "":
		return errors.New("mover: no source")
	case !filepath.IsAbs(o.Dest) || filepath.Clean(o.Dest) != o.Dest:
		return fmt.Errorf("mover: destination %q must be a clean absolute path on the receiver", o.Dest)
	case o.Streams > protocol.MaxDataStreams:
		return fmt.Errorf("mover: %d streams is more than %d, the most a receiver takes per transfer", o.Streams, protocol.MaxDataStreams)
	case o.Connections < 0:
		return errors.New("mover: negative number of connections")
	case o.Connections > 0 && o.Connections*o.Streams > protocol.MaxDataStreams:
		return fmt.Errorf("mover: %d connections of %d streams is more than %d streams, the most a receiver takes per transfer", o.Connections, o.Streams, protocol.MaxDataStreams)
	case o.Params != (chunk.Params{}) && o.Params.Min < protocol.MinChunkMin:
		return fmt.Errorf("mover: chunk minimum %d is below %d, the least a receiver accepts", o.Params.Min, protocol.MinChunkMin)
	case o.BWLimit < 0:
		return errors.New("mover: negative bandwidth limit")
	}
	if o.TransferID != "" && !validTransferID(o.TransferID) {
		return fmt.Errorf("mover: transfer ID %q: use 1-128 of [A-Za-z0-9._-]", o.TransferID)
	}
	if _, err := newLevelController(o.Compression); err != nil {
		return err
	}
	if err := validLossRepair(o.LossRepair); err != nil {
		return err
	}
	return o.Params.Validate()
}

func validTransferID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// TransferIDFor derives the ID that makes a rerun of the same send resume:
// the same source, destination and receiver give the same ID.
func TransferIDFor(srcAbs, dest string, peer PeerID) string {
	h := blake3.New()
	h.Write([]byte(srcAbs + "\x00" + dest + "\x00"))
	h.Write(peer[:])
	return "t-" + hex.EncodeToString(h.Sum(nil)[:12])
}

// SendProgress is a snapshot of a running Send.
type SendProgress struct {
	Total      int64 // plain bytes in the tree
	Durable    int64 // plain bytes the receiver holds durably
	WireBytes  int64 // bytes of chunk frames sent
	ChunksSent int64
	Level      chunk.Level
}

// SendResult is what Send did. Its JSON form is the contract of
// 'pgporter send --json'.
type SendResult struct {
	TransferID    string  `json:"transfer"`
	Dest          string  `json:"dest"`
	Files         int     `json:"files"`
	Bytes         int64   `json:"bytes"`
	ChunksTotal   int64   `json:"chunks_total"`
	ChunksSent    int64   `json:"chunks_sent"`
	ChunksSkipped int64   `json:"chunks_skipped"`
	WireBytes     int64   `json:"wire_bytes"`
	Seconds       float64 `json:"seconds"`
	Reconnects    int     `json:"reconnects"`
	ResumedBytes  int64   `json:"resumed_bytes"`  // durable at the receiver when the first connection opened
	ResumedChunks int64   `json:"resumed_chunks"` // chunk positions durable then
	HashedBytes   int64   `json:"hashed_bytes"`   // bytes read to chunk (0 when every chunk list came from the cache)
	// ChunksFromMemory were sent from the bytes read to chunk them; the
	// others sent were read from the source again.
	ChunksFromMemory int64  `json:"chunks_from_memory"`
	AlreadyComplete  bool   `json:"already_complete"`
	ManifestBLAKE3   string `json:"manifest_blake3,omitempty"`
	// Compression is the level chunks were compressed at when the send
	// ended; Levels counts the chunks sent at each level it used.
	Compression string           `json:"compression"`
	Levels      map[string]int64 `json:"levels,omitempty"`
	// Path is quic-go's view of the connections: RTT, congestion window, loss.
	Path *PathStats `json:"path,omitempty"`
	// The UDP socket's buffers as read back (see WantUDPBuffer).
	UDPRcvBuf int `json:"udp_rcvbuf"`
	UDPSndBuf int `json:"udp_sndbuf"`
	// Messages the sender wrote on its control streams, and the stream
	// writes that carried them (several messages per write when coalesced).
	ControlMessages int64 `json:"control_messages"`
	ControlWrites   int64 `json:"control_writes"`
	// Dirs is the number of directories sent with their modes (protocol 8;
	// 0 to an older receiver, which makes them from the files' paths).
	Dirs int `json:"dirs"`
	// Skipped lists the special entries SkipSpecial left out.
	Skipped []SkippedEntry `json:"skipped,omitempty"`
	// Timing is when the send reached each step, in milliseconds since it
	// began: where a transfer's time went beside the link's.
	Timing SendTiming `json:"timing"`
}

// SendTiming holds the milliseconds since a send began at which it
// reached each step (0: not reached). After a reconnection the first
// three are the first connection's, LastChunk the last attempt's.
type SendTiming struct {
	Connected  float64 `json:"connected_ms"`   // the first connection's handshake and Hello done
	Opened     float64 `json:"opened_ms"`      // the receiver's TransferState read
	FirstChunk float64 `json:"first_chunk_ms"` // the first chunk written to a data stream
	LastChunk  float64 `json:"last_chunk_ms"`  // SendDone written: every chunk needed is on its way
	Done       float64 `json:"done_ms"`        // Committed read, or the send failed
}

// sendClock records SendTiming's steps, from any goroutine.
type sendClock struct {
	start                                    time.Time
	connected, opened, firstChunk, lastChunk atomic.Int64 // nanoseconds since start, 0: not yet
}

// once records step now unless it was recorded before.
func (c *sendClock) once(step *atomic.Int64) {
	step.CompareAndSwap(0, int64(time.Since(c.start)))
}

func (c *sendClock) timing() SendTiming {
	ms := func(ns int64) float64 { return float64(ns/1e3) / 1e3 }
	return SendTiming{Connected: ms(c.connected.Load()), Opened: ms(c.opened.Load()), FirstChunk: ms(c.firstChunk.Load()),
		LastChunk: ms(c.lastChunk.Load()), Done: ms(int64(time.Since(c.start)))}
}

// Sender sends trees to receiving movers. It owns the sender's pebble state
// (chunk lists of sent files, keyed by transfer).
type Sender struct {
	id  *Identity
	db  *pebbledb.DB
	log *slog.Logger
}

// NewSender loads the identity under home and opens the sender state.
func NewSender(home string, log *slog.Logger) (*Sender, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	id, err := LoadIdentity(home)
	if err != nil {
		return nil, err
	}
	db, err := openDB(filepath.Join(home, "sender"), senderStateFormat, log)
	if err != nil {
		return nil, err
	}
	return &Sender{id: id, db: db, log: log}, nil
}

// Close releases the sender state.
func (s *Sender) Close() error { return s.db.Close() }

// Send transfers o.Src to o.Dest on the mover at addr, which must present
// peer's identity. Rerunning the same Send after any failure resumes: only
// chunks the receiver does not hold durably are sent. Short network drops
// are ridden out by reconnecting for up to o.RetryFor.
func (s *Sender) Send(ctx context.Context, addr string, peer PeerID, o SendOptions) (*SendResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	src, err := filepath.Abs(o.Src)
	if err != nil {
		return nil, err
	}
	// Src itself is resolved if it is a link (as cp and scp follow the
	// names they are given), so that what it names is opened in its own
	// directory; nothing inside a tree is followed.
	var fi fs.FileInfo
	if o.SrcRoot == nil {
		if src, err = filepath.EvalSymlinks(src); err != nil {
			return nil, err
		}
		if fi, err = os.Stat(src); err != nil {
			return nil, err
		} else if !fi.IsDir() && !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%w: %s is a %s", ErrUnsupportedFile, src, entryKind(fi.Mode()))
		}
	}
	tid := o.TransferID
	if tid == "" {
		tid = TransferIDFor(src, o.Dest, peer)
	}
	start := time.Now()
	root := o.SrcRoot
	if root == nil {
		dir := src
		if !fi.IsDir() {
			dir = filepath.Dir(src) // a single file is opened through its directory
		}
		if root, err = os.OpenRoot(dir); err != nil {
			return nil, err
		}
		defer root.Close()
	}
	res := &SendResult{TransferID: tid, Dest: o.Dest}
	var (
		so   *source
		tree *srcTree
	)
	switch {
	case o.Feed != nil:
		so = newGrowingSource(root, o.Feed)
	case fi != nil && !fi.IsDir():
		if tree, err = scanFile(src, fi); err != nil {
			return nil, err
		}
	default:
		if tree, err = scanTree(src); err != nil {
			return nil, err
		}
		if len(tree.special) > 0 && !o.SkipSpecial {
			return nil, &SpecialFilesError{Src: src, Entries: tree.special}
		}
		res.Skipped = tree.special
	}
	if tree != nil {
		so = newSource(root, tree.files)
	}
	lc, _ := newLevelController(o.Compression)
	t := &sendTransfer{
		s: s, o: o, tid: tid, peer: peer, addr: addr, res: res, lc: lc,
		src: so, clock: sendClock{start: start},
		handles: map[uint32]*srcHandle{}, unchecked: map[uint32]bool{},
	}
	if tree != nil {
		t.dirs, t.dirTimes = tree.dirs, tree.dirTimes
	}
	if o.ReadAhead > 0 {
		t.ra = newReadAhead(o.ReadAhead, o.Params)
		so.ra = t.ra
	}
	if o.BWLimit > 0 {
		t.limiter = rate.NewLimiter(rate.Limit(o.BWLimit), int(min(max(o.BWLimit/20, 64<<10), 1<<20)))
	}
	defer t.closeHandles()

	chunkCtx, stopChunking := context.WithCancel(ctx)
	var chunkErr error
	var wg sync.WaitGroup
	if o.Feed != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			so.follow(chunkCtx, o.Feed)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		chunkErr = t.src.run(chunkCtx, &chunkCache{db: s.db, tid: tid}, o.Params)
	}()
	if o.LossRepair == LossRepairAuto {
		t.memK = rememberedRepair(s.id.home, peer)
	}
	err = t.loop(ctx)
	if k := t.lossK.Load(); k > 0 {
		_ = noteRepair(s.id.home, peer, int(k)) // the next send frames its first connection; best effort
	}
	stopChunking()
	wg.Wait()
	if err == nil && !res.AlreadyComplete && chunkErr != nil {
		err = chunkErr
	}
	files := so.snapshot()
	res.Files = len(files)
	for _, f := range files {
		res.Bytes += f.Size
		res.ChunksTotal += int64(len(f.Chunks))
	}
	res.ChunksSent = t.chunksSent.Load()
	res.WireBytes = t.wireBytes.Load()
	res.ChunksSkipped = max(res.ChunksTotal-res.ChunksSent, 0)
	res.HashedBytes = t.src.hashed.Load()
	res.Compression, res.Levels = lc.current().String(), lc.levelChunks()
	if t.ra != nil {
		res.ChunksFromMemory, _ = t.ra.stats()
	}
	res.Seconds = time.Since(start).Seconds()
	res.Timing = t.clock.timing()
	res.Path = t.path.result()
	return res, err
}

// sendTransfer is the state of one Send across its connections.
type sendTransfer struct {
	s       *Sender
	o       SendOptions
	tid     string
	peer    PeerID
	addr    string
	res     *SendResult
	src     *source
	lc      *levelController
	ra      *readAhead    // nil: every chunk is read again to be sent
	limiter *rate.Limiter // nil: no limit
	opened  bool          // a connection got as far as TransferState
	path    pathRecorder
	clock   sendClock
	// warnBuffers logs small UDP buffers once per send, not per reconnect.
	warnBuffers sync.Once
	// memK is the loss repair group of the first connection, from the
	// peer's record (auto mode; lossrepair.go); lossK the group of the
	// last connection this send added for loss.
	memK     int
	lossK    atomic.Int64
	dirs     []protocol.Dir // the tree's directories, "." first (none for a growing tree)
	dirTimes []int64        // their modification times (protocol 10), or none
	warnDirs sync.Once      // an old receiver gets no dirs: said once per send

	chunksSent atomic.Int64
	wireBytes  atomic.Int64
	durable    atomic.Int64

	handlesMu sync.Mutex // guards handles, unchecked, and each srcHandle's refs
	handles   map[uint32]*srcHandle
	unchecked map[uint32]bool // handles opened while their file grew: checked once it is done
}

// srcHandle is an open source file and the data workers reading it: one in
// use is never closed under its reader.
type srcHandle struct {
	f       *os.File
	refs    int
	dropped bool // out of the table (its file changed): the last user closes it
}

// errSourceChanged reports a source file modified during a send.
var errSourceChanged = errors.New("mover: source changed")

func (t *sendTransfer) loop(ctx context.Context) error {
	pause := newBackoff(250 * time.Millisecond)
	plan := retryPlan{retryFor: t.o.RetryFor, start: time.Now()}
	attempts := 0
	for {
		before := t.durable.Load()
		err := t.attempt(ctx)
		attempts++
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !retryable(err) || t.o.RetryFor < 0 {
			return err
		}
		plan.contacted = t.opened
		if t.durable.Load() > before {
			plan.progress() // it made progress: a fresh budget
			pause.reset()
		}
		now := time.Now()
		deadline, first := plan.fail(now, err)
		if pause.past(now, deadline) {
			if plan.firstContact(err) {
				return fmt.Errorf("giving up after %d attempts in %s: %w", attempts, now.Sub(plan.start).Round(time.Second), err)
			}
			return fmt.Errorf("giving up after %s of failed reconnects to %s (rerun the same command to resume): %w", t.o.RetryFor, t.addr, err)
		}
		switch {
		case !first:
			t.s.log.Debug("transfer interrupted; reconnecting", "transfer", t.tid, "addr", t.addr, "err", err, "retry_in", pause.next)
		case plan.firstContact(err):
			t.s.log.Warn("no connection to the receiving mover yet; retrying", "addr", t.addr, "until", deadline.Format(time.TimeOnly), "err", err)
		default:
			t.s.log.Warn("transfer interrupted; reconnecting", "transfer", t.tid, "peer", t.peer.Short(), "addr", t.addr, "until", deadline.Format(time.TimeOnly), "err", err)
		}
		t.res.Reconnects++
		if err := pause.wait(ctx, nil, nil); err != nil {
			return err
		}
	}
}

func (t *sendTransfer) attempt(ctx context.Context) error {
	fecK := t.memK // auto: what the last sends to the peer needed
	if t.o.LossRepair == LossRepairOn {
		fecK = max(fecK, fecDefaultK)
	}
	var pre *preDial
	if fecK == 0 && t.o.LossRepair == LossRepairAuto && t.o.Connections == 0 && t.maxConnections() > 1 {
		pre = t.startPreDial(ctx)
	}
	defer pre.discard()
	// A growing tree announces no counts: the receiver takes the files as
	// they come, up to ManifestEnd.
	open := &protocol.OpenTransfer{TransferID: t.tid, Dest: t.o.Dest, Params: t.o.Params}
	if t.o.Feed == nil {
		open.Files, open.Bytes = uint64(len(t.src.snapshot())), uint64(t.src.bytes.Load())
	}
	if t.o.Overwrite {
		open.Flags |= protocol.FlagOverwrite
	}
	// OpenTransfer goes with the Hello, a round trip sooner (40 ms of the
	// harness's WAN, 400 ms of its lossy path), unless the receiver's
	// version may refuse what it asks: replacing a destination (protocol
	// 8) or a fixed S2 (6). Every version reads it after the Hello.
	var pipelined protocol.Message
	if open.Flags == 0 && t.o.Compression != chunk.LevelS2.String() {
		pipelined = open
	}
	conn, cs, bufs, err := dialMoverFEC(ctx, t.addr, t.s.id, t.peer, t.o.IdleTimeout, PermSend, fecK, pipelined)
	if _, noAnswer := errors.AsType[*NoAnswerError](err); noAnswer && t.memK > 0 {
		// The peer may have been replaced by a build below protocol 11,
		// which drops framed datagrams: forget, and dial as before.
		t.s.log.Info("no answer to a connection framed for loss repair; dialling without", "peer", t.peer.Short(), "addr", t.addr)
		_ = noteRepair(t.s.id.home, t.peer, 0)
		t.memK, fecK = 0, 0
		conn, cs, bufs, err = dialMoverFEC(ctx, t.addr, t.s.id, t.peer, t.o.IdleTimeout, PermSend, 0, pipelined)
	}
	if bufs != (UDPBuffers{}) {
		t.res.UDPRcvBuf, t.res.UDPSndBuf = bufs.Recv, bufs.Send
		t.warnBuffers.Do(func() { bufs.Warn(t.s.log, "send") })
	}
	if err != nil {
		return err
	}
	t.clock.once(&t.clock.connected)
	defer conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseOK), "")
	if err := t.lc.peer(cs.version); err != nil {
		return permanentError{err}
	}
	if longPath(conn) {
		t.lc.longPath()
		t.ra.longPath()
	} else {
		pre.discard() // a LAN: joins, if any, are dialled as they are needed
	}
	if cs.version < protocol.FECVersion {
		pre.discard()
	}
	if fecK > 0 {
		if cs.version < protocol.FECVersion {
			// Only a receiver of 11 answers a framed handshake; checked
			// all the same, as a peer's Hello is.
			return permanentError{fmt.Errorf("%w: the receiver speaks protocol %d, and loss repair needs %d", protocol.ErrVersion, cs.version, protocol.FECVersion)}
		}
		t.path.repaired(fecK)
	}
	if t.ra != nil {
		t.ra.newConnection()
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	var watching sync.WaitGroup
	watching.Go(func() { t.path.watch(watchCtx, conn) })
	defer func() { stopWatch(); watching.Wait() }()
	defer func() {
		c := cs.counts()
		t.res.ControlMessages += c.Msgs
		t.res.ControlWrites += c.Writes
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Reads on QUIC streams do not take a context: closing the connection is
	// what unblocks them.
	stop := context.AfterFunc(ctx, func() { conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), "cancelled") })
	defer stop()

	if pipelined == nil {
		if t.o.Overwrite && cs.version < protocol.DirVersion {
			return permanentError{fmt.Errorf("%w: the receiver speaks protocol %d, and replacing a destination needs %d: upgrade pgporter there", protocol.ErrVersion, cs.version, protocol.DirVersion)}
		}
		if err := cs.write(open); err != nil {
			return err
		}
	}
	m, err := cs.next()
	if err != nil {
		return err
	}
	ts, ok := m.(*protocol.TransferState)
	if !ok {
		return permanentError{fmt.Errorf("%w: expected TransferState, got %s", protocol.ErrProtocol, m.Type())}
	}
	t.clock.once(&t.clock.opened)
	t.durable.Store(int64(ts.DurableBytes))
	if !t.opened {
		t.opened = true
		t.res.ResumedBytes, t.res.ResumedChunks = int64(ts.DurableBytes), int64(ts.DurableChunks)
	}
	t.report()
	if ts.State == protocol.StateComplete {
		t.res.AlreadyComplete = true
		t.s.log.Info("transfer already complete at the receiver; nothing to send", "transfer", t.tid, "dest", t.o.Dest)
		return nil
	}
	t.s.log.Debug("transfer opened", "transfer", t.tid, "state", ts.State, "durable_bytes", ts.DurableBytes)

	jobs := newJobQueue()
	g, gctx := errgroup.WithContext(ctx)
	// Once any part fails, the connection goes: readControl would
	// otherwise wait on the receiver forever.
	stopG := context.AfterFunc(gctx, func() {
		conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), "transfer attempt ended")
	})
	defer stopG()
	ctlDone := make(chan struct{})
	var ctlErr error // readControl's, set before ctlDone is closed
	// receiverReason is err, or the receiver's reason if it comes soon. A
	// data stream reset, or a control stream the receiver stopped reading,
	// usually means the receiver failed the transfer: its Error, on the
	// control stream, is the reason to report, not the reset it caused.
	// The group keeps the first error returned, and a part may fail
	// before readControl's goroutine has read the Error.
	receiverReason := func(err error) error {
		var pe permanentError
		if err == nil || errors.As(err, &pe) {
			return err
		}
		timer := time.NewTimer(3 * time.Second)
		defer timer.Stop()
		select {
		case <-ctlDone:
			if ctlErr != nil {
				return ctlErr
			}
		case <-timer.C:
		}
		return err
	}
	g.Go(func() error { return receiverReason(t.writeManifest(gctx, cs)) })
	var workers sync.WaitGroup
	var sentHere atomic.Int64
	for range t.o.Streams {
		workers.Add(1)
		g.Go(func() error {
			defer workers.Done()
			return receiverReason(t.dataWorker(gctx, conn, cs.version, jobs, &sentHere))
		})
	}
	var extra joinedConns
	defer extra.close()
	if n := t.maxConnections(); n > 1 && cs.version >= protocol.JoinVersion && ts.JoinToken != ([protocol.JoinTokenLen]byte{}) {
		workers.Add(1)
		g.Go(func() error {
			defer workers.Done()
			return t.join(gctx, conn, cs.version, ts.JoinToken, n-1, jobs, &sentHere, &extra, pre)
		})
	}
	g.Go(func() error {
		workers.Wait()
		if gctx.Err() != nil {
			return nil
		}
		t.clock.lastChunk.Store(int64(time.Since(t.clock.start)))
		return receiverReason(cs.write(&protocol.SendDone{Chunks: uint64(sentHere.Load())}))
	})
	g.Go(func() error {
		defer close(ctlDone)
		defer jobs.close()
		ctlErr = t.readControl(gctx, cs, jobs)
		return ctlErr
	})
	return g.Wait()
}

// writeManifest offers every file's chunk list as it is cut: the receiver
// can ask for the first chunks of a large file while its end is still being
// read and hashed. The messages of every file ready now leave together
// (controlStream.queue); they are written before it waits for more.
func (t *sendTransfer) writeManifest(ctx context.Context, cs *controlStream) error {
	const perMsg = 16384
	files := 0
	if err := t.writeDirs(cs); err != nil {
		return err
	}
	for i := 0; ; i++ {
		if t.src.waitsFile(i) {
			if err := cs.flush(); err != nil {
				return err
			}
		}
		f, ok, err := t.src.waitFile(ctx, i)
		if err != nil {
			return permanentError{err}
		}
		if !ok {
			break
		}
		files++
		if t.src.waitsChunks(i, 0) {
			if err := cs.flush(); err != nil {
				return err
			}
		}
		refs, done, hash, err := t.src.next(ctx, i, 0)
		if err != nil {
			return permanentError{err}
		}
		hdr := &protocol.FileHeader{Index: f.Index, Path: f.Path, Mode: f.Mode, Growing: f.growing}
		if !f.growing { // a growing file's size and mtime come with FileEnd, even if it is done by now
			hdr.Size, hdr.MTime = uint64(f.Size), f.MTime
			if done {
				hdr.NumChunks = uint32(len(refs))
			}
		}
		if err := cs.queue(hdr); err != nil {
			return err
		}
		sent := 0
		for {
			for len(refs) > 0 {
				n := min(len(refs), perMsg)
				if err := cs.queue(&protocol.FileChunks{Index: f.Index, First: uint32(sent), Chunks: refs[:n]}); err != nil {
					return err
				}
				refs, sent = refs[n:], sent+n
			}
			if done {
				break
			}
			if t.src.waitsChunks(i, sent) {
				if err := cs.flush(); err != nil {
					return err
				}
			}
			if refs, done, hash, err = t.src.next(ctx, i, sent); err != nil {
				return permanentError{err}
			}
		}
		size, mtime, _, _ := t.src.stateOf(f)
		if err := cs.queue(&protocol.FileEnd{Index: f.Index, Size: uint64(size), MTime: mtime, Hash: hash}); err != nil {
			return err
		}
	}
	return cs.write(&protocol.ManifestEnd{Files: uint32(files)})
}

// writeDirs lists the tree's directories, with their modes, before the
// first file (protocol 8). An older receiver makes directories from the
// files' paths alone: no modes, no empty ones; that is said once.
func (t *sendTransfer) writeDirs(cs *controlStream) error {
	if len(t.dirs) == 0 {
		return nil
	}
	if cs.version < protocol.DirVersion {
		if dirsLost(t.dirs, t.src.snapshot()) {
			t.warnDirs.Do(func() {
				t.s.log.Warn(fmt.Sprintf("the receiver speaks a protocol older than %d: directory modes and empty directories are not sent", protocol.DirVersion), "protocol", cs.version, "dirs", len(t.dirs))
			})
		}
		return nil
	}
	times := cs.version >= protocol.DirTimeVersion && len(t.dirTimes) == len(t.dirs)
	for i := range t.dirs {
		if err := cs.queue(&t.dirs[i]); err != nil {
			return err
		}
		if times {
			if err := cs.queue(&protocol.DirTime{Path: t.dirs[i].Path, MTime: t.dirTimes[i]}); err != nil {
				return err
			}
		}
	}
	t.res.Dirs = len(t.dirs)
	return nil
}

// dirsLost reports whether a receiver that makes directories from the
// files' paths alone (0700, below protocol 8) would lose anything of
// dirs: a mode other than that, or an empty directory.
func dirsLost(dirs []protocol.Dir, files []*srcFile) bool {
	implied := map[string]bool{".": true}
	for _, f := range files {
		for d := path.Dir(f.Path); d != "."; d = path.Dir(d) {
			implied[d] = true
		}
	}
	for _, d := range dirs {
		if dirMode(d.Mode) != minDirMode || !implied[d.Path] {
			return true
		}
	}
	return false
}

// readControl handles the receiver's messages until it commits.
func (t *sendTransfer) readControl(ctx context.Context, cs *controlStream, jobs *jobQueue) error {
	needEnded := false
	for {
		m, err := cs.next()
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *protocol.Need:
			if needEnded {
				return permanentError{fmt.Errorf("%w: Need after NeedEnd", protocol.ErrProtocol)}
			}
			f, ok := t.src.file(m.Index)
			if !ok {
				return permanentError{fmt.Errorf("%w: need for file %d, which was not offered", protocol.ErrProtocol, m.Index)}
			}
			js := make([]job, 0, len(m.Chunks))
			for _, c := range m.Chunks {
				ref, off, ok := t.src.chunk(m.Index, c)
				if !ok {
					return permanentError{fmt.Errorf("%w: need for chunk %d of %s, which was not offered", protocol.ErrProtocol, c, f.Path)}
				}
				js = append(js, job{file: m.Index, chunk: c, ref: ref, off: off})
			}
			if t.ra != nil {
				t.ra.need(m.Index, m.Chunks, m.Decided)
			}
			jobs.push(js...)
		case *protocol.NeedEnd:
			needEnded = true
			jobs.close()
		case *protocol.Progress:
			t.durable.Store(int64(m.DurableBytes))
			t.report()
		case *protocol.Committed:
			t.durable.Store(t.src.bytes.Load())
			t.report()
			t.res.ManifestBLAKE3 = hex.EncodeToString(m.ManifestHash[:])
			t.res.AlreadyComplete = m.AlreadyDone
			t.s.log.Debug("transfer committed", "transfer", t.tid, "files", m.Files, "bytes", m.Bytes)
			return nil
		default:
			return permanentError{fmt.Errorf("%w: unexpected %s from receiver", protocol.ErrProtocol, m.Type())}
		}
	}
}

func (t *sendTransfer) report() {
	if t.o.Progress != nil {
		t.o.Progress(SendProgress{Total: t.src.bytes.Load(), Durable: t.durable.Load(), WireBytes: t.wireBytes.Load(), ChunksSent: t.chunksSent.Load(), Level: t.lc.current()})
	}
}

// handle opens f for reading (or reuses its open handle) and checks it is
// as it was chunked; call release once done reading.
func (t *sendTransfer) handle(f *srcFile) (h *os.File, release func(), err error) {
	t.handlesMu.Lock()
	defer t.handlesMu.Unlock()
	size, mtime, ctime, done := t.src.stateOf(f)
	growing := f.growing && !done
	if e, ok := t.handles[f.Index]; ok {
		if !growing && t.unchecked[f.Index] {
			if err := t.unchanged(e.f, f, size, mtime, ctime); err != nil {
				delete(t.handles, f.Index)
				if e.dropped = true; e.refs == 0 {
					e.f.Close()
				}
				return nil, nil, err
			}
			delete(t.unchecked, f.Index)
		}
		e.refs++
		return e.f, t.releaser(e), nil
	}
	fh, err := t.src.root.Open(filepath.FromSlash(f.Path))
	if err != nil {
		return nil, nil, err
	}
	// A file still being appended to has no final state to check yet: its
	// chunks were hashed from what was written, and the receiver checks
	// every chunk it gets.
	if growing {
		t.unchecked[f.Index] = true
	} else if err := t.unchanged(fh, f, size, mtime, ctime); err != nil {
		fh.Close()
		return nil, nil, err
	}
	if len(t.handles) >= 64 {
		// Close an idle handle; while every one is busy the bound is
		// exceeded (by at most the number of workers).
		for k, old := range t.handles {
			if old.refs == 0 {
				old.f.Close()
				delete(t.handles, k)
				delete(t.unchecked, k)
				break
			}
		}
	}
	e := &srcHandle{f: fh, refs: 1}
	t.handles[f.Index] = e
	return fh, t.releaser(e), nil
}

// releaser returns the function that ends one use of e; the last use of a
// handle dropped from the table (its file changed) closes it.
func (t *sendTransfer) releaser(e *srcHandle) func() {
	return func() {
		t.handlesMu.Lock()
		defer t.handlesMu.Unlock()
		if e.refs--; e.refs == 0 && e.dropped {
			e.f.Close()
		}
	}
}

// unchanged checks that h, file f, still has the size, mtime and ctime it had
// when it was chunked. Chunks are read back without hashing them again: the
// receiver checks every one, and a file in that state is taken to hold the
// same bytes.
func (t *sendTransfer) unchanged(h *os.File, f *srcFile, size, mtime, ctime int64) error {
	if fi, err := h.Stat(); err != nil || fi.Size() != size || fi.ModTime().UnixNano() != mtime || ctimeOf(fi) != ctime {
		t.s.db.Delete((&chunkCache{tid: t.tid}).key(f.Path), pebble.Sync)
		return fmt.Errorf("%w: %s changed after it was chunked; rerun to send its new content", errSourceChanged, f.Path)
	}
	return nil
}

func ctimeOf(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ctim.Nano()
	}
	return 0
}

func (t *sendTransfer) closeHandles() {
	t.handlesMu.Lock()
	defer t.handlesMu.Unlock()
	for k, e := range t.handles {
		e.f.Close()
		delete(t.handles, k)
	}
}

// dataWorker sends needed chunks on its own data stream of conn, which
// speaks version.
func (t *sendTransfer) dataWorker(ctx context.Context, conn *quic.Conn, version uint16, jobs *jobQueue, sent *atomic.Int64) error {
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("opening data stream: %w", err)
	}
	if _, err := st.Write([]byte{byte(protocol.StreamData)}); err != nil {
		return fmt.Errorf("writing data stream kind: %w", err)
	}
	// Buffers sized by this transfer's largest chunk: memory stays a few
	// hundred KiB per stream whatever the size of the tree.
	maxChunk := t.o.Params.Max
	plainBuf := make([]byte, maxChunk)
	packedBuf := make([]byte, 0, maxChunk+maxChunk/16+1024)
	var probeBuf []byte // a chunk compressed at a probe's level (levelController.wantProbe)
	frame := make([]byte, 0, 64<<10)
	for {
		j, ok := jobs.pop(ctx)
		if !ok {
			break
		}
		f, _ := t.src.file(j.file) // jobs name offered files only
		ref := j.ref
		t0 := time.Now()
		plain, release, err := t.chunkBytes(f, j, plainBuf)
		if err != nil {
			return permanentError{err}
		}
		level := t.lc.levelFor(version)
		packed, codec := chunk.Compress(packedBuf[:0], plain, level)
		cpu := time.Since(t0)
		if to, gen, ok := t.lc.wantProbe(level, version); ok {
			// Not counted in cpu: the probe's cost is not the level's.
			alt, altCodec := chunk.Compress(probeBuf[:0], plain, to)
			t.lc.probed(gen, len(packed), len(alt))
			probeBuf = alt
			if len(alt) < len(packed) {
				packed, codec, level = alt, altCodec, to
				packedBuf, probeBuf = probeBuf, packedBuf
			}
		}
		release()
		frame = protocol.AppendFrame(frame[:0], &protocol.ChunkData{ID: ref.ID, Codec: codec, PlainLen: ref.Len, Payload: packed})
		t1 := time.Now()
		if t.limiter != nil {
			if err := waitN(ctx, t.limiter, len(frame)); err != nil {
				return err
			}
		}
		if _, err := st.Write(frame); err != nil {
			return fmt.Errorf("writing chunk: %w", err)
		}
		t.clock.once(&t.clock.firstChunk)
		t.lc.observe(level, cpu, time.Since(t1), len(frame))
		t.chunksSent.Add(1)
		sent.Add(1)
		t.wireBytes.Add(int64(len(frame)))
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("closing data stream: %w", err)
	}
	return nil
}

// chunkBytes returns the bytes of job j's chunk: those the chunker read, if
// the read-ahead still holds them, else read again from the file into buf.
// The caller calls release once it no longer reads them.
func (t *sendTransfer) chunkBytes(f *srcFile, j job, buf []byte) ([]byte, func(), error) {
	if t.ra != nil {
		if b, release, ok := t.ra.take(j.file, j.chunk); ok {
			if len(b) == int(j.ref.Len) {
				return b, release, nil
			}
			release() // cannot happen: the chunker cut it with this length
		}
	}
	h, release, err := t.handle(f)
	if err != nil {
		return nil, nil, err
	}
	plain := buf[:j.ref.Len]
	_, err = h.ReadAt(plain, j.off)
	release()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil, fmt.Errorf("%w: %s shrank: it ends before chunk %d (%d bytes at %d)", errSourceChanged, f.Path, j.chunk, j.ref.Len, j.off)
		}
		return nil, nil, fmt.Errorf("reading %s at %d: %w", f.Path, j.off, err)
	}
	return plain, func() {}, nil
}

// waitN waits for n tokens, in pieces no larger than the limiter's burst.
func waitN(ctx context.Context, l *rate.Limiter, n int) error {
	for n > 0 {
		k := min(n, l.Burst())
		if err := l.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}
