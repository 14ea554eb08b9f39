package mover

import (
	"encoding/binary"
	"math"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// tinyParams are the smallest chunks a sender may announce: the most
// positions per byte a manifest can make the receiver track.
var tinyParams = chunk.Params{Algorithm: chunk.AlgorithmGearV1, Min: protocol.MinChunkMin, Avg: 2 * protocol.MinChunkMin, Max: 4 * protocol.MinChunkMin}

// TestHostileHugeManifest: a manifest a million entries long costs the
// receiver the positions of the chunks it asked for, at most maxRequested
// bytes of them, whatever the manifest's length (issue 16; it used to be
// in proportion, bounded by the free space over the minimum chunk size);
// manifests whose counts or sizes are above the limits are refused before
// they cost anything.
func TestHostileHugeManifest(t *testing.T) {
	r := startReceiver(t, ServerOptions{Reserve: 1})
	open := func(t *testing.T, s *rawSender, dest string, files, bytes uint64) error {
		t.Helper()
		require.NoError(t, s.cs.write(&protocol.OpenTransfer{TransferID: "t-huge", Dest: filepath.Join(r.root, dest), Params: tinyParams, Files: files, Bytes: bytes}))
		_, err := s.cs.next()
		return err
	}

	t.Run("more files than the limit", func(t *testing.T) {
		err := open(t, dialRaw(t, r), "many", maxFiles+1, 1)
		require.ErrorIs(t, err, protocol.ErrTooLarge)
		require.ErrorContains(t, err, "files announced")
	})
	t.Run("growing tree larger than the free space", func(t *testing.T) {
		s := dialRaw(t, r)
		require.NoError(t, open(t, s, "growing", 0, 0))
		require.NoError(t, s.cs.write(&protocol.FileHeader{Index: 0, Path: "a.dat", Mode: 0o644, Size: math.MaxUint64 / 2}))
		err := s.nextError(t)
		require.ErrorIs(t, err, protocol.ErrNoSpace)
		require.ErrorContains(t, err, "files listed so far need")
	})

	t.Run("a million chunks", func(t *testing.T) {
		n := 1 << 20
		if raceEnabled {
			n = 1 << 16 // the same bound per entry, at a sixteenth of the cost (48 s under the race detector)
		}
		want := min(n, maxRequested/tinyParams.Min) // what the receiver asks for before data arrives
		s := dialRaw(t, r)
		size := uint64(n) * uint64(tinyParams.Min)
		require.NoError(t, open(t, s, "million", 1, size))
		needs := make(chan int, 1)
		go func() { // owned: ends when the connection does
			total := 0
			for total < want {
				m, err := s.cs.next()
				if err != nil {
					break
				}
				if need, ok := m.(*protocol.Need); ok {
					total += len(need.Chunks)
				}
			}
			needs <- total
		}()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		written := make(chan struct{})
		go func() { // owned: blocks once the receiver stops reading, ends with the connection
			defer close(written)
			if s.cs.write(&protocol.FileHeader{Index: 0, Path: "a.dat", Mode: 0o644, Size: size, NumChunks: uint32(n)}) != nil {
				return
			}
			var buf [4]byte
			for first := 0; first < n; first += protocol.MaxChunkRefs {
				refs := make([]protocol.ChunkRef, protocol.MaxChunkRefs)
				for i := range refs {
					binary.BigEndian.PutUint32(buf[:], uint32(first+i))
					refs[i] = protocol.ChunkRef{ID: chunk.Sum(buf[:]), Len: uint32(tinyParams.Min)}
				}
				if s.cs.write(&protocol.FileChunks{Index: 0, First: uint32(first), Chunks: refs}) != nil {
					return
				}
			}
		}()
		require.Equal(t, want, <-needs, "the receiver asked for maxRequested bytes of chunks")
		runtime.GC()
		runtime.ReadMemStats(&after)
		grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
		t.Logf("receiver heap for a manifest of %d chunk entries, %d asked for: %s (peak heap %s)",
			n, want, bytesize.Format(grown), bytesize.Format(int64(after.HeapSys)))
		// The positions asked for, at most 512 bytes each; what the
		// receiver's QUIC may hold of the control stream unread, once it
		// stops reading (the connection window, which grows on loopback up
		// to windowFloor); and the control frames being encoded and decoded
		// on the two sides of this one process (2.4 MiB of refs and 2.4 MiB
		// of frame each). A million positions took about 200 MiB. (With 16
		// MiB for the last two, 25.0 MiB failed in CI: the window grew.)
		require.Less(t, grown, int64(want)*512+windowFloor+10<<20, "memory for the manifest")
		s.conn.CloseWithError(0, "")
		<-written
	})
}
