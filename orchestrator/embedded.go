package orchestrator

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/pgporter/pgporter/mover"
)

// targetMover is where a session's transfers go: how the staging side
// reaches the target mover, and the sender it uses. startEmbedded runs the
// target mover in-process on loopback QUIC, each side with its own
// identity under HOME/embedded: the same code and the same wire as across
// hosts. For a target on another host (openRemoteTarget), only the sender
// is set (srv is nil).
type targetMover struct {
	srv    *mover.Server
	sender *mover.Sender
	addr   string
	peer   mover.PeerID
	cancel context.CancelFunc
	done   chan error
}

func startEmbedded(home, root string, log *slog.Logger) (*targetMover, error) {
	stagingHome := filepath.Join(home, "embedded", "staging")
	targetHome := filepath.Join(home, "embedded", "target")
	staging, _, err := mover.InitIdentity(stagingHome)
	if err != nil {
		return nil, fmt.Errorf("embedded staging mover: %w", err)
	}
	if _, _, err := mover.InitIdentity(targetHome); err != nil {
		return nil, fmt.Errorf("embedded target mover: %w", err)
	}
	trust, err := mover.OpenTrust(targetHome)
	if err != nil {
		return nil, err
	}
	if trust.Check(staging.ID, mover.PermSend) != nil {
		if err := trust.Trust(mover.TrustedPeer{ID: staging.ID, Name: "embedded staging", Perms: mover.PermSend, Added: time.Now().UTC()}); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", root, err)
	}
	srv, err := mover.NewServer(mover.ServerOptions{Home: targetHome, Listen: "127.0.0.1:0", Roots: []string{root}, Log: log.With("role", "target")})
	if err != nil {
		return nil, fmt.Errorf("embedded target mover: %w", err)
	}
	sender, err := mover.NewSender(stagingHome, log.With("role", "staging"))
	if err != nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = srv.Serve(ctx) // releases the server
		return nil, fmt.Errorf("embedded staging mover: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &targetMover{srv: srv, sender: sender, addr: srv.Addr().String(), peer: srv.ID(), cancel: cancel, done: make(chan error, 1)}
	go func() { e.done <- srv.Serve(ctx) }()
	return e, nil
}

// openRemoteTarget is the staging side of a target mover on another host
// (spec is ADDR#PEER_ID), sending with the identity under home.
func openRemoteTarget(home, spec string, log *slog.Logger) (*targetMover, error) {
	addr, peer, err := mover.ParsePeerAddr(spec)
	if err != nil {
		return nil, err
	}
	sender, err := mover.NewSender(home, log.With("role", "staging"))
	if err != nil {
		return nil, fmt.Errorf("sending to %s: %w", spec, err)
	}
	return &targetMover{sender: sender, addr: addr, peer: peer}, nil
}

func (e *targetMover) close() {
	if e.srv != nil {
		e.cancel()
		<-e.done
	}
	e.sender.Close()
}
