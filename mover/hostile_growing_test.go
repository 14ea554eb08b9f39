package mover

import (
	"path/filepath"
	"testing"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// TestHostileGrowingFile: a growing file's size is unknown until FileEnd, so
// the receiver bounds it by other means: only trees still being written
// may hold one, a short chunk must be its last, and FileEnd's size must be
// what its chunks cover.
func TestHostileGrowingFile(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	grow := &protocol.FileHeader{Index: 0, Path: "a.dat", Mode: 0o644, Growing: true}
	short := protocol.ChunkRef{ID: chunk.Sum([]byte{1}), Len: 1}
	for name, tc := range map[string]struct {
		files, bytes uint64
		msgs         []protocol.Message
		want         string
	}{
		"in a tree of announced size": {1, 10, []protocol.Message{grow}, "growing in a transfer of announced size"},
		"short chunk in the middle": {0, 0, []protocol.Message{grow,
			&protocol.FileChunks{Index: 0, Chunks: []protocol.ChunkRef{short}},
			&protocol.FileChunks{Index: 0, First: 1, Chunks: []protocol.ChunkRef{short}}}, "in the middle of a.dat"},
		"FileEnd size not the chunks'": {0, 0, []protocol.Message{grow,
			&protocol.FileChunks{Index: 0, Chunks: []protocol.ChunkRef{short}},
			&protocol.FileEnd{Index: 0, Size: 2}}, "FileEnd says 2 bytes"},
	} {
		t.Run(name, func(t *testing.T) {
			s := dialRaw(t, r)
			s.open(t, filepath.Join(r.root, "grow"), tc.files, tc.bytes)
			for _, m := range tc.msgs {
				_ = s.cs.write(m)
			}
			err := s.nextError(t)
			require.ErrorIs(t, err, protocol.ErrProtocol)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}
