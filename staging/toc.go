package staging

import (
	"bytes"
	"errors"
	"fmt"
)

// archiveTOC is the table of contents of a pg_dump directory archive, the
// toc.dat file: a header, then one entry per object. It is read only to add
// TABLE DATA entries for tables whose data pgporter dumped itself (see
// tabledump.go); everything else is written back byte for byte.
//
// The encoding is pg_dump's (pg_backup_archiver.c): an integer is a sign
// byte then intSize bytes, least significant first; a string is its length
// as an integer (-1 for NULL) then its bytes. Archive versions 1.14 (pg_dump
// 12 to 15), 1.15 (16: the header names the compression algorithm) and 1.16
// (17: entries carry the relkind) are understood; others are refused.
type archiveTOC struct {
	head    []byte // everything before the entry count, verbatim
	version int    // 100*minor + revision, e.g. 1400 for 1.14.0
	intSize int
	entries []tocEntry
}

// tocStr is a string of the archive, which may be NULL.
type tocStr struct {
	s     string
	valid bool
}

func str(s string) tocStr { return tocStr{s: s, valid: true} }

// tocEntry is one entry, fields in their order on disk.
type tocEntry struct {
	dumpID, hadDumper int
	tableOID, oid     tocStr
	tag, desc         tocStr
	section           int
	defn, drop, copy  tocStr
	namespace, tblspc tocStr
	tableAM           tocStr
	relkind           int // archive 1.16 and later
	owner, withOids   tocStr
	deps              []tocStr // dump IDs, as strings
	filename          tocStr   // the directory format's data file
}

// Sections of an entry (pg_backup.h teSection).
const (
	sectionNone     = 1
	sectionPreData  = 2
	sectionData     = 3
	sectionPostData = 4
)

const (
	tocV114 = 1400
	tocV115 = 1500
	tocV116 = 1600
)

var errTOC = errors.New("staging: unreadable pg_dump toc.dat")

type tocReader struct {
	b       []byte
	off     int
	intSize int
	err     error
}

func (r *tocReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s at byte %d", errTOC, what, r.off)
	}
}

func (r *tocReader) byte() int {
	if r.err != nil || r.off >= len(r.b) {
		r.fail("truncated")
		return 0
	}
	c := r.b[r.off]
	r.off++
	return int(c)
}

func (r *tocReader) int() int {
	sign := r.byte()
	if r.err != nil || r.off+r.intSize > len(r.b) {
		r.fail("truncated integer")
		return 0
	}
	var v uint64
	for i := 0; i < r.intSize; i++ {
		v |= uint64(r.b[r.off+i]) << (8 * i)
	}
	r.off += r.intSize
	if v > 1<<31 {
		r.fail("integer out of range")
		return 0
	}
	if sign != 0 {
		return -int(v)
	}
	return int(v)
}

func (r *tocReader) str() tocStr {
	n := r.int()
	if r.err != nil {
		return tocStr{}
	}
	if n < 0 {
		return tocStr{}
	}
	if r.off+n > len(r.b) {
		r.fail("truncated string")
		return tocStr{}
	}
	s := string(r.b[r.off : r.off+n])
	r.off += n
	return str(s)
}

// parseTOC reads a toc.dat.
func parseTOC(b []byte) (*archiveTOC, error) {
	if len(b) < 11 || string(b[:5]) != "PGDMP" {
		return nil, fmt.Errorf("%w: no PGDMP header", errTOC)
	}
	t := &archiveTOC{version: int(b[6])*100 + int(b[7]), intSize: int(b[8])}
	if b[5] != 1 || (t.version/100 != 14 && t.version/100 != 15 && t.version/100 != 16) {
		return nil, fmt.Errorf("%w: archive version %d.%d.%d is not one pgporter can extend", errTOC, b[5], b[6], b[7])
	}
	if t.intSize < 4 || t.intSize > 8 {
		return nil, fmt.Errorf("%w: integer size %d", errTOC, t.intSize)
	}
	r := &tocReader{b: b, off: 11, intSize: t.intSize} // magic, 3 version bytes, intSize, offSize, format
	if t.version >= tocV115 {
		r.byte() // compression algorithm
	} else {
		r.int() // compression level
	}
	for i := 0; i < 7; i++ { // creation time: sec, min, hour, mday, mon, year, isdst
		r.int()
	}
	r.str() // database name
	r.str() // server version
	r.str() // pg_dump version
	if r.err != nil {
		return nil, r.err
	}
	t.head = b[:r.off]
	n := r.int()
	if r.err == nil && (n < 0 || n > len(b)) {
		r.fail("entry count out of range")
	}
	for i := 0; i < n && r.err == nil; i++ {
		var e tocEntry
		e.dumpID = r.int()
		e.hadDumper = r.int()
		e.tableOID, e.oid = r.str(), r.str()
		e.tag, e.desc = r.str(), r.str()
		e.section = r.int()
		e.defn, e.drop, e.copy = r.str(), r.str(), r.str()
		e.namespace, e.tblspc = r.str(), r.str()
		e.tableAM = r.str()
		if t.version >= tocV116 {
			e.relkind = r.int()
		}
		e.owner, e.withOids = r.str(), r.str()
		for r.err == nil {
			d := r.str()
			if !d.valid {
				break
			}
			e.deps = append(e.deps, d)
		}
		e.filename = r.str()
		t.entries = append(t.entries, e)
	}
	if r.err != nil {
		return nil, r.err
	}
	if r.off != len(b) {
		return nil, fmt.Errorf("%w: %d bytes after the last entry", errTOC, len(b)-r.off)
	}
	return t, nil
}

type tocWriter struct {
	bytes.Buffer
	intSize int
}

func (w *tocWriter) int(v int) {
	u := uint64(v)
	if v < 0 {
		w.WriteByte(1)
		u = uint64(-v)
	} else {
		w.WriteByte(0)
	}
	for i := 0; i < w.intSize; i++ {
		w.WriteByte(byte(u >> (8 * i)))
	}
}

func (w *tocWriter) str(s tocStr) {
	if !s.valid {
		w.int(-1)
		return
	}
	w.int(len(s.s))
	w.WriteString(s.s)
}

// bytes encodes the TOC.
func (t *archiveTOC) bytes() []byte {
	w := &tocWriter{intSize: t.intSize}
	w.Write(t.head)
	w.int(len(t.entries))
	for _, e := range t.entries {
		w.int(e.dumpID)
		w.int(e.hadDumper)
		w.str(e.tableOID)
		w.str(e.oid)
		w.str(e.tag)
		w.str(e.desc)
		w.int(e.section)
		w.str(e.defn)
		w.str(e.drop)
		w.str(e.copy)
		w.str(e.namespace)
		w.str(e.tblspc)
		w.str(e.tableAM)
		if t.version >= tocV116 {
			w.int(e.relkind)
		}
		w.str(e.owner)
		w.str(e.withOids)
		for _, d := range e.deps {
			w.str(d)
		}
		w.str(tocStr{})
		w.str(e.filename)
	}
	return w.Bytes()
}

// maxDumpID is the largest dump ID of the archive.
func (t *archiveTOC) maxDumpID() int {
	m := 0
	for _, e := range t.entries {
		m = max(m, e.dumpID)
	}
	return m
}

// tableDumpID is the dump ID of the TABLE entry of the table with the given
// OID, or 0.
func (t *archiveTOC) tableDumpID(oid uint32) int {
	want := fmt.Sprint(oid)
	for _, e := range t.entries {
		if e.desc.s == "TABLE" && e.oid.s == want {
			return e.dumpID
		}
	}
	return 0
}

// addData inserts a TABLE DATA entry where pg_dump puts its own: in the
// data section, before the first post-data entry.
func (t *archiveTOC) addData(e tocEntry) {
	at := len(t.entries)
	for i, x := range t.entries {
		if x.section == sectionPostData {
			at = i
			break
		}
	}
	if at == len(t.entries) { // no post-data: after the last pre-data or data entry
		at = 0
		for i, x := range t.entries {
			if x.section == sectionPreData || x.section == sectionData {
				at = i + 1
			}
		}
	}
	t.entries = append(t.entries[:at], append([]tocEntry{e}, t.entries[at:]...)...)
}
