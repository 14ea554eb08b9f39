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

// headerPageSize returns the page size that hdr, the start of a
// PostgreSQL page, records (pd_pagesize_version): a power of two from 1 KiB
// to 32 KiB with layout version 4, or 0.
func headerPageSize(hdr []byte) int {
	if len(hdr) < pageHeaderSize {
		return 0
	}
	v := binary.LittleEndian.Uint16(hdr[pdPagesizeVersion:])
	size := int(v & 0xFF00)
	if v&0xFF != pageLayoutVersion || size < 1024 || size > 32768 || size&(size-1) != 0 {
		return 0
	}
	return size
}

// hintBitsOnly reports whether frag, new content at offset at of a page
// whose content in the file is orig, differs from orig only in the hint
// bits of t_infomask of orig's normal tuples. orig must be a whole heap
// page (no special space) with a sane header, as long as it records. orig
// is overwritten.
func hintBitsOnly(orig, frag []byte, at int) bool {
	size := headerPageSize(orig)
	end := at + len(frag)
	if size == 0 || len(orig) != size || at < 0 || end > size {
		return false
	}
	lower := int(binary.LittleEndian.Uint16(orig[pdLower:]))
	upper := int(binary.LittleEndian.Uint16(orig[pdUpper:]))
	special := int(binary.LittleEndian.Uint16(orig[pdSpecial:]))
	if special != size || lower < pageHeaderSize || lower > upper || upper > size || (lower-pageHeaderSize)%4 != 0 {
		return false
	}
	// Take frag's hint bits into orig; what is left to differ is not a hint.
	for lp := pageHeaderSize; lp < lower; lp += 4 {
		v := binary.LittleEndian.Uint32(orig[lp:])
		off, flags, n := int(v&0x7FFF), (v>>15)&3, int(v>>17)
		if flags != lineNormal || n < tupleHeaderSize || off < upper || off+n > size {
			continue
		}
		i := off + infomaskHigh
		if i < at || i >= end {
			continue
		}
		if (orig[i]^frag[i-at])&^hintBits != 0 {
			return false
		}
		orig[i] = frag[i-at]
	}
	return bytes.Equal(orig[at:end], frag)
}

// hintOnlyWrite reports whether writing p at off would change nothing but
// hint bits of a heap page that is still the restore point's, so that the
// write can be dropped. p is a whole page at a page boundary, as
// PostgreSQL writes it, or a piece of one: the kernel splits some writes
// of a page in two FUSE requests (at 64 KiB boundaries of the writer's
// buffer, it seems), so a write of the page's start with its header may
// leave the rest to the next write of this file, which must then start
// where it ended. The page lies inside the original content, its chunks
// were never written (a write to a local chunk may have followed a real
// change of the page), and the original page differs from p only in hint
// bits (hintBitsOnly). The original is read through get, as reads do.
func (d *fileData) hintOnlyWrite(ctx context.Context, get chunkPinner, p []byte, off int64) (bool, error) {
	page, size := off, 0
	if d.hintNext > 0 && off == d.hintNext {
		page, size = d.hintPage, d.hintSize
	} else {
		size = headerPageSize(p)
	}
	d.hintNext = 0
	end := off + int64(len(p))
	if size == 0 || page%int64(size) != 0 || page < 0 || len(p) == 0 || end > page+int64(size) || page+int64(size) > d.limit {
		return false, nil
	}
	for i, last := d.chunkAt(page), d.chunkAt(page+int64(size)-1); i <= last; i++ {
		if d.isLocal(i) {
			return false, nil
		}
	}
	orig := make([]byte, size)
	if n, err := d.readAt(ctx, get, orig, page); err != nil || n != size {
		return false, err
	}
	if !hintBitsOnly(orig, p, int(off-page)) {
		return false, nil
	}
	if end < page+int64(size) {
		d.hintNext, d.hintPage, d.hintSize = end, page, size
	}
	return true, nil
}
