package chunkstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"
	"golang.org/x/sys/unix"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/pebbledb"
)

// The previous layout, "pgporter-chunkstore-1", indexed the packs with one
// pebble database in DIR/index, which only one process could open:
//
//	'c' + ID (33 bytes)        -> chunk location (v1LocSize bytes, below)
//	'p' + pack number (BE u32) -> durable length of the pack (LE u64)
//	"format"                   -> "pgporter-chunkstore-1"
//
// A chunk key pointed only at synced bytes, so its entries carry over as
// they are; what lay past a pack's durable length is unreferenced. The
// packs keep their numbered names (packName).
const (
	v1Format     = "pgporter-chunkstore-1"
	v1KeyChunk   = 'c'
	v1LocSize    = 1 + 4 + 8 + 4 + 4 + 1
	v1LocVersion = 1
)

// migrate converts a store of the previous layout: its index becomes one
// run, and then goes. Processes opening the store at once wait for the one
// converting it.
func (l *Local) migrate() error {
	old := filepath.Join(l.dir, "index")
	if _, err := os.Stat(old); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	lock, err := os.OpenFile(filepath.Join(l.dir, "migrate.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("chunkstore: converting the store's index: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("chunkstore: converting the store's index: %w", err)
	}
	if _, err := os.Stat(old); errors.Is(err, fs.ErrNotExist) {
		return nil // converted by another process meanwhile
	}
	db, err := pebbledb.Open(old, pebbledb.Options{Log: l.opts.Logger, Format: v1Format, ReadOnly: true})
	if err != nil {
		return fmt.Errorf("chunkstore: converting the store's index (an older pgporter may have it open): %w", err)
	}
	n, err := l.migrateEntries(db)
	if err = errors.Join(err, db.Close()); err != nil {
		return fmt.Errorf("chunkstore: converting the store's index: %w", err)
	}
	if err := os.RemoveAll(old); err != nil {
		return fmt.Errorf("chunkstore: removing the converted index: %w", err)
	}
	if err := syncDir(l.dir); err != nil {
		return err
	}
	l.log.Info("converted the store's index to "+storeFormat, "chunks", n)
	return nil
}

// migrateEntries writes db's chunk entries, which pebble holds in key (so
// ID) order, as one run.
func (l *Local) migrateEntries(db *pebbledb.DB) (int, error) {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte{v1KeyChunk}, UpperBound: []byte{v1KeyChunk + 1}})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	rw, err := newRunWriter(l.runsDir(), l.owner, 0, nil)
	if err != nil {
		return 0, err
	}
	var n int
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != 1+chunk.IDSize {
			rw.abort()
			return 0, fmt.Errorf("%w: key %x", errBadIndex, k)
		}
		id := chunk.ID(k[1:])
		loc, err := decodeV1Loc(it.Value())
		if err != nil {
			l.log.Error("index entry damaged: not carried over", "chunk", id.String(), "err", err)
			continue
		}
		if err := rw.add(runEntry{id: id, loc: loc}); err != nil {
			rw.abort()
			return 0, err
		}
		n++
	}
	if err := it.Error(); err != nil {
		rw.abort()
		return 0, err
	}
	if n == 0 {
		rw.abort()
		return 0, nil
	}
	r, err := rw.commit()
	if err != nil {
		return 0, err
	}
	r.release()
	return n, nil
}

// appendV1Loc appends the previous layout's encoding of l (tests build old
// stores with it).
func appendV1Loc(dst []byte, l chunkLoc) []byte {
	dst = append(dst, v1LocVersion)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(l.Pack))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(l.Offset))
	dst = binary.LittleEndian.AppendUint32(dst, l.StoredLen)
	dst = binary.LittleEndian.AppendUint32(dst, l.PlainLen)
	return append(dst, byte(l.Codec))
}

// decodeV1Loc decodes and checks a chunk location of the previous layout.
func decodeV1Loc(b []byte) (chunkLoc, error) {
	if len(b) != v1LocSize {
		return chunkLoc{}, fmt.Errorf("%w: location is %d bytes, want %d", errBadIndex, len(b), v1LocSize)
	}
	if b[0] != v1LocVersion {
		return chunkLoc{}, fmt.Errorf("%w: location version %d", errBadIndex, b[0])
	}
	off := binary.LittleEndian.Uint64(b[5:13])
	if off > maxPackOffset {
		return chunkLoc{}, fmt.Errorf("%w: offset %d out of range", errBadIndex, off)
	}
	l := chunkLoc{
		Pack:      uint64(binary.LittleEndian.Uint32(b[1:5])),
		Offset:    int64(off),
		StoredLen: binary.LittleEndian.Uint32(b[13:17]),
		PlainLen:  binary.LittleEndian.Uint32(b[17:21]),
		Codec:     chunk.Codec(b[21]),
	}
	return l, l.validate()
}
