package mover

import (
	"bytes"
	"context"
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
)

// rawArchiver pushes WAL files by hand, to play a pusher that lies.
type rawArchiver struct {
	conn *quic.Conn
}

func dialRawArchiver(t *testing.T, r *testReceiver, perms Perm) *rawArchiver {
	t.Helper()
	m := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "liar", Perms: perms, Added: time.Now()}))
	conn, _, err := dialMover(context.Background(), r.addr, m.id, r.id.ID, 0)
	require.NoError(t, err)
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return &rawArchiver{conn: conn}
}

// push opens an archive stream and writes frames on it as they are: a
// lying pusher skips the checks WriteMessage makes.
func (a *rawArchiver) push(t *testing.T, frames ...[]byte) (*quic.Stream, *protocol.Reader) {
	t.Helper()
	st, err := a.conn.OpenStreamSync(context.Background())
	require.NoError(t, err)
	_, err = st.Write(append([]byte{byte(protocol.StreamArchive)}, bytes.Join(frames, nil)...))
	require.NoError(t, err)
	return st, protocol.NewReader(st, 0)
}

// reply reads the server's next message: its Error as an error.
func reply(t *testing.T, rd *protocol.Reader) (protocol.Message, error) {
	t.Helper()
	m, err := rd.Next()
	require.NoError(t, err)
	if e, ok := m.(*protocol.Error); ok {
		return nil, e.Err()
	}
	return m, nil
}

// walOffer is the honest offer of content under name, cut as wal-push cuts.
func walOffer(t *testing.T, name string, content []byte) *protocol.PushWAL {
	t.Helper()
	w, err := chunkstore.ChunkWAL(context.Background(), bytes.NewReader(content), name, nil)
	require.NoError(t, err)
	rec, err := walToWire(w)
	require.NoError(t, err)
	return &protocol.PushWAL{WALRecord: *rec}
}

// chunkFrame is chunk i of offer, plain.
func chunkFrame(offer *protocol.PushWAL, content []byte, i int) []byte {
	var off int
	for _, c := range offer.Chunks[:i] {
		off += int(c.Len)
	}
	c := offer.Chunks[i]
	return protocol.AppendFrame(nil, &protocol.ChunkData{ID: c.ID, PlainLen: c.Len, Payload: content[off : off+int(c.Len)]})
}

// requireNotArchived checks that the repository in dir has no record of name.
func requireNotArchived(t *testing.T, dir, name string) {
	t.Helper()
	repo, err := chunkstore.OpenRepo(context.Background(), dir, nil)
	require.NoError(t, err)
	defer repo.Close()
	_, err = repo.WALRecord(name)
	require.ErrorIs(t, err, chunkstore.ErrWALNotFound)
}

// TestHostileWALOffers: a push whose offer does not hold together is
// refused before anything is stored, with the code that says why: names
// that are not PostgreSQL's or could leave the archive's directory, sizes
// above 1 GiB, chunk lengths that do not add up, a chunk-list hash the
// server's own computation contradicts, more chunks than any segment has,
// and a frame that announces a gigabyte. None leaves a record, and the
// announced sizes are never allocated.
func TestHostileWALOffers(t *testing.T) {
	r, dir := startWALServer(t)
	a := dialRawArchiver(t, r, PermArchive)
	const name = "000000010000000000000001"
	content := randomBytes(200<<10, 1)
	good := walOffer(t, name, content)
	require.Greater(t, len(good.Chunks), 1)
	id := good.Chunks[0].ID

	alter := func(f func(o *protocol.WALRecord)) []byte {
		o := *good
		o.Chunks = append([]protocol.ChunkRef(nil), good.Chunks...)
		f(&o.WALRecord)
		return protocol.AppendFrame(nil, &o)
	}
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for _, tc := range []struct {
		name  string
		frame []byte
		code  protocol.Code
		says  string
	}{
		{"traversal", alter(func(o *protocol.WALRecord) { o.Name = "../../etc/passwd" }), protocol.CodeBadPath, "WAL file name"},
		{"not a WAL name", alter(func(o *protocol.WALRecord) { o.Name = "RECOVERYXLOG" }), protocol.CodeBadPath, "not a WAL file name"},
		{"lower case", alter(func(o *protocol.WALRecord) { o.Name = "0000000a0000000000000001" }), protocol.CodeBadPath, "not a WAL file name"},
		{"above 1 GiB", alter(func(o *protocol.WALRecord) { o.Size = protocol.MaxWALSize + 1 }), protocol.CodeProtocol, "size"},
		{"lengths do not add up", alter(func(o *protocol.WALRecord) { o.Size++ }), protocol.CodeProtocol, "chunks of"},
		{"empty chunk", alter(func(o *protocol.WALRecord) { o.Chunks[0].Len = 0 }), protocol.CodeProtocol, "outside [1,"},
		{"hash of another list", alter(func(o *protocol.WALRecord) { o.Hash[0] ^= 1 }), protocol.CodeProtocol, "hash to"},
		{"chunks swapped", alter(func(o *protocol.WALRecord) { o.Chunks[0], o.Chunks[1] = o.Chunks[1], o.Chunks[0] }), protocol.CodeProtocol, "hash to"},
		{"more chunks than any segment", func() []byte {
			b := protocol.AppendFrame(nil, &protocol.PushWAL{WALRecord: protocol.WALRecord{Name: name}})
			// Replace the empty list's count: MaxWALChunks+1 chunks of 1 byte.
			b = append(b[:len(b)-1], binary.AppendUvarint(nil, protocol.MaxWALChunks+1)...)
			for range protocol.MaxWALChunks + 1 {
				b = append(append(b, id[:]...), 1)
			}
			binary.BigEndian.PutUint32(b, uint32(len(b)-5))
			return b
		}(), protocol.CodeProtocol, "above"},
		{"a gigabyte announced", func() []byte {
			return append(binary.BigEndian.AppendUint32(nil, 1<<30), byte(protocol.TypePushWAL))
		}(), protocol.CodeTooLarge, "above the limit"},
		{"not a push", protocol.AppendFrame(nil, &protocol.GetChunks{IDs: []chunk.ID{id}}), protocol.CodeProtocol, "expected PushWAL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rd := a.push(t, tc.frame)
			_, err := reply(t, rd)
			var re *protocol.RemoteError
			require.ErrorAs(t, err, &re)
			require.Equal(t, tc.code, re.Code, "%v", err)
			require.ErrorContains(t, err, tc.says)
		})
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(256<<20), "the announced sizes were never allocated")
	requireNotArchived(t, dir, name)

	// The connection is still good: an honest push goes through.
	frames := [][]byte{protocol.AppendFrame(nil, good)}
	st, rd := a.push(t, frames...)
	m, err := reply(t, rd)
	require.NoError(t, err)
	need := m.(*protocol.WALNeed)
	require.Len(t, need.Chunks, len(good.Chunks))
	for _, i := range need.Chunks {
		_, err := st.Write(chunkFrame(good, content, int(i)))
		require.NoError(t, err)
	}
	m, err = reply(t, rd)
	require.NoError(t, err)
	require.Equal(t, &protocol.WALPushed{}, m)
}

// TestHostileWALChunks: after an honest offer, chunks that are not what
// was offered fail the push, and nothing is linked: tampered content
// (its hash is not its ID), a chunk of another index, a length other
// than the offer's, a zstd frame that inflates past its length, a frame
// above the largest chunk asked for, and a stream that ends early.
func TestHostileWALChunks(t *testing.T) {
	r, dir := startWALServer(t)
	a := dialRawArchiver(t, r, PermArchive)
	content := randomBytes(300<<10, 2)
	bomb, err := zstd.NewWriter(nil)
	require.NoError(t, err)
	defer bomb.Close()

	for n, tc := range []struct {
		name string
		// bad returns the frame sent instead of the first chunk asked for.
		bad  func(o *protocol.PushWAL, content []byte) []byte
		code protocol.Code
		says string
	}{
		{"tampered", func(o *protocol.PushWAL, content []byte) []byte {
			b := bytes.Clone(content[:o.Chunks[0].Len])
			b[7] ^= 1
			return protocol.AppendFrame(nil, &protocol.ChunkData{ID: o.Chunks[0].ID, PlainLen: o.Chunks[0].Len, Payload: b})
		}, protocol.CodeCorrupt, "hash"},
		{"another index", func(o *protocol.PushWAL, content []byte) []byte {
			return chunkFrame(o, content, 1)
		}, protocol.CodeProtocol, "expected chunk"},
		{"another length", func(o *protocol.PushWAL, content []byte) []byte {
			c := o.Chunks[0]
			return protocol.AppendFrame(nil, &protocol.ChunkData{ID: c.ID, PlainLen: c.Len - 1, Payload: content[:c.Len-1]})
		}, protocol.CodeProtocol, "the offer said"},
		{"zstd bomb", func(o *protocol.PushWAL, content []byte) []byte {
			c := o.Chunks[0]
			payload := bomb.EncodeAll(make([]byte, 64<<20), nil)
			return protocol.AppendFrame(nil, &protocol.ChunkData{ID: c.ID, Codec: chunk.CodecZstd, PlainLen: c.Len, Payload: payload})
		}, protocol.CodeCorrupt, ""},
		{"frame above the largest chunk", func(o *protocol.PushWAL, content []byte) []byte {
			return append(binary.BigEndian.AppendUint32(nil, chunk.MaxChunkCeil), byte(protocol.TypeChunkData))
		}, protocol.CodeTooLarge, "above the limit"},
		{"ends early", func(*protocol.PushWAL, []byte) []byte { return nil }, protocol.CodeProtocol, "ended after 0 of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A name of its own each, so that no case sees another's record.
			name := "00000001000000000000001" + string(rune('0'+n))
			offer := walOffer(t, name, content)
			st, rd := a.push(t, protocol.AppendFrame(nil, offer))
			m, err := reply(t, rd)
			require.NoError(t, err)
			require.NotEmpty(t, m.(*protocol.WALNeed).Chunks)
			if f := tc.bad(offer, content); f != nil {
				_, err = st.Write(f)
				require.NoError(t, err)
			} else {
				require.NoError(t, st.Close())
			}
			_, err = reply(t, rd)
			var re *protocol.RemoteError
			require.ErrorAs(t, err, &re)
			require.Equal(t, tc.code, re.Code, "%v", err)
			require.ErrorContains(t, err, tc.says)
			requireNotArchived(t, dir, name)
		})
	}
}

// TestHostileWALDuplicates: an offer naming one chunk many times (a
// switched segment's zeros) is asked for it once, and a chunk the
// repository holds is not asked for at all.
func TestHostileWALDuplicates(t *testing.T) {
	r, _ := startWALServer(t)
	a := dialRawArchiver(t, r, PermArchive)
	zeros := make([]byte, 4<<20)
	offer := walOffer(t, "000000010000000000000001", zeros)
	require.Greater(t, len(offer.Chunks), 4)
	st, rd := a.push(t, protocol.AppendFrame(nil, offer))
	m, err := reply(t, rd)
	require.NoError(t, err)
	need := m.(*protocol.WALNeed).Chunks
	distinct := map[chunk.ID]bool{}
	for _, c := range offer.Chunks {
		distinct[c.ID] = true
	}
	require.Len(t, need, len(distinct))
	for _, i := range need {
		_, err := st.Write(chunkFrame(offer, zeros, int(i)))
		require.NoError(t, err)
	}
	_, err = reply(t, rd)
	require.NoError(t, err)

	_, rd = a.push(t, protocol.AppendFrame(nil, walOffer(t, "000000010000000000000002", zeros)))
	m, err = reply(t, rd)
	require.NoError(t, err)
	require.Empty(t, m.(*protocol.WALNeed).Chunks, "the repository holds them all")
	m, err = reply(t, rd)
	require.NoError(t, err)
	require.Equal(t, &protocol.WALPushed{}, m)
}

// TestHostileWALUnderPermitted: an archive stream needs archive; a peer
// trusted with everything else is refused, told which permission it
// lacks, and nothing is stored. On a connection below protocol 9 an
// archive stream is a protocol violation, whatever the permission.
func TestHostileWALUnderPermitted(t *testing.T) {
	r, dir := startWALServer(t)
	const name = "000000010000000000000001"
	offer := walOffer(t, name, randomBytes(100<<10, 3))
	a := dialRawArchiver(t, r, PermSend|PermRead|PermOrchestrate)
	_, rd := a.push(t, protocol.AppendFrame(nil, offer))
	_, err := reply(t, rd)
	require.ErrorIs(t, err, protocol.ErrPermission)
	require.ErrorContains(t, err, "lacks permission archive")
	requireNotArchived(t, dir, name)

	t.Run("protocol 8", func(t *testing.T) {
		asVersion(t, protocol.WALVersion-1)
		r, dir := startWALServer(t)
		a := dialRawArchiver(t, r, PermAll)
		_, rd := a.push(t, protocol.AppendFrame(nil, offer))
		_, err := reply(t, rd)
		require.ErrorIs(t, err, protocol.ErrProtocol)
		require.ErrorContains(t, err, "needs protocol 9")
		requireNotArchived(t, dir, name)
	})
}
