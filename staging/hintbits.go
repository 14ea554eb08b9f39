package staging

import (
	"bytes"
	"context"
	"encoding/binary"
	"strings"
)

// A throwaway instance's seq scans set hint bits on every heap page whose
// tuples were never read since they were written, and write those pages
// back: every chunk of a never-vacuumed table would be copied into the CoW
// layer for nothing but hints. PostgreSQL recomputes the hints from
// pg_xact whenever it reads a page without them, so a page write that
// differs from the page in the file only in those bits can be dropped
// (MountOptions.DropHintWrites). The check is strict on purpose: any change
// PostgreSQL makes for real is WAL-logged and moves pd_lsn, and with data
// checksums setting a hint changes pd_checksum; both make the page differ
// in its header, and it is written.

// KeepHintWritesEnv, set to 1, turns MountOptions.DropHintWrites off.
const KeepHintWritesEnv = "PGPORTER_KEEP_HINT_WRITES"

// The page layout of PostgreSQL (storage/bufpage.h, access/htup_details.h),
// version 4 (8.3 and later).
const (
	pageHeaderSize    = 24 // PageHeaderData up to pd_linp
	pdLower           = 12
	pdUpper           = 14
	pdSpecial         = 16
	pdPagesizeVersion = 18
	pageLayoutVersion = 4
	lineNormal        = 1  // LP_NORMAL
	tupleHeaderSize   = 23 // HeapTupleHeaderData up to t_bits
	infomaskHigh      = 21 // t_infomask (bytes 20-21, little-endian): its high byte
	// hintBits are HEAP_XMIN_COMMITTED, HEAP_XMIN_INVALID,
	// HEAP_XMAX_COMMITTED and HEAP_XMAX_INVALID (0x0100-0x0800 of
	// t_infomask) in its high byte.
	hintBits = 0x0F
)

// relMainFork reports whether rel, a slash path relative to the data
// directory, names a segment of a relation's main fork in the default or
// the global tablespace: base/<db>/<relfilenode>[.<segno>] or
// global/<relfilenode>[.<segno>]. Other forks (_fsm, _vm, _init) and every
// other file are not heap pages that hints alone change.
func relMainFork(rel string) bool {
	var file string
	if rest, ok := strings.CutPrefix(rel, "base/"); ok {
		db, f, ok := strings.Cut(rest, "/")
		if !ok || !digits(db) {
			return false
		}
		file = f
	} else if f, ok := strings.CutPrefix(rel, "global/"); ok {
		file = f
	} else {
		return false
	}
	node, seg, hasSeg := strings.Cut(file, ".")
	return digits(node) && (!hasSeg || digits(seg))
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// pageSize returns the size that the header of page, one PostgreSQL page,
// records (pd_pagesize_version), or 0 unless it is a power of two from
// 1 KiB to 32 KiB with layout version 4 and page is that long.
func pageSize(page []byte) int {
	if len(page) < pageHeaderSize {
		return 0
	}
	v := binary.LittleEndian.Uint16(page[pdPagesizeVersion:])
	size := int(v & 0xFF00)
	if v&0xFF != pageLayoutVersion || size < 1024 || size > 32768 || size&(size-1) != 0 || len(page) != size {
		return 0
	}
	return size
}

// hintBitsOnly reports whether page, the new content of a heap page whose
// content in the file is orig, differs from it only in the hint bits of
// t_infomask of orig's normal tuples. orig must be a heap page (no special
// space) with a sane header; both must be as long as page's header says.
// orig is overwritten.
func hintBitsOnly(orig, page []byte) bool {
	size := pageSize(page)
	if size == 0 || len(orig) != size {
		return false
	}
	lower := int(binary.LittleEndian.Uint16(orig[pdLower:]))
	upper := int(binary.LittleEndian.Uint16(orig[pdUpper:]))
	special := int(binary.LittleEndian.Uint16(orig[pdSpecial:]))
	if special != size || lower < pageHeaderSize || lower > upper || upper > size || (lower-pageHeaderSize)%4 != 0 {
		return false
	}
	// Take page's hint bits into orig; what is left to differ is not a hint.
	for lp := pageHeaderSize; lp < lower; lp += 4 {
		v := binary.LittleEndian.Uint32(orig[lp:])
		off, flags, n := int(v&0x7FFF), (v>>15)&3, int(v>>17)
		if flags != lineNormal || n < tupleHeaderSize || off < upper || off+n > size {
			continue
		}
		i := off + infomaskHigh
		if (orig[i]^page[i])&^hintBits != 0 {
			return false
		}
		orig[i] = page[i]
	}
	return bytes.Equal(orig, page)
}

// hintOnlyWrite reports whether writing p at off would change nothing but
// hint bits of one heap page that is still the restore point's: p is one
// whole page at a page boundary, inside the original content, whose
// chunks were never written (a write to a local chunk may have followed a
// real change of this page), and the original page differs from p only in
// hint bits (hintBitsOnly). The original is read through get, as reads do.
func (d *fileData) hintOnlyWrite(ctx context.Context, get chunkPinner, p []byte, off int64) (bool, error) {
	size := pageSize(p)
	if size == 0 || off%int64(size) != 0 || off < 0 || off+int64(size) > d.limit {
		return false, nil
	}
	for i, last := d.chunkAt(off), d.chunkAt(off+int64(size)-1); i <= last; i++ {
		if d.isLocal(i) {
			return false, nil
		}
	}
	orig := make([]byte, size)
	if n, err := d.readAt(ctx, get, orig, off); err != nil || n != size {
		return false, err
	}
	return hintBitsOnly(orig, p), nil
}
