package mover

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// TestPeersSeen: a connection that completes its Hello records each side's
// build in the other's home, for 'mover peers' to show.
func TestPeersSeen(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	c := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: c.id.ID, Name: "client", Perms: PermSend}))
	require.Empty(t, LoadPeersSeen(r.home))
	require.Empty(t, LoadPeersSeen(c.home))

	before := time.Now().Add(-time.Second)
	conn, _, err := dialMover(t.Context(), r.addr, c.id, r.id.ID, 0)
	require.NoError(t, err)
	defer conn.CloseWithError(quic.ApplicationErrorCode(0), "")

	got := LoadPeersSeen(c.home)[r.id.ID]
	require.Equal(t, Software, got.Software, "the client records the server")
	require.True(t, got.Seen.After(before), "seen %v", got.Seen)
	require.Equal(t, strings.TrimPrefix(Software, "pgporter "), got.Version())
	// The server records once its own Hello is written, which the client
	// may see first.
	require.Eventually(t, func() bool { return LoadPeersSeen(r.home)[c.id.ID].Software == Software }, 10*time.Second, 5*time.Millisecond, "the server records the client")
}

// TestPeersSeenFile: what a peer says is made printable and cut; a process
// writes a peer's record once, not per connection; a damaged file is empty.
func TestPeersSeenFile(t *testing.T) {
	home := t.TempDir()
	peer := newTLSTestMover(t).id.ID
	hostile := "evil\x1b[2J\xff" + strings.Repeat("x", 500)
	require.NoError(t, notePeerSeen(home, peer, peerSoftware(hostile)))
	got := LoadPeersSeen(home)[peer]
	require.LessOrEqual(t, len(got.Software), 64)
	require.True(t, strings.HasPrefix(got.Software, "evil?[2J?x"), got.Software)
	require.Equal(t, -1, strings.IndexFunc(got.Software, func(r rune) bool { return !unicode.IsPrint(r) }))

	path := filepath.Join(home, peersSeenFileName)
	require.NoError(t, os.Remove(path))
	require.NoError(t, notePeerSeen(home, peer, peerSoftware(hostile)))
	require.NoFileExists(t, path, "the same software again within the refresh interval writes nothing")
	require.NoError(t, notePeerSeen(home, peer, strconv.Quote("pgporter 9.9.9 (abc)")))
	require.Equal(t, "9.9.9 (abc)", LoadPeersSeen(home)[peer].Version(), "another software is written at once")

	require.NoError(t, os.WriteFile(path, []byte("{not json"), 0o600))
	require.Empty(t, LoadPeersSeen(home))
	require.Empty(t, LoadPeersSeen(filepath.Join(home, "nowhere")))
}
