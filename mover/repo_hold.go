package mover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/protocol"
)

// repoHold keeps the served repository open, and so its shared lock held,
// while peers use it: from a connection's first repository request to the
// connection's end, and repoLinger after the last one. Between uses the
// lock is released, so that a forget and prune (which need the exclusive
// lock) run on a repository host whose mover is idle. A request that
// arrives while a prune holds the repository waits up to repoLockWait,
// then is answered busy (which the client retries).
type repoHold struct {
	dir    string
	ctx    context.Context // what the repository is opened under: its passphrase file, no deadline
	log    *slog.Logger
	linger time.Duration
	wait   time.Duration

	mu     sync.Mutex
	r      *chunkstore.Repo // nil while closed
	users  int
	timer  *time.Timer // closes r repoLinger after the last release
	closed bool
}

// How long the repository stays open after its last user (by default),
// and how long a request waits for a prune to let go of it.
const (
	repoLinger   = 10 * time.Second
	repoLockWait = 10 * time.Second
)

// errServerClosed answers a repository request that arrives as the mover
// shuts down.
var errServerClosed = fmt.Errorf("%w: the mover is shutting down", protocol.ErrBusy)

func (h *repoHold) acquire() (*chunkstore.Repo, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errServerClosed
	}
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	if h.r == nil {
		// Its writes are WAL pushes (wal_server.go): their flushes stay
		// short, as wal-push's own, bigger merges being left to backups.
		// Under h.mu, for every connection: bounded by the open's own
		// retries (an object store's), not by one connection's context.
		r, err := chunkstore.OpenRepoWith(h.ctx, h.dir, chunkstore.RepoOptions{
			Store: chunkstore.LocalOptions{Logger: h.log, MaxMerge: walPushMaxMerge}, LockWait: h.wait})
		if errors.Is(err, chunkstore.ErrRepoLocked) {
			return nil, fmt.Errorf("%w: %w", protocol.ErrBusy, err)
		}
		if err != nil {
			return nil, fmt.Errorf("repository %s: %w", h.dir, err)
		}
		h.r = r
	}
	h.users++
	return h.r, nil
}

func (h *repoHold) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.users--
	if h.users > 0 || h.r == nil || h.closed {
		return
	}
	r := h.r
	h.timer = time.AfterFunc(h.linger, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.users == 0 && h.r == r {
			h.r, h.timer = nil, nil
			if err := r.Close(); err != nil {
				h.log.Warn("closing the repository", "err", err)
			}
		}
	})
}

// close closes the repository for good; users still holding it keep their
// handle until the server's connections end.
func (h *repoHold) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	if h.r != nil {
		h.r.Close()
		h.r = nil
	}
}

// connRepo is one connection's use of the repository: opened at its
// first request, released when the connection ends.
type connRepo struct {
	hold *repoHold // nil: the mover serves no repository

	mu   sync.Mutex
	r    *chunkstore.Repo
	done bool
}

// get returns the repository, holding it for the connection.
func (c *connRepo) get() (*chunkstore.Repo, error) {
	if c.hold == nil {
		return nil, errNoRepo
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return nil, errServerClosed
	}
	if c.r == nil {
		r, err := c.hold.acquire()
		if err != nil {
			return nil, err
		}
		c.r = r
	}
	return c.r, nil
}

// release lets the repository go, once the connection's work is over.
func (c *connRepo) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = true
	if c.r != nil {
		c.r = nil
		c.hold.release()
	}
}
