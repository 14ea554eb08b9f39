package mover

import (
	"context"
	"fmt"

	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
)

// Space asks the mover at addr (which must present peer's identity) for the
// free and total bytes of the filesystem that holds path, which must be
// inside one of its roots.
func (s *Sender) Space(ctx context.Context, addr string, peer PeerID, path string) (free, total uint64, err error) {
	conn, cs, err := dialMover(ctx, addr, s.id, peer, 0)
	if err != nil {
		return 0, 0, err
	}
	defer conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseOK), "")
	stop := context.AfterFunc(ctx, func() { conn.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), "cancelled") })
	defer stop()
	if err := cs.write(&protocol.SpaceQuery{Path: path}); err != nil {
		return 0, 0, err
	}
	m, err := cs.next()
	if err != nil {
		return 0, 0, fmt.Errorf("asking %s for free space: %w", addr, err)
	}
	r, ok := m.(*protocol.SpaceReply)
	if !ok {
		return 0, 0, fmt.Errorf("%w: expected SpaceReply, got %s", protocol.ErrProtocol, m.Type())
	}
	return r.Free, r.Total, nil
}

// ID is the sender's own peer ID.
func (s *Sender) ID() PeerID { return s.id.ID }
