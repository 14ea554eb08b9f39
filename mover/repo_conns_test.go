package mover

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/protocol"
)

func TestRemoteRepoConnsDefaults(t *testing.T) {
	for _, tc := range []struct {
		name           string
		conns, streams int
		want           int
	}{
		{"default", 0, 0, defaultRepoConns},
		{"one", 1, 0, 1},
		{"capped", 100, 0, maxRepoConns},
		{"no more than streams", 3, 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := RemoteRepoOptions{Conns: tc.conns, Streams: tc.streams}.withDefaults()
			require.Equal(t, tc.want, o.Conns)
		})
	}
}

// serverConns returns the connections f's server holds from peer.
func serverConns(f *repoFixture, peer PeerID) []*quic.Conn {
	f.srv.mu.Lock()
	defer f.srv.mu.Unlock()
	var conns []*quic.Conn
	for c := range f.srv.peerConns[peer] {
		conns = append(conns, c)
	}
	return conns
}

// clientConns returns rr's live connections, one per repoConn (nil where
// there is none).
func clientConns(rr *RemoteRepo) []*quic.Conn {
	conns := make([]*quic.Conn, len(rr.conns))
	for i, rc := range rr.conns {
		rc.mu.Lock()
		conns[i] = rc.conn
		rc.mu.Unlock()
	}
	return conns
}

// getAll gets every chunk of refs, copies times over, concurrently, and
// checks each against its ID.
func getAll(t *testing.T, rr *RemoteRepo, refs []chunkstore.ChunkRef, copies int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	errs := make(chan error, len(refs)*copies)
	for range copies {
		for _, c := range refs {
			go func() {
				b, err := rr.Get(ctx, c.ID, nil)
				if err == nil && (len(b) != int(c.Len) || chunk.Sum(b) != c.ID) {
					err = errors.New("wrong content")
				}
				errs <- err
			}()
		}
	}
	for range len(refs) * copies {
		require.NoError(t, <-errs)
	}
}

func allRefs(f *repoFixture) []chunkstore.ChunkRef {
	var refs []chunkstore.ChunkRef
	for _, n := range f.tree {
		refs = append(refs, n.Chunks...)
	}
	return refs
}

// Gets go out over every one of Conns connections, each a connection of
// its own at the server, and come back verified.
func TestRepoGetsSpreadOverConns(t *testing.T) {
	f := startRepoServer(t, 2, nil)
	rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{Conns: 3, Streams: 6, Batch: 2})
	require.NoError(t, err)
	refs := allRefs(f)
	var total int64
	for _, c := range refs {
		total += int64(c.Len)
	}
	getAll(t, rr, refs, 2)

	conns := clientConns(rr)
	require.Len(t, conns, 3)
	for i, c := range conns {
		require.NotNil(t, c, "connection %d never dialled", i)
		require.NoError(t, c.Context().Err())
		// Every connection carried a share of the chunks: at least a
		// tenth of one copy's (each carries about two thirds of it).
		require.Greater(t, int64(c.ConnectionStats().BytesReceived), total/10, "connection %d", i)
	}
	require.Len(t, serverConns(f, rr.id.ID), 3)
	require.Greater(t, rr.RTT(), time.Duration(0))
}

// A connection the server closes while fetches are in flight on it is
// redialled, and its fetches retried, while the other connection keeps
// serving its own.
func TestRepoConnKilledMidRead(t *testing.T) {
	f := startRepoServer(t, 2, nil)
	clientLog := &testsupport.Buffer{}
	const streams = 8
	rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{Conns: 2, Streams: streams, Batch: 2, Log: slog.New(slog.NewTextHandler(clientLog, nil))})
	require.NoError(t, err)
	refs := allRefs(f)
	getAll(t, rr, refs, 1) // both connections dialled, every fetch stream open
	before := clientConns(rr)
	require.NotNil(t, before[0])
	require.NotNil(t, before[1])

	// Hold every chunk at the server until each of the fetch streams waits
	// for one: then both connections have fetches in flight.
	var (
		held    atomic.Int32
		all     = make(chan struct{})
		release = make(chan struct{})
	)
	hold := func(id chunk.ID, payload []byte) []byte {
		if held.Add(1) == streams {
			close(all)
		}
		<-release
		return payload
	}
	tamperFetch.Store(&hold)
	defer tamperFetch.Store(nil)

	done := make(chan struct{})
	go func() {
		defer close(done)
		getAll(t, rr, refs, 3)
	}()
	select {
	case <-all:
	case <-time.After(time.Minute):
		close(release)
		t.Fatalf("only %d of %d fetch streams reached the server", held.Load(), streams)
	}
	port := before[1].LocalAddr().(*net.UDPAddr).Port
	var killed bool
	for _, c := range serverConns(f, rr.id.ID) {
		if c.RemoteAddr().(*net.UDPAddr).Port == port {
			c.CloseWithError(quic.ApplicationErrorCode(protocol.CloseShutdown), "killed by the test")
			killed = true
		}
	}
	require.True(t, killed, "no server connection from port %d", port)
	received := before[0].ConnectionStats().BytesReceived
	close(release)
	<-done

	after := clientConns(rr)
	require.Same(t, before[0], after[0], "the first connection was dropped too")
	require.NoError(t, after[0].Context().Err())
	require.Greater(t, after[0].ConnectionStats().BytesReceived, received, "the first connection stopped serving")
	require.Error(t, before[1].Context().Err())
	require.NotNil(t, after[1], "the killed connection was not redialled")
	require.NotSame(t, before[1], after[1])
	require.Contains(t, clientLog.String(), "repository request interrupted; retrying")
}

// Close closes every connection, at both ends, and leaves no goroutine
// behind: neither the workers nor any connection's.
func TestRepoCloseClosesAllConns(t *testing.T) {
	f := startRepoServer(t, 1, nil)
	opt := goleak.IgnoreCurrent()
	rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{Conns: 3, Streams: 6, Batch: 1})
	require.NoError(t, err)
	getAll(t, rr, allRefs(f), 2)
	conns := clientConns(rr)
	require.Len(t, serverConns(f, rr.id.ID), 3)

	require.NoError(t, rr.Close())
	for i, c := range conns {
		require.NotNil(t, c, "connection %d never dialled", i)
		require.Error(t, c.Context().Err(), "connection %d still open", i)
	}
	// The server's trust watcher and its accept loop of framed
	// connections may start after the snapshot.
	goleak.VerifyNone(t, opt, goleak.IgnoreTopFunction("github.com/pgporter/pgporter/mover.(*Server).watchTrust"),
		goleak.IgnoreAnyFunction("github.com/pgporter/pgporter/mover.(*Server).accept"))
	require.Empty(t, serverConns(f, rr.id.ID))
}

// A server's limit of connections per peer still holds against a
// RemoteRepo that wants more: the extra connection is refused, and its
// fetches go over the first instead of failing.
func TestRepoConnsAboveServerLimit(t *testing.T) {
	f := backupFake(t, 1)
	f.testReceiver = startReceiver(t, ServerOptions{Repo: f.repoDir, MaxConnsPerPeer: 1})
	rr, err := dialTestRepo(t, f, PermRead, "", RemoteRepoOptions{Conns: 2, Streams: 4, Batch: 1})
	require.NoError(t, err)
	getAll(t, rr, allRefs(f), 2)
	require.Len(t, serverConns(f, rr.id.ID), 1)
	require.True(t, rr.conns[1].refused.Load())
	require.Nil(t, clientConns(rr)[1])
}
