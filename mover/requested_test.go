package mover

import (
	"context"
	"encoding/binary"
	"path/filepath"
	"sync"
	"testing"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// TestReceiverBoundsRequested guards against memory that grew with the data
// (issue 16, step 6.2 of docs/design/0005): the manifest runs ahead of the
// data, and the receiver used to ask for every chunk it listed as far as
// the positions budget allowed (256 MiB of positions: 100 GB of chunks),
// so that the positions waiting here and the sender's job queue grew with
// the part of the tree not yet sent. Now at most maxRequested bytes of
// chunks are asked for and not arrived at any time, whatever the size of
// the file, and each arrival lets it ask for more.
func TestReceiverBoundsRequested(t *testing.T) {
	const chunkLen = 256 << 10
	params := chunk.Params{Algorithm: chunk.AlgorithmGearV1, Min: chunkLen / 4, Avg: chunkLen / 2, Max: chunkLen}
	const window = maxRequested / chunkLen // chunks the receiver may wait for
	const n = 4 * window                   // the file: four times that
	const sent = window / 4                // chunks this test sends
	content := func(i uint32) []byte {
		b := make([]byte, chunkLen)
		binary.BigEndian.PutUint32(b, i)
		return b
	}
	refs := make([]protocol.ChunkRef, n)
	for i := range refs {
		refs[i] = protocol.ChunkRef{ID: chunk.Sum(content(uint32(i))), Len: chunkLen}
	}
	size := uint64(n) * chunkLen

	r := startReceiver(t, ServerOptions{Reserve: 1})
	s := newRawPeer(t, r).dial()
	require.NoError(t, s.openWith("t-ahead", filepath.Join(r.root, "ahead"), params, 1, size))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer s.conn.CloseWithError(0, "")
	wg.Go(func() { // the whole manifest at once; blocks if the receiver stops reading
		if s.cs.write(&protocol.FileHeader{Index: 0, Path: "a.dat", Mode: 0o644, Size: size, NumChunks: n}) != nil {
			return
		}
		_ = s.cs.write(&protocol.FileChunks{Index: 0, Chunks: refs})
	})
	needs := make(chan []uint32, n)
	wg.Go(func() {
		defer close(needs)
		for {
			m, err := s.cs.next()
			if err != nil {
				return
			}
			if need, ok := m.(*protocol.Need); ok {
				needs <- need.Chunks
			}
		}
	})
	var asked []uint32
	next := func() {
		t.Helper()
		c, ok := <-needs
		require.True(t, ok, "control stream ended; log:\n%s", r.log)
		asked = append(asked, c...)
	}
	for len(asked) < window {
		next()
	}
	require.Equal(t, window, len(asked), "the receiver asks for maxRequested bytes of a %d-chunkLen file, not more", n)

	st, err := s.conn.OpenStreamSync(context.Background())
	require.NoError(t, err)
	_, err = st.Write([]byte{byte(protocol.StreamData)})
	require.NoError(t, err)
	for k := range sent {
		c := content(asked[k])
		require.NoError(t, protocol.WriteMessage(st, &protocol.ChunkData{ID: chunk.Sum(c), Codec: chunk.CodecNone, PlainLen: chunkLen, Payload: c}))
		for len(asked) < window+k+1 {
			next()
		}
		require.LessOrEqual(t, len(asked), window+k+1, "each arrival makes room for one more chunkLen, no more")
	}
	for i, c := range asked {
		require.Equal(t, uint32(i), c, "chunks are asked for in order")
	}
}
