package mover

import (
	"context"
	"encoding/binary"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// TestHostileOversizeFrames: a length header above the limit is refused
// before anything is allocated for it, on the control and data streams; a
// chunk above the transfer's own maximum is refused too.
func TestHostileOversizeFrames(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	huge := func(typ protocol.Type) []byte {
		b := binary.BigEndian.AppendUint32(nil, 1<<30)
		return append(b, byte(typ))
	}
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	t.Run("control", func(t *testing.T) {
		s := dialRaw(t, r)
		s.open(t, filepath.Join(r.root, "big-ctl"), 1, 5)
		_, err := s.cs.rw.Write(huge(protocol.TypeFileHeader))
		require.NoError(t, err)
		err = s.nextError(t)
		require.ErrorIs(t, err, protocol.ErrTooLarge)
		require.ErrorContains(t, err, "above the limit")
	})
	t.Run("data", func(t *testing.T) {
		s := dialRaw(t, r)
		s.open(t, filepath.Join(r.root, "big-data"), 1, 5)
		s.offer(t, "a.dat", []byte("hello"))
		st, err := s.conn.OpenStreamSync(context.Background())
		require.NoError(t, err)
		_, err = st.Write(append([]byte{byte(protocol.StreamData)}, huge(protocol.TypeChunkData)...))
		require.NoError(t, err)
		err = s.nextError(t)
		require.ErrorIs(t, err, protocol.ErrTooLarge)
	})
	t.Run("chunk above the transfer's max", func(t *testing.T) {
		s := dialRaw(t, r)
		s.open(t, filepath.Join(r.root, "big-chunk"), 1, 5)
		s.offer(t, "a.dat", []byte("hello"))
		big := make([]byte, chunk.DefaultParams.Max+1)
		st, err := s.conn.OpenStreamSync(context.Background())
		require.NoError(t, err)
		_, err = st.Write([]byte{byte(protocol.StreamData)})
		require.NoError(t, err)
		require.NoError(t, protocol.WriteMessage(st, &protocol.ChunkData{ID: chunk.Sum(big), Codec: chunk.CodecNone, PlainLen: uint32(len(big)), Payload: big}))
		err = s.nextError(t)
		require.ErrorIs(t, err, protocol.ErrProtocol)
		require.ErrorContains(t, err, "exceeds the transfer's max")
	})

	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(256<<20), "the 1 GiB frames were never allocated")
	require.NoDirExists(t, filepath.Join(r.root, "big-ctl"))
}

// TestHostileBadHashes: a file hash that does not match the chunks, and a
// chunk nobody asked for, fail the transfer; nothing is committed.
func TestHostileBadHashes(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	content := []byte("the content of the one file")
	// Protocol 3: FileEnd's hash is the chunk list's, so the receiver
	// checks it against the refs it was given before any data comes, and
	// the commit can trust the positions it checks against it.
	t.Run("file hash", func(t *testing.T) {
		for name, hash := range map[string][32]byte{
			"content hash": [32]byte(chunk.Sum(content)), // what protocol 2 sent
			"another list": oneChunkListHash([]byte("something else")),
			"same list, +1B": func() [32]byte {
				l := chunk.NewFileListHash(uint64(len(content)) + 1)
				l.Add(chunk.Sum(content), uint32(len(content)))
				return l.Sum()
			}(),
		} {
			t.Run(name, func(t *testing.T) {
				s := dialRaw(t, r)
				dest := filepath.Join(r.root, "badhash")
				s.open(t, dest, 1, uint64(len(content)))
				id := chunk.Sum(content)
				require.NoError(t, s.cs.write(&protocol.FileHeader{Index: 0, Path: "a.dat", Mode: 0o644, Size: uint64(len(content)), NumChunks: 1}))
				require.NoError(t, s.cs.write(&protocol.FileChunks{Index: 0, Chunks: []protocol.ChunkRef{{ID: id, Len: uint32(len(content))}}}))
				require.NoError(t, s.cs.write(&protocol.FileEnd{Index: 0, Size: uint64(len(content)), Hash: hash}))
				err := s.nextError(t)
				require.ErrorIs(t, err, protocol.ErrProtocol)
				require.ErrorContains(t, err, "chunk-list hash")
				require.NoDirExists(t, dest)
			})
		}
	})
	t.Run("chunk not asked for", func(t *testing.T) {
		s := dialRaw(t, r)
		dest := filepath.Join(r.root, "unasked")
		s.open(t, dest, 1, uint64(len(content)))
		s.offer(t, "a.dat", content)
		other := []byte("a chunk nobody asked for")
		st, err := s.conn.OpenStreamSync(context.Background())
		require.NoError(t, err)
		_, err = st.Write([]byte{byte(protocol.StreamData)})
		require.NoError(t, err)
		require.NoError(t, protocol.WriteMessage(st, &protocol.ChunkData{ID: chunk.Sum(other), Codec: chunk.CodecNone, PlainLen: uint32(len(other)), Payload: other}))
		err = s.nextError(t)
		require.ErrorIs(t, err, protocol.ErrProtocol)
		require.ErrorContains(t, err, "not asked for")
		require.NoDirExists(t, dest)
	})
}

// TestHostileUnderPermitted: each request needs its own permission; a peer
// holding another one is refused with the permission code and told which
// one it lacks.
func TestHostileUnderPermitted(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	dial := func(t *testing.T, perms Perm) *rawSender {
		m := newTLSTestMover(t)
		require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "weak", Perms: perms, Added: time.Now()}))
		conn, cs, err := dialMover(context.Background(), r.addr, m.id, r.id.ID, 0)
		require.NoError(t, err)
		t.Cleanup(func() { conn.CloseWithError(0, "") })
		return &rawSender{conn: conn, cs: cs}
	}
	for _, tc := range []struct {
		name  string
		perms Perm
		req   protocol.Message
		lacks string
	}{
		{"read peer sends", PermRead, &protocol.OpenTransfer{TransferID: "t-weak", Dest: filepath.Join(r.root, "w"), Params: chunk.DefaultParams, Files: 1, Bytes: 1}, "send"},
		{"read peer asks for space", PermRead, &protocol.SpaceQuery{Path: r.root}, "orchestrate"},
		{"send peer lists restore points", PermSend, &protocol.ListPoints{}, "read"},
		{"send peer runs a job", PermSend | PermRead, &protocol.RunJob{Kind: protocol.JobListPublications, Version: protocol.JobVersion}, "orchestrate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := dial(t, tc.perms)
			require.NoError(t, s.cs.write(tc.req))
			_, err := s.cs.next()
			require.ErrorIs(t, err, protocol.ErrPermission)
			require.ErrorContains(t, err, "lacks permission "+tc.lacks)
		})
	}
	require.NoDirExists(t, filepath.Join(r.root, "w.partial"))

	t.Run("send peer fetches chunks", func(t *testing.T) {
		s := dial(t, PermSend)
		st, err := s.conn.OpenStreamSync(context.Background())
		require.NoError(t, err)
		_, err = st.Write([]byte{byte(protocol.StreamFetch)})
		require.NoError(t, err)
		require.NoError(t, protocol.WriteMessage(st, &protocol.GetChunks{IDs: []chunk.ID{chunk.Sum([]byte("x"))}}))
		m, err := protocol.NewReader(st, 0).Next()
		require.NoError(t, err)
		e, ok := m.(*protocol.Error)
		require.True(t, ok, "got %T", m)
		require.ErrorIs(t, e.Err(), protocol.ErrPermission)
	})
	t.Run("untrusted peer", func(t *testing.T) {
		m := newTLSTestMover(t)
		_, _, err := dialMover(context.Background(), r.addr, m.id, r.id.ID, 0)
		require.ErrorIs(t, err, ErrUntrusted)
	})
}
