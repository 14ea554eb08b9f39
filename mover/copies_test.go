package mover

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

func TestCopyTable(t *testing.T) {
	require.EqualValues(t, copyTableBytes, unsafe.Sizeof(copyTable{}), "the cost charged with each transfer")
	var tab copyTable
	a := chunk.Sum([]byte("a"))
	_, ok := tab.get(a)
	require.False(t, ok, "an empty table knows nothing")
	tab.add(a, loc{path: "x", off: 8, n: 5})
	l, ok := tab.get(a)
	require.True(t, ok)
	require.Equal(t, loc{path: "x", off: 8, n: 5}, l)

	// Another ID in a's slot replaces it: the table does not grow.
	b := a
	b[31]++
	tab.add(b, loc{path: "y", off: 0, n: 7})
	_, ok = tab.get(a)
	require.False(t, ok, "a was replaced")
	l, ok = tab.get(b)
	require.True(t, ok)
	require.Equal(t, "y", l.path)
}

// TestReceiverCopiesWrittenChunk: a chunk listed again after it was written
// is copied from DEST.partial, not asked for: what the copies table is for.
func TestReceiverCopiesWrittenChunk(t *testing.T) {
	r := startReceiver(t, ServerOptions{Reserve: 1})
	s := newRawPeer(t, r).dial()
	content := make([]byte, protocol.MinChunkMin)
	copy(content, "the same chunk twice")
	id := chunk.Sum(content)
	n := uint64(len(content))
	params := chunk.Params{Algorithm: chunk.AlgorithmGearV1, Min: protocol.MinChunkMin, Avg: 2 * protocol.MinChunkMin, Max: 4 * protocol.MinChunkMin}
	require.NoError(t, s.openWith("t-copies", filepath.Join(r.root, "copies"), params, 2, 2*n))
	offer := func(i uint32, path string) {
		require.NoError(t, s.cs.write(&protocol.FileHeader{Index: i, Path: path, Mode: 0o644, Size: n, NumChunks: 1}))
		require.NoError(t, s.cs.write(&protocol.FileChunks{Index: i, Chunks: []protocol.ChunkRef{{ID: id, Len: uint32(n)}}}))
		require.NoError(t, s.cs.write(&protocol.FileEnd{Index: i, Size: n, Hash: oneChunkListHash(content)}))
	}
	// next returns the next message that is not Progress.
	next := func() protocol.Message {
		for {
			m, err := s.cs.next()
			require.NoError(t, err, "log:\n%s", r.log)
			if _, ok := m.(*protocol.Progress); !ok {
				return m
			}
		}
	}

	offer(0, "a.dat")
	need, ok := next().(*protocol.Need)
	require.True(t, ok)
	require.Equal(t, &protocol.Need{Index: 0, Chunks: []uint32{0}, Decided: 1}, need)
	st, err := s.conn.OpenStreamSync(context.Background())
	require.NoError(t, err)
	_, err = st.Write([]byte{byte(protocol.StreamData)})
	require.NoError(t, err)
	require.NoError(t, protocol.WriteMessage(st, &protocol.ChunkData{ID: id, Codec: chunk.CodecNone, PlainLen: uint32(n), Payload: content}))
	require.NoError(t, st.Close())
	for { // until the chunk is durable, which it is after the copies table knows it
		m, err := s.cs.next()
		require.NoError(t, err, "log:\n%s", r.log)
		if p, ok := m.(*protocol.Progress); ok && p.DurableChunks == 1 {
			break
		}
	}

	offer(1, "b.dat")
	require.NoError(t, s.cs.write(&protocol.ManifestEnd{Files: 2}))
	need, ok = next().(*protocol.Need)
	require.True(t, ok)
	require.Empty(t, need.Chunks, "b.dat's chunk is not asked for")
	require.Equal(t, uint32(1), need.Decided)
	_, ok = next().(*protocol.NeedEnd)
	require.True(t, ok)
	require.NoError(t, s.cs.write(&protocol.SendDone{Chunks: 1}))
	_, ok = next().(*protocol.Committed)
	require.True(t, ok)
	got, err := os.ReadFile(filepath.Join(r.root, "copies", "b.dat"))
	require.NoError(t, err)
	require.Equal(t, content, got)
}
