package mover

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkSendLoopback measures a cold transfer of a dump-like tree (COPY
// rows, as pg_dump -Fd -Z0 writes them) over loopback QUIC, with fsync and
// pebble state on the receiver: the whole data path of 'pgporter send'.
// Sender and receiver share this process, as they share the machine in the
// bench harness. pgporter-bench's lan and resume scenarios compare it with rsync.
func BenchmarkSendLoopback(b *testing.B) {
	for _, level := range []string{"auto", "fastest", "none"} {
		b.Run(level, func(b *testing.B) {
			src := b.TempDir()
			const files, size = 4, 64 << 20
			var total int64
			for i := range files {
				data := pgbenchLike(size, uint64(i))
				if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("%d.dat", 3000+i)), data, 0o600); err != nil {
					b.Fatal(err)
				}
				total += int64(len(data))
			}
			b.SetBytes(total)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				// A fresh receiver each time: a second send to the same one
				// would be deduplicated, not transferred.
				b.StopTimer()
				r := startReceiver(b, ServerOptions{})
				s := newTestSender(b, r, PermSend)
				b.StartTimer()
				res, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "d"), Compression: level})
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(res.Bytes)/float64(res.WireBytes), "ratio")
			}
		})
	}
}
