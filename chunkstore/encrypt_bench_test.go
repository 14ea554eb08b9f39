package chunkstore_test

import (
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/chunkstore/storetest"
)

// randomCorpus is 16 MiB of incompressible chunks: where sealing costs
// most, beside a record stored as it is.
var randomCorpus = sync.OnceValues(func() ([][]byte, []chunk.ID) {
	return splitCorpus(storetest.RandomBytes(rand.New(rand.NewPCG(5, 5)), 16<<20))
})

// BenchmarkLocalEncrypt is BenchmarkLocalPut and BenchmarkLocalGet on a
// plain store and on an encrypted one (LocalOptions.Key), on pgbench rows
// and on incompressible data:
//
//	go test -run '^$' -bench LocalEncrypt -benchtime 5x ./chunkstore/
func BenchmarkLocalEncrypt(b *testing.B) {
	corpora := []struct {
		name string
		get  func() ([][]byte, []chunk.ID)
	}{{"pgbench", benchCorpus}, {"random", randomCorpus}}
	kinds := []struct {
		name string
		key  func() *crypt.MasterKey
	}{{"plain", func() *crypt.MasterKey { return nil }}, {"sealed", crypt.NewMasterKey}}
	for _, c := range corpora {
		for _, k := range kinds {
			b.Run("put/"+c.name+"/"+k.name, func(b *testing.B) {
				chunks, ids := c.get()
				b.SetBytes(corpusBytes(chunks))
				b.ReportAllocs()
				for b.Loop() {
					b.StopTimer()
					l, err := chunkstore.OpenLocal(b.TempDir(), chunkstore.LocalOptions{Key: k.key()})
					require.NoError(b, err)
					b.StartTimer()
					putFlush(b, l, chunks, ids)
					b.StopTimer()
					require.NoError(b, l.Close())
					b.StartTimer()
				}
			})
			b.Run("get/"+c.name+"/"+k.name, func(b *testing.B) {
				chunks, ids := c.get()
				benchGet(b, chunkstore.LocalOptions{Key: k.key()}, chunks, ids)
			})
		}
	}
}
