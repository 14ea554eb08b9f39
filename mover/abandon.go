package mover

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
)

// TooOldError reports a receiver whose protocol has no Abandon: what the
// transfer left there stays, for the next transfer to the same
// destination to take over. It matches protocol.ErrVersion.
type TooOldError struct {
	Addr     string
	Software string // as the peer's Hello named it, quoted
	Version  uint16 // the version the connection speaks
}

func (e *TooOldError) Error() string {
	return fmt.Sprintf("the target mover at %s is too old to remove partial directories (protocol %d); they stay, and the next export to the same destination takes them over", e.Addr, e.Version)
}

func (e *TooOldError) Unwrap() error { return protocol.ErrVersion }

// Abandon is the package's Abandon with this sender's identity.
func (s *Sender) Abandon(ctx context.Context, addr string, peer PeerID, tid, dest string) (protocol.AbandonState, error) {
	return Abandon(ctx, s.id, addr, peer, tid, dest)
}

// Abandon asks the mover at addr (which must present peer's identity) to
// remove what transfer tid, sent with identity id, left at dest
// (DEST.partial, the temporary directory of one being made, and their
// records). The receiver removes only what its journal records this
// identity made for tid; it never touches a committed dest. A receiver
// below protocol.AbandonVersion is a *TooOldError, and nothing is sent to
// it. It needs no sender state: a cancel may run while a send of the same
// home holds it.
func Abandon(ctx context.Context, id *Identity, addr string, peer PeerID, tid, dest string) (protocol.AbandonState, error) {
	conn, cs, err := dialMover(ctx, addr, id, peer, 0)
	if err != nil {
		return 0, err
	}
	defer conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseOK), "")
	if cs.version < protocol.AbandonVersion {
		return 0, &TooOldError{Addr: addr, Software: cs.peerSoftware, Version: cs.version}
	}
	stop := context.AfterFunc(ctx, func() { conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), "cancelled") })
	defer stop()
	if err := cs.write(&protocol.Abandon{TransferID: tid, Dest: dest}); err != nil {
		return 0, err
	}
	m, err := cs.next()
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("asking %s to remove %s.partial: %w", addr, dest, err)
	}
	r, ok := m.(*protocol.Abandoned)
	if !ok {
		return 0, fmt.Errorf("%w: expected Abandoned, got %s", protocol.ErrProtocol, m.Type())
	}
	return r.State, nil
}

// handleAbandon answers an Abandon. It reports whether the connection
// reads another message.
func (c *serverConn) handleAbandon(ctx context.Context, m *protocol.Abandon) bool {
	if c.cs.version < protocol.AbandonVersion {
		c.refuse(ctx, fmt.Errorf("%w: Abandon needs protocol %d", protocol.ErrProtocol, protocol.AbandonVersion))
		return false
	}
	st, err := c.s.abandon(ctx, c.peer, c.conn, m, c.log)
	if err != nil {
		c.log.Warn("abandon refused", "transfer", m.TransferID, "dest", m.Dest, "err", err)
		c.cs.sendError(err)
		return true
	}
	return c.cs.write(&protocol.Abandoned{State: st}) == nil
}

// errNotThisPeers refuses an Abandon of a DEST.partial that another peer's
// transfer made (or one whose record names no peer).
var errNotThisPeers = fmt.Errorf("%w: the partial directory was not made by this peer's transfer", protocol.ErrPermission)

// abandon removes what peer's transfer m.TransferID left at m.Dest, if the
// journal says that peer made it for that transfer and it is still the
// directory recorded. Nothing else is removed: not a committed Dest, not
// a DEST.partial another transfer took over, nor another peer's.
//
// While it runs it is the active transfer of m.TransferID on conn: an
// OpenTransfer of the same ID supersedes it as it supersedes a lost
// attempt (closing conn), after it is done.
func (s *Server) abandon(ctx context.Context, peer PeerID, conn *quic.Conn, m *protocol.Abandon, log *slog.Logger) (protocol.AbandonState, error) {
	if err := s.trust.Check(peer, PermSend); err != nil {
		return 0, err
	}
	if !validTransferID(m.TransferID) {
		return 0, fmt.Errorf("%w: bad transfer ID %q", protocol.ErrProtocol, m.TransferID)
	}
	if !filepath.IsAbs(m.Dest) || filepath.Clean(m.Dest) != m.Dest || strings.HasSuffix(m.Dest, ".partial") {
		return 0, fmt.Errorf("%w: destination %q must be a clean absolute path not ending in .partial", protocol.ErrBadPath, m.Dest)
	}
	rt, rel := s.rootFor(m.Dest)
	if rt == nil {
		return 0, fmt.Errorf("%w: destination %s is not inside any of this mover's roots", protocol.ErrPermission, m.Dest)
	}
	a := &activeTransfer{peer: peer, dest: m.Dest, conn: conn, cancel: func(error) {}, done: make(chan struct{}), ready: make(chan struct{})}
	if err := s.holdForAbandon(ctx, peer, m, a); err != nil {
		return 0, err
	}
	defer s.release(m.TransferID, a)

	v, ok, err := dbGet(s.db, keyDest(m.Dest))
	if err != nil {
		return 0, err
	}
	if !ok {
		return protocol.AbandonNothing, nil // committed, removed, or never opened here
	}
	rec := decodeDestRecord(v)
	if rec.Transfer != m.TransferID {
		return protocol.AbandonNothing, nil // another transfer took DEST.partial over
	}
	if rec.Peer != peer.String() {
		return 0, errNotThisPeers
	}
	if _, committing, err := s.commitRecord(m.TransferID); err != nil {
		return 0, err
	} else if committing {
		// DEST may already be the committed tree: the next open of the
		// transfer finishes the commit, which nothing here may undo.
		return 0, fmt.Errorf("%w: a commit of transfer %s into %s was interrupted; its next attempt finishes it", protocol.ErrConflict, m.TransferID, m.Dest)
	}
	partial := rel + ".partial"
	removed := false
	if rec.Temp != "" && removeTemp(rt, rec) {
		removed = true
	}
	if !rec.Pending {
		gone, err := removeRecordedPartial(rt, partial, &rec)
		if err != nil {
			return 0, err
		}
		removed = removed || gone
	}
	b := s.db.NewBatch()
	defer b.Close()
	p := keyPosPrefix(m.TransferID)
	b.DeleteRange(p, prefixEnd(p), nil)
	b.Delete(keyDest(m.Dest), nil)
	if mv, ok, _ := dbGet(s.db, keyMeta(m.TransferID)); ok {
		var meta transferMeta
		if json.Unmarshal(mv, &meta) == nil && meta.Dest == m.Dest {
			b.Delete(keyMeta(m.TransferID), nil)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return 0, err
	}
	log.Info("abandoned a partial destination", "transfer", m.TransferID, "dest", m.Dest, "removed", removed)
	if removed {
		return protocol.AbandonRemoved, nil
	}
	return protocol.AbandonNothing, nil
}

// holdForAbandon makes a the active transfer of m.TransferID, so that no
// attempt writes DEST.partial while it is removed. An attempt of the same
// peer's transfer still open (its connection lost without the receiver
// noticing yet) is superseded, as a reconnecting sender supersedes it;
// another peer's, one still being opened, or another Abandon, and another
// transfer writing m.Dest, are busy.
func (s *Server) holdForAbandon(ctx context.Context, peer PeerID, m *protocol.Abandon, a *activeTransfer) error {
	mine := func(old *activeTransfer) bool { return old.peer == peer && old.rcv != nil }
	return s.claim(ctx, m.TransferID, m.Dest, a, mine, "the transfer is abandoned")
}

// removeRecordedPartial removes DEST.partial (partial in rt) if it is the
// directory rec records. It is first renamed to a name of its own and
// checked again there, so that a directory swapped in between the check
// and the removal is put back, not removed. It reports whether it removed
// anything.
func removeRecordedPartial(rt *os.Root, partial string, rec *destRecord) (bool, error) {
	fi, err := rt.Lstat(partial)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if rec.Ino == 0 {
		return false, fmt.Errorf("%w: %s: no identity recorded for it", errNotOurs, partial)
	}
	if err := checkOwnDir(fi, rec); err != nil {
		return false, fmt.Errorf("%w: %s exists but %v; left as it is", errNotOurs, partial, err)
	}
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand: never fails on Linux
	trash := partial + "-" + hex.EncodeToString(b[:]) + ".abandoned"
	if err := rt.Rename(partial, trash); err != nil {
		return false, err
	}
	tfi, err := rt.Lstat(trash)
	if err != nil || checkOwnDir(tfi, rec) != nil {
		_ = rt.Rename(trash, partial) // not ours: put it back where it was
		return false, fmt.Errorf("%w: %s was replaced while being removed; left as it is", errNotOurs, partial)
	}
	if err := rt.RemoveAll(trash); err != nil {
		return false, err
	}
	return true, nil
}

// removeTemp removes the directory a creation of DEST.partial interrupted
// by a crash left under rec.Temp, if it is an empty directory of this
// mover's user (and the one recorded, if rec knows which): rmdir removes
// nothing else. Only the transfer's recorded temporary name is touched;
// an attempt that found one removed it before making another (openPartial).
func removeTemp(rt *os.Root, rec destRecord) bool {
	fi, err := rt.Lstat(rec.Temp)
	if err != nil || !fi.IsDir() {
		return false
	}
	dev, ino, uid, ok := fileIdentity(fi)
	if !ok || uid != uint64(os.Geteuid()) || (rec.Ino != 0 && (dev != rec.Dev || ino != rec.Ino)) {
		return false
	}
	return rt.Remove(rec.Temp) == nil
}
