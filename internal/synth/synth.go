// Package synth makes test and benchmark data: pseudo-random bytes and text
// shaped like what pg_dump writes, the same for the same arguments. Tests of
// every package and the benchmark harness share it.
package synth

import (
	"bytes"
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"strconv"
)

// Random returns n pseudo-random bytes, the same for the same seed. They do
// not compress.
func Random(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b) // never fails
	return b
}

// PgbenchRows returns n bytes shaped like pgbench_accounts in COPY text: a
// number, two short fields and 84 spaces of char padding. It compresses
// about 90x.
func PgbenchRows(n int) []byte {
	pad := bytes.Repeat([]byte{' '}, 84)
	b := make([]byte, 0, n+128)
	for i := 1; len(b) < n; i++ {
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, "\t1\t0\t"...)
		b = append(b, pad...)
		b = append(b, '\n')
	}
	return b[:n]
}

// MD5Rows returns n bytes of COPY text with an id, an md5 hex string and a
// small jsonb document of repeated words, as the md5/jsonb/words table of
// the LAN dump. It compresses about 3x.
func MD5Rows(n int) []byte {
	words := []string{"alpha", "beta", "gamma", "delta", "epsilon"}
	b := make([]byte, 0, n+256)
	for i := 0; len(b) < n; i++ {
		h := md5.Sum(strconv.AppendInt(nil, int64(i), 10))
		b = fmt.Appendf(b, "%d\t%s\t{\"k\": %d, \"w\": \"%s %s\"}\n", i, hex.EncodeToString(h[:]), i%1000, words[i%5], words[(i/5)%5])
	}
	return b[:n]
}

// MixedRows returns n bytes of pgbench rows and md5 text in the LAN dump's
// proportions, three parts of the first to one of the second, interleaved
// in pieces of up to 1 MiB (so that most chunks hold one kind).
func MixedRows(n int) []byte {
	piece := max(min(1<<20, n/8), 1)
	pg, md := PgbenchRows(max(n, 3*piece)), MD5Rows(max(n, piece))
	b := make([]byte, 0, n+4*piece)
	for off := 0; len(b) < n; off += piece {
		b = append(b, pg[(3*off)%(len(pg)-3*piece+1):][:3*piece]...)
		b = append(b, md[off%(len(md)-piece+1):][:piece]...)
	}
	return b[:n]
}
