package mover

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// durablePos is a chunk position a receiver recorded as durable.
type durablePos struct {
	path string
	rec  posRecord
}

// durablePositions lists the durable positions of every open transfer.
func durablePositions(t *testing.T, db *pebble.DB) []durablePos {
	t.Helper()
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte("t/"), UpperBound: []byte("t0")})
	require.NoError(t, err)
	defer it.Close()
	var out []durablePos
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		i := bytes.Index(k, []byte("/p/"))
		if i < 0 || len(k) < i+3+5 || k[len(k)-5] != 0 {
			continue
		}
		rec, ok := decodePos(it.Value())
		require.True(t, ok)
		out = append(out, durablePos{path: string(k[i+3 : len(k)-5]), rec: rec})
	}
	require.NoError(t, it.Error())
	return out
}

// flipByte changes one byte of a durable position in DEST.partial.
func flipByte(t *testing.T, partial string, p durablePos) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(partial, filepath.FromSlash(p.path)), os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, 1)
	off := p.rec.off + int64(p.rec.n)/2
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
}

// interruptedSend sends makeTree(seed) to dest and cancels once a third is
// durable, then waits until the receiver has let go of the transfer.
func interruptedSend(t *testing.T, r *testReceiver, s *Sender, src, dest string) SendOptions {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o := SendOptions{Src: src, Dest: dest, BWLimit: 8 << 20, Compression: "none"}
	var once sync.Once
	o.Progress = func(p SendProgress) {
		if p.Durable > p.Total/3 {
			once.Do(cancel)
		}
	}
	_, err := s.Send(ctx, r.addr, r.id.ID, o)
	require.Error(t, err)
	require.Eventually(t, func() bool {
		r.srv.mu.Lock()
		defer r.srv.mu.Unlock()
		return len(r.srv.active) == 0
	}, 30*time.Second, 10*time.Millisecond)
	o.Progress, o.BWLimit = nil, 0
	return o
}

// TestResumedChunkChangedOnDiskIsResent guards protocol 3's commit, which no
// longer reads files again: a chunk made durable by an earlier run whose
// bytes in DEST.partial changed before the rerun must be re-read when the
// manifest reaches it, and asked for again, not committed as it is.
func TestResumedChunkChangedOnDiskIsResent(t *testing.T) {
	r := startReceiver(t, ServerOptions{SyncInterval: 20 * time.Millisecond})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 29, 2)
	dest := filepath.Join(r.root, "changed")
	o := interruptedSend(t, r, s, src, dest)

	ps := durablePositions(t, r.srv.db.DB)
	require.NotEmpty(t, ps)
	flipByte(t, dest+".partial", ps[len(ps)/2])

	res, err := s.Send(context.Background(), r.addr, r.id.ID, o)
	require.NoError(t, err)
	require.Positive(t, res.ResumedChunks)
	requireSameTree(t, src, dest)
	require.Contains(t, r.log.String(), "changed on disk; asking for it again")
}

// flipFirstDurable changes a byte of the first durable position found in
// DEST.partial.
func flipFirstDurable(db *pebble.DB, partial string) error {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte("t/"), UpperBound: []byte("t0")})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		i := bytes.Index(k, []byte("/p/"))
		rec, ok := decodePos(it.Value())
		if i < 0 || len(k) < i+3+5 || k[len(k)-5] != 0 || !ok {
			continue
		}
		f, err := os.OpenFile(filepath.Join(partial, filepath.FromSlash(string(k[i+3:len(k)-5]))), os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, rec.off); err != nil {
			return err
		}
		b[0] ^= 0xff
		_, err = f.WriteAt(b, rec.off)
		return err
	}
	return errors.New("no durable position")
}

// TestVerifyCommitRereads: with ServerOptions.VerifyCommit the commit reads
// every file again, so a byte changed under DEST.partial after its chunk
// was verified and made durable fails the commit; the rerun sends that
// file again.
func TestVerifyCommitRereads(t *testing.T) {
	var (
		partial atomic.Pointer[string]
		db      atomic.Pointer[pebble.DB]
		once    sync.Once
	)
	r := startReceiver(t, ServerOptions{SyncInterval: 20 * time.Millisecond, VerifyCommit: true, OnDurable: func(string, int64) {
		p, d := partial.Load(), db.Load()
		if p == nil || d == nil {
			return
		}
		// The sync goroutine runs this: failures are reported, not fatal.
		once.Do(func() {
			if err := flipFirstDurable(d, *p); err != nil {
				t.Errorf("changing a durable chunk: %v", err)
			}
		})
	}})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 31, 1)
	dest := filepath.Join(r.root, "reread")
	pd := dest + ".partial"
	partial.Store(&pd)
	db.Store(r.srv.db.DB)
	o := SendOptions{Src: src, Dest: dest, BWLimit: 16 << 20, Compression: "none"}
	_, err := s.Send(context.Background(), r.addr, r.id.ID, o)
	require.ErrorIs(t, err, protocol.ErrCorrupt)
	require.ErrorContains(t, err, "did not verify")
	require.NoDirExists(t, dest)

	res, err := s.Send(context.Background(), r.addr, r.id.ID, o)
	require.NoError(t, err)
	require.Positive(t, res.ChunksSent)
	requireSameTree(t, src, dest)
}

// TestChunkCacheIgnoresWholeFileHashes: a sender's chunk cache record from
// before protocol 3 holds a whole-file BLAKE3, not a chunk-list hash; it
// must not be reused.
func TestChunkCacheIgnoresWholeFileHashes(t *testing.T) {
	p := chunk.DefaultParams
	f := &srcFile{Size: 5, MTime: 1, Ino: 2, CTime: 3, Chunks: []protocol.ChunkRef{{ID: chunk.Sum([]byte("hello")), Len: 5}}}
	got := &srcFile{Size: 5, MTime: 1, Ino: 2, CTime: 3}
	require.False(t, decodeCached(encodeCached(f, p.String()), got, cacheParams(p)), "a protocol 2 record")
	require.True(t, decodeCached(encodeCached(f, cacheParams(p)), got, cacheParams(p)))
}

// TestCommitWaitsForRunningBarrier guards the commit's position check
// against a barrier still running in the sync loop: it had taken the last
// written positions, so the barrier at the end of the transfer found none
// and returned before they were recorded, and the commit refused files
// that were complete. Barriers kicked after every chunk make that likely.
func TestCommitWaitsForRunningBarrier(t *testing.T) {
	r := startReceiver(t, ServerOptions{SyncBytes: 1, SyncInterval: time.Millisecond})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 37, 2)
	for i := range 8 {
		dest := filepath.Join(r.root, "d", string(rune('a'+i)))
		_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: dest, Compression: "none"})
		require.NoError(t, err)
	}
}

// TestDedupeRecordsInBatches: a committed tree's dedupe records written in
// many small batches all count: the same tree sent again elsewhere needs no
// chunk.
func TestDedupeRecordsInBatches(t *testing.T) {
	old := dedupeBatchBytes
	dedupeBatchBytes = 512 // a few records per batch
	t.Cleanup(func() { dedupeBatchBytes = old })
	r := startReceiver(t, ServerOptions{})
	s := newTestSender(t, r, PermSend)
	src := t.TempDir()
	makeTree(t, src, 34, 2)
	first, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "one")})
	require.NoError(t, err)
	require.Greater(t, first.ChunksSent, int64(20), "enough chunks for several batches")
	second, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "two")})
	require.NoError(t, err)
	requireSameTree(t, src, filepath.Join(r.root, "two"))
	require.Zero(t, second.ChunksSent)
}

// TestSourceChangedSaysWhat: a conflict over a committed DEST names the
// counts that differ, to the byte when their rounded sizes read the same.
func TestSourceChangedSaysWhat(t *testing.T) {
	m := &protocol.OpenTransfer{Dest: "d", Files: 6, Bytes: 19093507}
	require.NoError(t, sourceChanged(&protocol.OpenTransfer{Dest: "d"}, 6, 19093506), "a growing tree is judged by its ID")
	require.NoError(t, sourceChanged(m, 6, 19093507))
	err := sourceChanged(m, 6, 19093506)
	require.ErrorIs(t, err, protocol.ErrConflict)
	require.ErrorContains(t, err, "committed earlier (6 files, 19093506 bytes), but the source now has 6 files, 19093507 bytes")
	err = sourceChanged(m, 7, 1<<30)
	require.ErrorContains(t, err, "committed earlier (7 files, 1.0 GiB), but the source now has 6 files, 18 MiB")
}
