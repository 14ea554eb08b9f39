package staging

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"
)

// heapPage builds a PostgreSQL heap page of size bytes, byte by byte: a
// header with an LSN, lineptrs normal tuples of 48 bytes from the end down
// (t_xmin 100+i, t_infomask HEAP_HASVARWIDTH|HEAP_XMAX_INVALID, t_hoff 24,
// data after), one unused line pointer, and no hint bits on t_xmin.
func heapPage(size, tuples int) []byte {
	p := make([]byte, size)
	le := binary.LittleEndian
	le.PutUint32(p[0:], 0x1)        // pd_lsn xlogid
	le.PutUint32(p[4:], 0x2A3B4C58) // pd_lsn xrecoff
	lower := pageHeaderSize + 4*(tuples+1)
	upper := size - 48*tuples
	le.PutUint16(p[pdLower:], uint16(lower))
	le.PutUint16(p[pdUpper:], uint16(upper))
	le.PutUint16(p[pdSpecial:], uint16(size))
	le.PutUint16(p[pdPagesizeVersion:], uint16(size)|pageLayoutVersion)
	for i := range tuples {
		off := size - 48*(i+1)
		le.PutUint32(p[pageHeaderSize+4*i:], uint32(off)|lineNormal<<15|48<<17)
		t := p[off : off+48]
		le.PutUint32(t[0:], uint32(100+i)) // t_xmin
		le.PutUint16(t[16:], uint16(i+1))  // t_ctid's offset number
		le.PutUint16(t[18:], 3)            // t_infomask2: 3 attributes
		le.PutUint16(t[20:], 0x0802)       // t_infomask
		t[22] = 24                         // t_hoff
		for j := 24; j < 48; j++ {
			t[j] = byte('a' + (i+j)%26)
		}
	}
	// An unused line pointer (LP_UNUSED) whose offset points at tuple 0.
	le.PutUint32(p[pageHeaderSize+4*tuples:], uint32(size-48))
	return p
}

// hinted returns a copy of page with HEAP_XMIN_COMMITTED set on every
// tuple, as a seq scan of committed rows leaves it.
func hinted(page []byte, tuples int) []byte {
	p := bytes.Clone(page)
	for i := range tuples {
		p[len(p)-48*(i+1)+infomaskHigh] |= 0x01
	}
	return p
}

func TestHintBitsOnly(t *testing.T) {
	const size, tuples = 8192, 5
	orig := heapPage(size, tuples)
	tup0 := size - 48 // tuple 0's offset
	for _, tc := range []struct {
		name   string
		change func(p []byte)
		want   bool
	}{
		{"hint bits only", func(p []byte) { copy(p, hinted(orig, tuples)) }, true},
		{"all four hint bits", func(p []byte) { p[tup0+infomaskHigh] ^= 0x0F }, true},
		{"no change", func(p []byte) {}, true},
		{"tuple data byte", func(p []byte) { copy(p, hinted(orig, tuples)); p[tup0+30] ^= 1 }, false},
		{"t_infomask low byte", func(p []byte) { p[tup0+20] ^= 0x01 }, false},
		{"t_infomask high byte past the hints", func(p []byte) { p[tup0+infomaskHigh] ^= 0x10 }, false},
		{"t_infomask2", func(p []byte) { p[tup0+19] ^= 0x40 }, false},
		{"t_xmax", func(p []byte) { p[tup0+4] = 7 }, false},
		{"LSN", func(p []byte) { copy(p, hinted(orig, tuples)); p[7]++ }, false},
		{"checksum", func(p []byte) { copy(p, hinted(orig, tuples)); p[8] = 0x5A }, false},
		{"pd_flags", func(p []byte) { p[10] |= 0x04 }, false},
		{"pd_prune_xid", func(p []byte) { p[20] = 9 }, false},
		{"line pointer", func(p []byte) { p[pageHeaderSize+1] ^= 0x01 }, false},
		{"free space", func(p []byte) { p[pageHeaderSize+4*(tuples+1)+8] = 1 }, false},
	} {
		t.Run(tc.name+", in two pieces", func(t *testing.T) {
			page := bytes.Clone(orig)
			tc.change(page)
			got := hintBitsOnly(bytes.Clone(orig), page[:6528], 0) && hintBitsOnly(bytes.Clone(orig), page[6528:], 6528)
			require.Equal(t, tc.want, got)
		})
		t.Run(tc.name, func(t *testing.T) {
			page := bytes.Clone(orig)
			tc.change(page)
			require.Equal(t, tc.want, hintBitsOnly(bytes.Clone(orig), page, 0))
		})
	}

	t.Run("index-like page", func(t *testing.T) {
		// pd_special below the size: a B-tree page, a sequence, ...
		idx := heapPage(size, tuples)
		binary.LittleEndian.PutUint16(idx[pdSpecial:], size-16)
		binary.LittleEndian.PutUint16(idx[pdUpper:], size-16-48*tuples) // not quite consistent, but sane
		page := bytes.Clone(idx)
		page[size-48+infomaskHigh] |= 0x01
		require.False(t, hintBitsOnly(bytes.Clone(idx), page, 0))
	})
	t.Run("hint byte of an unused line pointer's tuple", func(t *testing.T) {
		// Only LP_NORMAL line pointers say where a tuple header is.
		o := heapPage(size, 1)
		le := binary.LittleEndian
		le.PutUint32(o[pageHeaderSize:], uint32(size-48)|3<<15|48<<17) // LP_DEAD
		page := bytes.Clone(o)
		page[size-48+infomaskHigh] |= 0x01
		require.False(t, hintBitsOnly(bytes.Clone(o), page, 0))
	})
	t.Run("other page sizes", func(t *testing.T) {
		for _, sz := range []int{1024, 4096, 16384, 32768} {
			o := heapPage(sz, 3)
			require.True(t, hintBitsOnly(bytes.Clone(o), hinted(o, 3), 0), "size %d", sz)
		}
	})
	t.Run("headers that are no page", func(t *testing.T) {
		for _, set := range []func(p []byte){
			func(p []byte) { binary.LittleEndian.PutUint16(p[pdPagesizeVersion:], 8192|5) },  // layout version
			func(p []byte) { binary.LittleEndian.PutUint16(p[pdPagesizeVersion:], 12288|4) }, // not a power of two
			func(p []byte) { binary.LittleEndian.PutUint16(p[pdPagesizeVersion:], 0) },       // a new, all-zero page
			func(p []byte) { binary.LittleEndian.PutUint16(p[pdLower:], 8) },                 // pd_lower in the header
			func(p []byte) { binary.LittleEndian.PutUint16(p[pdUpper:], 20) },                // pd_upper below pd_lower
		} {
			o := heapPage(size, tuples)
			set(o)
			page := bytes.Clone(o)
			page[size-48+infomaskHigh] |= 0x01
			require.False(t, hintBitsOnly(bytes.Clone(o), page, 0))
		}
	})
}

func TestRelMainFork(t *testing.T) {
	for p, want := range map[string]bool{
		"base/5/16384":                    true,
		"base/5/16384.1":                  true,
		"global/1262":                     true,
		"global/1262.12":                  true,
		"base/5/16384_fsm":                false,
		"base/5/16384_vm":                 false,
		"base/5/16384_init":               false,
		"base/5/16384.x":                  false,
		"base/5/16384.":                   false,
		"base/5/PG_VERSION":               false,
		"base/x/16384":                    false,
		"base/5/6/7":                      false,
		"global/pg_control":               false,
		"global/pg_filenode.map":          false,
		"pg_xact/0000":                    false,
		"pg_wal/000000010000000000000001": false,
		"pg_multixact/offsets/0000":       false,
		"16384":                           false,
	} {
		require.Equal(t, want, relMainFork(p), p)
	}
}

// TestHintOnlyWrite: which writes to a file's CoW layer are dropped as
// hint bits only.
func TestHintOnlyWrite(t *testing.T) {
	const size, pages = 8192, 64
	var file []byte
	for range pages {
		file = append(file, heapPage(size, 5)...)
	}
	ctx := context.Background()
	hint := func(n int) []byte { return hinted(file[n*size:(n+1)*size], 5) }
	fresh := func(t *testing.T) (*fileData, chunkSource) {
		refs, get, _ := memChunks(t, file)
		d := newFileData(refs, t.TempDir()+"/cow")
		t.Cleanup(func() { _ = d.close() })
		return d, get
	}

	t.Run("hint-only page", func(t *testing.T) {
		d, get := fresh(t)
		ok, err := d.hintOnlyWrite(ctx, get, hint(3), 3*size)
		require.NoError(t, err)
		require.True(t, ok)
	})
	t.Run("page in two writes", func(t *testing.T) {
		// As the kernel splits some: the start with the header, then
		// the rest, each dropped.
		d, get := fresh(t)
		p := hint(3)
		for _, w := range [][2]int{{0, 6528}, {6528, size}} {
			ok, err := d.hintOnlyWrite(ctx, get, p[w[0]:w[1]], int64(3*size+w[0]))
			require.NoError(t, err)
			require.True(t, ok, "write %v", w)
		}
	})
	t.Run("rest of a page with a real change", func(t *testing.T) {
		d, get := fresh(t)
		p := hint(3)
		p[size-20] ^= 0xFF // tuple 0's data, in the rest
		ok, err := d.hintOnlyWrite(ctx, get, p[:6528], 3*size)
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = d.hintOnlyWrite(ctx, get, p[6528:], 3*size+6528)
		require.NoError(t, err)
		require.False(t, ok)
	})
	t.Run("rest of a page whose start was written", func(t *testing.T) {
		// The start (with a new LSN) was not dropped: the rest is not
		// either, even if it differs in hint bits only.
		d, get := fresh(t)
		p := hint(3)
		p[7]++
		ok, err := d.hintOnlyWrite(ctx, get, p[:6528], 3*size)
		require.NoError(t, err)
		require.False(t, ok)
		ok, err = d.hintOnlyWrite(ctx, get, p[6528:], 3*size+6528)
		require.NoError(t, err)
		require.False(t, ok)
	})
	t.Run("rest of a page after another write", func(t *testing.T) {
		// The continuation must follow the start directly.
		d, get := fresh(t)
		p := hint(3)
		ok, err := d.hintOnlyWrite(ctx, get, p[:6528], 3*size)
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = d.hintOnlyWrite(ctx, get, hint(5), 5*size)
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = d.hintOnlyWrite(ctx, get, p[6528:], 3*size+6528)
		require.NoError(t, err)
		require.False(t, ok)
	})
	t.Run("piece without the header", func(t *testing.T) {
		d, get := fresh(t)
		ok, err := d.hintOnlyWrite(ctx, get, hint(3)[:pageHeaderSize-1], 3*size)
		require.NoError(t, err)
		require.False(t, ok)
		ok, err = d.hintOnlyWrite(ctx, get, hint(3)[4096:], 3*size+4096)
		require.NoError(t, err)
		require.False(t, ok)
	})
	t.Run("two pages", func(t *testing.T) {
		d, get := fresh(t)
		ok, err := d.hintOnlyWrite(ctx, get, append(hint(3), hint(4)...), 3*size)
		require.NoError(t, err)
		require.False(t, ok)
	})
	t.Run("off not a page boundary", func(t *testing.T) {
		d, get := fresh(t)
		ok, err := d.hintOnlyWrite(ctx, get, hint(3), 3*size+512)
		require.NoError(t, err)
		require.False(t, ok)
	})
	t.Run("past the original end", func(t *testing.T) {
		d, get := fresh(t)
		ok, err := d.hintOnlyWrite(ctx, get, hint(3), pages*size)
		require.NoError(t, err)
		require.False(t, ok)
	})
	t.Run("past a truncate", func(t *testing.T) {
		d, get := fresh(t)
		require.NoError(t, d.truncate(3*size))
		require.NoError(t, d.truncate(pages*size))
		ok, err := d.hintOnlyWrite(ctx, get, hint(3), 3*size)
		require.NoError(t, err)
		require.False(t, ok)
	})
	t.Run("chunk already local", func(t *testing.T) {
		// A real write went to the page's chunk first (here to the
		// next page, in the same chunk): whether or not this page is
		// still the original, the chunk is written as before.
		d, get := fresh(t)
		require.Equal(t, d.chunkAt(3*size), d.chunkAt(4*size))
		real := bytes.Clone(file[4*size : 5*size])
		real[7]++ // a new LSN
		require.NoError(t, d.writeAt(ctx, get, real, 4*size))
		ok, err := d.hintOnlyWrite(ctx, get, hint(3), 3*size)
		require.NoError(t, err)
		require.False(t, ok)
	})
	t.Run("a real change", func(t *testing.T) {
		d, get := fresh(t)
		p := hint(3)
		p[size-20] ^= 0xFF // tuple data
		ok, err := d.hintOnlyWrite(ctx, get, p, 3*size)
		require.NoError(t, err)
		require.False(t, ok)
	})
}
