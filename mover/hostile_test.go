package mover

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/protocol"
	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// rawSender speaks the protocol by hand, to play a sender that lies.
type rawSender struct {
	conn *quic.Conn
	cs   *controlStream
}

func dialRaw(t *testing.T, r *testReceiver) *rawSender {
	t.Helper()
	m := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: m.id.ID, Name: "liar", Perms: PermSend, Added: time.Now()}))
	conn, cs, err := dialMover(context.Background(), r.addr, m.id, r.id.ID, 0)
	require.NoError(t, err)
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return &rawSender{conn: conn, cs: cs}
}

func (s *rawSender) open(t *testing.T, dest string, files, bytes uint64) {
	t.Helper()
	require.NoError(t, s.cs.write(&protocol.OpenTransfer{TransferID: "t-raw", Dest: dest, Params: chunk.DefaultParams, Files: files, Bytes: bytes}))
	m, err := s.cs.next()
	require.NoError(t, err)
	require.IsType(t, &protocol.TransferState{}, m)
}

// offer sends a one-chunk file's manifest.
func (s *rawSender) offer(t *testing.T, path string, content []byte) {
	t.Helper()
	id := chunk.Sum(content)
	// AppendFrame does not validate: a lying sender skips the checks.
	_, err := s.cs.rw.Write(protocol.AppendFrame(nil, &protocol.FileHeader{Index: 0, Path: path, Mode: 0o644, Size: uint64(len(content)), NumChunks: 1}))
	require.NoError(t, err)
	// The receiver may refuse the header at once and stop reading: the rest
	// is best effort, the tests judge by what comes back.
	_ = s.cs.write(&protocol.FileChunks{Index: 0, Chunks: []protocol.ChunkRef{{ID: id, Len: uint32(len(content))}}})
	_ = s.cs.write(&protocol.FileEnd{Index: 0, Size: uint64(len(content)), Hash: oneChunkListHash(content)})
	_ = s.cs.write(&protocol.ManifestEnd{Files: 1})
}

// oneChunkListHash is the FileEnd hash of a file that is one chunk.
func oneChunkListHash(content []byte) [32]byte {
	l := chunk.NewFileListHash(uint64(len(content)))
	l.Add(chunk.Sum(content), uint32(len(content)))
	return l.Sum()
}

// nextError reads until the receiver sends an Error and returns it.
func (s *rawSender) nextError(t *testing.T) error {
	t.Helper()
	for {
		_, err := s.cs.next()
		if err != nil {
			return err
		}
	}
}

func TestTamperedChunkRejected(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := dialRaw(t, r)
	dest := filepath.Join(r.root, "tampered")
	content := bytes.Repeat([]byte("the real content "), 100)
	s.open(t, dest, 1, uint64(len(content)))
	s.offer(t, "a.dat", content)

	m, err := s.cs.next()
	require.NoError(t, err)
	need, ok := m.(*protocol.Need)
	require.True(t, ok, "got %T", m)
	require.Equal(t, []uint32{0}, need.Chunks)

	lie := bytes.Repeat([]byte("x"), len(content))
	st, err := s.conn.OpenStreamSync(context.Background())
	require.NoError(t, err)
	_, err = st.Write([]byte{byte(protocol.StreamData)})
	require.NoError(t, err)
	require.NoError(t, protocol.WriteMessage(st, &protocol.ChunkData{ID: chunk.Sum(content), Codec: chunk.CodecNone, PlainLen: uint32(len(lie)), Payload: lie}))

	err = s.nextError(t)
	require.ErrorIs(t, err, protocol.ErrCorrupt)
	require.NoDirExists(t, dest)
	got, err := os.ReadFile(filepath.Join(dest+".partial", "a.dat"))
	require.NoError(t, err)
	require.False(t, bytes.Contains(got, []byte("x")), "the lie must never be written")
}

func TestHostilePathsRejected(t *testing.T) {
	for _, p := range []string{"../evil", "/etc/evil", "a/../../evil", "a//b", "./a", "nul\x00byte", "bad\xffutf8", ManifestName} {
		t.Run(p, func(t *testing.T) {
			r := startReceiver(t, ServerOptions{})
			s := dialRaw(t, r)
			s.open(t, filepath.Join(r.root, "d"), 1, 5)
			s.offer(t, p, []byte("hello"))
			err := s.nextError(t)
			require.ErrorIs(t, err, protocol.ErrBadPath)
			parent := filepath.Dir(r.root)
			_, statErr := os.Stat(filepath.Join(parent, "evil"))
			require.True(t, errors.Is(statErr, os.ErrNotExist))
		})
	}
}

// mountTmpfs mounts a small tmpfs for space tests (root only).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	testsupport.RequireRoot(t, "mounting a tmpfs")
	dir := t.TempDir()
	require.NoError(t, unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size))
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func TestNoSpaceRefusedUpFront(t *testing.T) {
	small := mountTmpfs(t, "4m")
	r := startReceiver(t, ServerOptions{Roots: []string{small}, Reserve: 1 << 20})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "big.dat"), randomBytes(8<<20, 1), 0o600))
	res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(small, "d")})
	require.ErrorIs(t, err, protocol.ErrNoSpace)
	require.Contains(t, err.Error(), "free")
	require.Zero(t, res.ChunksSent, "no data may move before the space check")
}

// TestNoSpaceMidTransfer fills the disk while a transfer runs: it fails
// cleanly, keeps what is durable, and a rerun after space is freed completes.
func TestNoSpaceMidTransfer(t *testing.T) {
	small := mountTmpfs(t, "24m")
	filler := filepath.Join(small, "filler")
	var once sync.Once
	fill := func(string, int64) {
		once.Do(func() {
			f, err := os.Create(filler)
			if err != nil {
				return
			}
			defer f.Close()
			buf := make([]byte, 1<<20)
			for {
				if _, err := f.Write(buf); err != nil {
					return
				}
			}
		})
	}
	r := startReceiver(t, ServerOptions{Roots: []string{small}, Reserve: 1, SyncBytes: 1 << 20, SyncInterval: 10 * time.Millisecond, OnDurable: fill})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "a.dat"), randomBytes(6<<20, 2), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(src, "b.dat"), randomBytes(6<<20, 3), 0o600))
	dest := filepath.Join(small, "d")
	o := SendOptions{Src: src, Dest: dest, BWLimit: 16 << 20, Compression: "none"}
	_, err := s.Send(context.Background(), r.addr, r.id.ID, o)
	require.ErrorIs(t, err, protocol.ErrNoSpace)
	require.NoDirExists(t, dest)

	require.NoError(t, os.Remove(filler))
	res, err := s.Send(context.Background(), r.addr, r.id.ID, o)
	require.NoError(t, err)
	require.Positive(t, res.ResumedChunks, "what was durable before the disk filled is kept")
	requireSameTree(t, src, dest)
}

func TestDuplicateAndExtraFilesRejected(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := dialRaw(t, r)
	content := []byte("hello")
	s.open(t, filepath.Join(r.root, "dup"), 2, 10)
	id := chunk.Sum(content)
	// The receiver refuses at the second header and cancels the stream:
	// the writes after it may fail, as a hostile sender's would.
	for i := range 2 {
		_ = s.cs.write(&protocol.FileHeader{Index: uint32(i), Path: "same.dat", Mode: 0o644, Size: 5, NumChunks: 1})
		_ = s.cs.write(&protocol.FileChunks{Index: uint32(i), Chunks: []protocol.ChunkRef{{ID: id, Len: 5}}})
		_ = s.cs.write(&protocol.FileEnd{Index: uint32(i), Size: uint64(len(content)), Hash: oneChunkListHash(content)})
	}
	err := s.nextError(t)
	require.ErrorIs(t, err, protocol.ErrBadPath)
	require.Contains(t, err.Error(), "listed twice")
}

// TestTinyChunksRejected: a manifest of 1-byte chunks would make the
// receiver track a position per byte; only a file's last chunk may be
// shorter than the minimum.
func TestTinyChunksRejected(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	s := dialRaw(t, r)
	const size = 1 << 20
	s.open(t, filepath.Join(r.root, "tiny"), 1, size)
	require.NoError(t, s.cs.write(&protocol.FileHeader{Index: 0, Path: "a.dat", Mode: 0o644, Size: size}))
	refs := make([]protocol.ChunkRef, 1000)
	for i := range refs {
		refs[i] = protocol.ChunkRef{ID: chunk.Sum([]byte{byte(i)}), Len: 1}
	}
	_ = s.cs.write(&protocol.FileChunks{Index: 0, Chunks: refs})
	err := s.nextError(t)
	require.ErrorIs(t, err, protocol.ErrProtocol)
	require.Contains(t, err.Error(), "in the middle of a.dat")
}
