package mover

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// rawPeer dials r as one peer trusted with send, for connections of its own.
type rawPeer struct {
	t  *testing.T
	r  *testReceiver
	id *Identity
}

func newRawPeer(t *testing.T, r *testReceiver) *rawPeer {
	t.Helper()
	m := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "hog", Perms: PermSend, Added: time.Now()}))
	return &rawPeer{t: t, r: r, id: m.id}
}

func (p *rawPeer) dial() *rawSender {
	p.t.Helper()
	conn, cs, err := dialMover(context.Background(), p.r.addr, p.id, p.r.id.ID, 0)
	require.NoError(p.t, err)
	p.t.Cleanup(func() { conn.CloseWithError(0, "") })
	return &rawSender{conn: conn, cs: cs}
}

// openWith opens a transfer and returns the receiver's answer (an error for
// a refusal).
func (s *rawSender) openWith(tid, dest string, params chunk.Params, files, bytes uint64) error {
	if err := s.cs.write(&protocol.OpenTransfer{TransferID: tid, Dest: dest, Params: params, Files: files, Bytes: bytes}); err != nil {
		return err
	}
	m, err := s.cs.next()
	if err != nil {
		return err
	}
	if _, ok := m.(*protocol.TransferState); !ok {
		return fmt.Errorf("got %s", m.Type())
	}
	return nil
}

func heapNow() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// chunkContent is chunk i of the hostile manifests: MinChunkMin bytes.
func chunkContent(i int) []byte {
	b := make([]byte, protocol.MinChunkMin)
	binary.BigEndian.PutUint64(b, uint64(i))
	return b
}

// TestHostileMemoryBudget guards against issue 15's memory findings: a peer
// trying each of them stays within its memory budget, measured in the
// mover's heap (runtime.ReadMemStats, in-process) and in the bytes its
// budgets hold.
//   - Tiny chunk parameters (64/256/512 made 1M positions cost 203 MiB) are
//     refused below protocol.MinChunkMin.
//   - A manifest of many chunks whose data never comes: the receiver asks
//     for chunks only as far as the positions budget allows, then stops
//     reading the manifest until data arrives (backpressure, not refusal:
//     sending data lets it go on).
//   - Data streams that each send only a large frame header (48 of them
//     raised the heap from 1 to 781 MiB): streams above
//     protocol.MaxDataStreams are refused, each stream waits for its
//     buffers' budget, and frame buffers grow only as bytes arrive.
//   - Open transfers beyond the transfers budget are refused as busy.
func TestHostileMemoryBudget(t *testing.T) {
	params := chunk.Params{Algorithm: chunk.AlgorithmGearV1, Min: protocol.MinChunkMin, Avg: 2 * protocol.MinChunkMin, Max: 4 * protocol.MinChunkMin}

	t.Run("tiny chunk parameters", func(t *testing.T) {
		r := startReceiver(t, ServerOptions{Reserve: 1})
		s := newRawPeer(t, r).dial()
		err := s.openWith("t-tiny", filepath.Join(r.root, "tiny"), chunk.Params{Algorithm: chunk.AlgorithmGearV1, Min: 64, Avg: 256, Max: 512}, 1, 1<<20)
		require.ErrorIs(t, err, protocol.ErrProtocol)
		require.ErrorContains(t, err, "chunk minimum 64 is below 4096")
	})

	t.Run("data streams with headers only", func(t *testing.T) {
		big := chunk.Params{Algorithm: chunk.AlgorithmGearV1, Min: 1 << 20, Avg: 4 << 20, Max: chunk.MaxChunkCeil}
		cost := streamCost(big.Max)
		const budgeted = 20 // streams whose buffers fit the budget; the other 12 wait
		peerMemory := budgeted*cost*8/3 + 8
		r := startReceiver(t, ServerOptions{Reserve: 1, PeerMemory: peerMemory, TotalMemory: 2 * peerMemory})
		p := newRawPeer(t, r)
		s := p.dial()
		require.NoError(t, s.openWith("t-streams", filepath.Join(r.root, "streams"), big, 1, 64<<20))
		s.offer(t, "a.dat", []byte("hello"))
		before := heapNow()
		// Each stream announces a frame as large as the transfer allows and
		// sends 1000 bytes of it.
		hdr := binary.BigEndian.AppendUint32(nil, uint32(big.Max+protocol.DataFrameOverhead))
		hdr = append([]byte{byte(protocol.StreamData)}, append(hdr, byte(protocol.TypeChunkData))...)
		hdr = append(hdr, make([]byte, 1000)...)
		const streams = 48
		refused := make(chan bool, streams)
		var wg sync.WaitGroup
		defer wg.Wait()
		defer s.conn.CloseWithError(0, "")
		for range streams {
			st, err := s.conn.OpenStreamSync(context.Background())
			require.NoError(t, err)
			_, err = st.Write(hdr)
			require.NoError(t, err)
			wg.Go(func() {
				_, err := st.Read(make([]byte, 1))
				var se *quic.StreamError
				refused <- errors.As(err, &se) && se.ErrorCode == quic.StreamErrorCode(protocol.CloseRefused)
			})
		}
		n := 0
		for n < streams-protocol.MaxDataStreams {
			if <-refused {
				n++
			}
		}
		require.Eventually(t, func() bool {
			held, _ := r.srv.streams.held(p.id.ID)
			return held == budgeted*cost
		}, 10*time.Second, 10*time.Millisecond, "20 streams hold their buffers' budget, the others wait")
		grown := int64(heapNow()) - int64(before)
		t.Logf("%d data streams announcing %s frames: %d refused, streams budget %s held, heap grew %s",
			streams, bytesize.Format(int64(big.Max)), n, bytesize.Format(budgeted*cost), bytesize.Format(grown))
		// Allocating each announced frame would take 20 x 8 MiB.
		require.Less(t, grown, int64(32<<20), "no frame buffer allocated ahead of its bytes")
		s.conn.CloseWithError(0, "")
		require.Eventually(t, func() bool {
			held, all := r.srv.streams.held(p.id.ID)
			return held == 0 && all == 0
		}, 10*time.Second, 10*time.Millisecond, "closed streams return their budget")
	})

	t.Run("positions without data", func(t *testing.T) {
		// Positions: 2 MiB, about 13000 waiting positions, 51 MiB of 4 KiB
		// chunks: the budget binds before maxRequested does.
		const peerMemory = 4 << 20
		r := startReceiver(t, ServerOptions{Reserve: 1, PeerMemory: peerMemory})
		p := newRawPeer(t, r)
		s := p.dial()
		const n = 1 << 20 // the 1M positions that cost 203 MiB
		size := uint64(n) * protocol.MinChunkMin
		require.NoError(t, s.openWith("t-hog", filepath.Join(r.root, "hog"), params, 1, size))
		refs := make([]protocol.ChunkRef, n)
		for i := range refs {
			// The first ones are real chunks, sent below; hashing all 4 GiB
			// would only slow the test.
			if i < 1<<15 {
				refs[i] = protocol.ChunkRef{ID: chunk.Sum(chunkContent(i)), Len: protocol.MinChunkMin}
			} else {
				refs[i] = protocol.ChunkRef{ID: chunk.Sum(binary.BigEndian.AppendUint64(nil, uint64(i))), Len: protocol.MinChunkMin}
			}
		}
		before := heapNow()
		var wg sync.WaitGroup
		defer wg.Wait()
		defer s.conn.CloseWithError(0, "")
		wg.Go(func() { // blocks once the receiver stops reading; ends with the connection
			if s.cs.write(&protocol.FileHeader{Index: 0, Path: "a.dat", Mode: 0o644, Size: size, NumChunks: n}) != nil {
				return
			}
			for first := 0; first < n; first += protocol.MaxChunkRefs {
				if s.cs.write(&protocol.FileChunks{Index: 0, First: uint32(first), Chunks: refs[first : first+protocol.MaxChunkRefs]}) != nil {
					return
				}
			}
		})
		var (
			mu     sync.Mutex // guards needed
			needed []uint32
		)
		wg.Go(func() {
			for {
				m, err := s.cs.next()
				if err != nil {
					return
				}
				if need, ok := m.(*protocol.Need); ok {
					mu.Lock()
					needed = append(needed, need.Chunks...)
					mu.Unlock()
				}
			}
		})
		capacity := int64(peerMemory / 2)
		// The receiver fills its positions budget and waits.
		require.Eventually(t, func() bool {
			held, _ := r.srv.positions.held(p.id.ID)
			return held > capacity-posBatch*posCost
		}, 30*time.Second, 10*time.Millisecond)
		held, _ := r.srv.positions.held(p.id.ID)
		grown := int64(heapNow()) - int64(before)
		mu.Lock()
		asked := len(needed)
		toSend := slices.Clone(needed) // the reader goroutine appends to needed meanwhile
		mu.Unlock()
		t.Logf("%d positions offered: %d asked for, positions budget %s of %s held, heap grew %s",
			n, asked, bytesize.Format(held), bytesize.Format(capacity), bytesize.Format(grown))
		require.LessOrEqual(t, held, capacity)
		require.LessOrEqual(t, int64(asked), capacity/posCost, "the receiver stopped asking at its budget")
		// Besides the budget: the control frame being decoded and its
		// message (2.4 MiB each), the test's own frame being written, and
		// QUIC's buffers of the manifest it no longer reads, which the
		// connection window bounds (windowFloor, 16 MiB, whatever the
		// budget). Without the budget the positions alone would take
		// n*posCost = 160 MiB.
		require.Less(t, grown, capacity+windowFloor+24<<20, "heap within the budget and fixed per-connection buffers")

		// Data lets it go on: send the chunks asked for so far.
		st, err := s.conn.OpenStreamSync(context.Background())
		require.NoError(t, err)
		_, err = st.Write([]byte{byte(protocol.StreamData)})
		require.NoError(t, err)
		for _, i := range toSend {
			c := chunkContent(int(i))
			require.NoError(t, protocol.WriteMessage(st, &protocol.ChunkData{ID: chunk.Sum(c), Codec: chunk.CodecNone, PlainLen: uint32(len(c)), Payload: c}))
		}
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(needed) > asked+posBatch
		}, 30*time.Second, 10*time.Millisecond, "the receiver asks for more as data arrives; log:\n%s", r.log)
		held, _ = r.srv.positions.held(p.id.ID)
		require.LessOrEqual(t, held, capacity)
		s.conn.CloseWithError(0, "")
		require.Eventually(t, func() bool {
			held, all := r.srv.positions.held(p.id.ID)
			return held == 0 && all == 0
		}, 30*time.Second, 10*time.Millisecond, "a closed transfer returns its budget (its last sync may wait on a loaded disk)")
	})

	t.Run("transfers", func(t *testing.T) {
		const peerMemory = 8 << 20 // transfers: 1 MiB, 4 open transfers
		r := startReceiver(t, ServerOptions{Reserve: 1, PeerMemory: peerMemory})
		p := newRawPeer(t, r)
		limit := int(peerMemory / 8 / transferCost)
		for i := range limit {
			require.NoError(t, p.dial().openWith(fmt.Sprintf("t-open-%d", i), filepath.Join(r.root, fmt.Sprintf("open-%d", i)), params, 1, 1<<20))
		}
		err := p.dial().openWith("t-one-more", filepath.Join(r.root, "one-more"), params, 1, 1<<20)
		require.ErrorIs(t, err, protocol.ErrBusy)
		require.ErrorContains(t, err, "memory budget for transfers exhausted")
		require.NoError(t, newRawPeer(t, r).dial().openWith("t-other", filepath.Join(r.root, "other"), params, 1, 1<<20), "another peer is not affected")
	})
}
