package mover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
)

// needVersion fails with an error matching protocol.ErrVersion unless the
// repository mover speaks at least v, which what needs.
func (r *RemoteRepo) needVersion(ctx context.Context, v uint16, what string) error {
	_, cs, err := r.connection(ctx, r.conns[0])
	if err != nil {
		return err
	}
	if cs.version < v {
		return fmt.Errorf("%w: %s needs protocol %d, and the repository mover at %s speaks %d (%s): upgrade it",
			protocol.ErrVersion, what, v, r.addr, cs.version, cs.peerSoftware)
	}
	return nil
}

// WALRecord returns the record of the WAL file name in the repository
// mover's archive: an error matching chunkstore.ErrWALNotFound (and
// protocol.ErrNotFound) for a name the archive does not hold. The mover
// must trust this one with read.
func (r *RemoteRepo) WALRecord(ctx context.Context, name string) (*chunkstore.WALFile, error) {
	if !chunkstore.ValidWALName(name) {
		return nil, fmt.Errorf("%w: %q", chunkstore.ErrBadWALName, name)
	}
	if err := r.needVersion(ctx, protocol.WALVersion, "wal-fetch"); err != nil {
		return nil, err
	}
	m, err := r.request(ctx, &protocol.GetWAL{Name: name})
	if err != nil {
		err = fmt.Errorf("reading WAL file %s at %s: %w", name, r.addr, err)
		if errors.Is(err, protocol.ErrNotFound) {
			err = walRemoteError{err, chunkstore.ErrWALNotFound}
		}
		return nil, err
	}
	rec, ok := m.(*protocol.WALRecord)
	if !ok {
		return nil, fmt.Errorf("%w: expected WALRecord, got %s", protocol.ErrProtocol, m.Type())
	}
	if rec.Name != name {
		return nil, fmt.Errorf("%w: asked for WAL file %s, got %s", protocol.ErrProtocol, name, rec.Name)
	}
	w := walFromWire(rec)
	if err := w.Check(); err != nil {
		return nil, fmt.Errorf("%w: WAL file %s from %s: %w", protocol.ErrProtocol, name, r.addr, err)
	}
	return w, nil
}

// FetchWAL writes the WAL file name of the repository mover's archive to
// dst as chunkstore.FetchWAL does for a local one: every chunk verified by
// its BLAKE3 as it arrives (Get), the file against its record, and dst
// written through a temporary file renamed into place.
func (r *RemoteRepo) FetchWAL(ctx context.Context, name, dst string) error {
	w, err := r.WALRecord(ctx, name)
	if err != nil {
		return err
	}
	largest := 1
	for _, c := range w.Chunks {
		largest = max(largest, int(c.Len))
	}
	window := min(walReadAhead, max(1, walReadAheadBytes/largest))
	ctx, cancel := context.WithCancel(ctx)
	a := r.readAhead(ctx, w.Chunks, window)
	defer a.stop(cancel)
	return chunkstore.WriteWAL(ctx, w, a, dst)
}

// A WAL fetch asks for up to walReadAhead chunks, and walReadAheadBytes,
// ahead of the one it writes: one at a time, a segment would take a round
// trip per chunk (256 of them at 64 KiB), seconds across a WAN; the byte
// bound keeps a record of large chunks from sizing the buffers.
const (
	walReadAhead      = 64
	walReadAheadBytes = 16 << 20
)

// aheadGetter hands out the chunks of a list in order, each fetched (and
// verified, by Get) up to window chunks ahead of the one asked for.
type aheadGetter struct {
	chunks []chunkstore.ChunkRef
	res    []chan fetchRes // buffered: a fetch never waits for its reader
	slots  chan struct{}   // one per chunk fetched and not yet handed out
	next   int             // the index of the next Get
	wg     sync.WaitGroup  // the producer and its fetches
}

func (r *RemoteRepo) readAhead(ctx context.Context, chunks []chunkstore.ChunkRef, window int) *aheadGetter {
	a := &aheadGetter{chunks: chunks, res: make([]chan fetchRes, len(chunks)), slots: make(chan struct{}, window)}
	for i := range a.res {
		a.res[i] = make(chan fetchRes, 1)
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for i, c := range chunks {
			select {
			case a.slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				data, err := r.Get(ctx, c.ID, make([]byte, 0, c.Len))
				a.res[i] <- fetchRes{data: data, err: err}
			}()
		}
	}()
	return a
}

// stop cancels the fetches still running (cancel is their context's) and
// waits for them.
func (a *aheadGetter) stop(cancel context.CancelFunc) {
	cancel()
	a.wg.Wait()
}

// Get returns the next chunk of the list, which must be id.
func (a *aheadGetter) Get(ctx context.Context, id chunk.ID, dst []byte) ([]byte, error) {
	if a.next >= len(a.chunks) || a.chunks[a.next].ID != id {
		return dst, fmt.Errorf("%w: chunk %s read out of the order of its list", protocol.ErrInternal, id.Short())
	}
	var res fetchRes
	select {
	case res = <-a.res[a.next]:
	case <-ctx.Done():
		return dst, ctx.Err()
	}
	a.next++
	<-a.slots
	if res.err != nil {
		return dst, res.err
	}
	return append(dst, res.data...), nil
}

// PushWAL archives the WAL file at path, under its base name, into the
// repository mover's repository; the mover must trust this one with
// archive. It returns once the mover has answered that the file is durable
// there: already is true when the archive held that name with the same
// content. Other content under the name is refused with an error matching
// chunkstore.ErrWALConflict (and protocol.ErrConflict). Only the chunks the
// repository lacks are sent, each compressed; a connection lost on the way
// is redialled and the push offered again, for up to RetryFor.
func (r *RemoteRepo) PushWAL(ctx context.Context, path string) (already bool, err error) {
	name := filepath.Base(path)
	if !chunkstore.ValidWALName(name) {
		return false, fmt.Errorf("%w: %q", chunkstore.ErrBadWALName, name)
	}
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("reading WAL file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("reading WAL file: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > chunkstore.MaxWALSize {
		return false, fmt.Errorf("%s is not a WAL file: %s, %d bytes", path, fi.Mode().Type(), fi.Size())
	}
	w, err := chunkstore.ChunkWAL(ctx, f, name, nil)
	if err != nil {
		return false, err
	}
	rec, err := walToWire(w)
	if err != nil {
		return false, err
	}
	if err := r.needVersion(ctx, protocol.WALVersion, "wal-push"); err != nil {
		return false, err
	}
	err = r.retry(ctx, "PushWAL", func() error {
		already, err = r.pushOnce(ctx, f, rec)
		return err
	})
	if err != nil {
		err = fmt.Errorf("pushing WAL file %s to %s: %w", name, r.addr, err)
		if errors.Is(err, protocol.ErrConflict) {
			err = walRemoteError{err, chunkstore.ErrWALConflict}
		}
		return false, err
	}
	return already, nil
}

// walRemoteError is a repository mover's refusal of a WAL request that
// also matches the chunkstore error a local repository gives for it
// (is), without saying it twice: the mover's message says it already.
type walRemoteError struct{ err, is error }

func (e walRemoteError) Error() string   { return e.err.Error() }
func (e walRemoteError) Unwrap() []error { return []error{e.err, e.is} }

// pushOnce offers rec on a new archive stream and sends the chunks the
// mover asks for, read again from f. Errors that a new attempt cannot cure
// are permanentError.
func (r *RemoteRepo) pushOnce(ctx context.Context, f *os.File, rec *protocol.WALRecord) (already bool, err error) {
	rc := r.conns[0]
	conn, _, err := r.connection(ctx, rc)
	if err != nil {
		return false, err
	}
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		r.drop(rc, conn)
		return false, fmt.Errorf("opening archive stream: %w", err)
	}
	defer func() {
		st.CancelRead(quic.StreamErrorCode(protocol.CloseShutdown))
		st.CancelWrite(quic.StreamErrorCode(protocol.CloseShutdown))
	}()
	stop := context.AfterFunc(ctx, func() {
		st.CancelRead(quic.StreamErrorCode(protocol.CloseShutdown))
		st.CancelWrite(quic.StreamErrorCode(protocol.CloseShutdown))
	})
	defer stop()
	if err := protocol.WriteStreamKind(st, protocol.StreamArchive); err != nil {
		return false, err
	}
	if err := protocol.WriteMessage(st, &protocol.PushWAL{WALRecord: *rec}); err != nil {
		return false, err
	}
	rd := protocol.NewReader(st, protocol.MaxControlFrameSize)
	m, err := r.archiveReply(rd)
	if err != nil {
		return false, err
	}
	switch m := m.(type) {
	case *protocol.WALPushed:
		return m.Already, nil
	case *protocol.WALNeed:
		if err := r.sendChunks(st, f, rec, m.Chunks); err != nil {
			// The mover may have refused the push while we wrote: its
			// answer says why better than a reset stream. Or it took every
			// chunk, committed and closed the stream before our close of
			// it went through: then it answered WALPushed, and the push
			// is durable.
			switch m, rerr := r.archiveReply(rd); {
			case rerr != nil:
				if _, remote := errors.AsType[*protocol.RemoteError](rerr); remote {
					return false, rerr
				}
			case m.Type() == protocol.TypeWALPushed:
				return m.(*protocol.WALPushed).Already, nil
			default:
				return false, permanentError{fmt.Errorf("%w: %s while chunks were still due", protocol.ErrProtocol, m.Type())}
			}
			return false, err
		}
		m2, err := r.archiveReply(rd)
		if err != nil {
			return false, err
		}
		done, ok := m2.(*protocol.WALPushed)
		if !ok {
			return false, permanentError{fmt.Errorf("%w: expected WALPushed, got %s", protocol.ErrProtocol, m2.Type())}
		}
		return done.Already, nil
	}
	return false, permanentError{fmt.Errorf("%w: expected WALNeed or WALPushed, got %s", protocol.ErrProtocol, m.Type())}
}

// archiveReply reads the mover's next message on an archive stream; an
// Error comes back as its RemoteError, which is permanent unless retryable.
func (r *RemoteRepo) archiveReply(rd *protocol.Reader) (protocol.Message, error) {
	m, err := rd.Next()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("archive stream ended without an answer: %w", io.ErrUnexpectedEOF)
	}
	if err != nil {
		if errors.Is(err, protocol.ErrProtocol) || errors.Is(err, protocol.ErrTooLarge) {
			err = permanentError{err}
		}
		return nil, err
	}
	if e, ok := m.(*protocol.Error); ok {
		return nil, e.Err()
	}
	return m, nil
}

// sendChunks sends the chunks of rec at indexes need, read from f at their
// offsets and checked against their IDs (a file that changed since it was
// chunked is refused, not archived).
func (r *RemoteRepo) sendChunks(st *quic.Stream, f *os.File, rec *protocol.WALRecord, need []uint32) error {
	offsets := make([]int64, len(rec.Chunks))
	var off int64
	for i, c := range rec.Chunks {
		offsets[i] = off
		off += int64(c.Len)
	}
	var plain, packed, frame []byte
	for _, i := range need {
		if int(i) >= len(rec.Chunks) {
			return permanentError{fmt.Errorf("%w: the mover asked for chunk %d of %d", protocol.ErrProtocol, i, len(rec.Chunks))}
		}
		c := rec.Chunks[i]
		plain = slices.Grow(plain[:0], int(c.Len))[:c.Len]
		if _, err := f.ReadAt(plain, offsets[i]); err != nil {
			return permanentError{fmt.Errorf("reading WAL file: %w", err)}
		}
		if chunk.Sum(plain) != c.ID {
			return permanentError{fmt.Errorf("WAL file %s changed while it was pushed", rec.Name)}
		}
		var codec chunk.Codec
		packed, codec = chunk.Compress(packed[:0], plain, chunk.LevelFastest)
		frame = protocol.AppendFrame(frame[:0], &protocol.ChunkData{ID: c.ID, Codec: codec, PlainLen: c.Len, Payload: packed})
		if _, err := st.Write(frame); err != nil {
			return fmt.Errorf("writing chunk: %w", err)
		}
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("closing archive stream: %w", err)
	}
	return nil
}
