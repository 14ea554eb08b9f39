package mover

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/protocol"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	body, err := io.ReadAll(rec.Result().Body)
	require.NoError(t, err)
	return rec.Code, string(body)
}

// TestHTTPHandler: /metrics and /healthz are separate paths (every path
// used to answer with the metrics); /healthz is ok only while the server
// serves.
func TestHTTPHandler(t *testing.T) {
	m := newTLSTestMover(t)
	srv, err := NewServer(ServerOptions{Home: m.home, Listen: "127.0.0.1:0", Log: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	h := srv.HTTPHandler()
	code, body := get(t, h, "/healthz")
	require.Equal(t, http.StatusServiceUnavailable, code, "not serving yet")
	require.Equal(t, "not serving\n", body)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	require.Eventually(t, func() bool { c, _ := get(t, h, "/healthz"); return c == http.StatusOK }, 10*time.Second, 5*time.Millisecond)
	code, body = get(t, h, "/healthz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)

	code, body = get(t, h, "/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "pgporter_build_info{")
	require.Contains(t, body, "pgporter_mover_last_export_success_timestamp_seconds 0\n")
	require.Contains(t, body, "pgporter_mover_last_commit_timestamp_seconds 0\n")
	for _, path := range []string{"/", "/metrics/x", "/health", "/favicon.ico"} {
		code, body = get(t, h, path)
		require.Equal(t, http.StatusNotFound, code, path)
		require.NotContains(t, body, "pgporter_build_info", path)
	}

	// A connected peer has its series, which go with its connections; before
	// its first request a connection plays no role.
	require.NotContains(t, body, "pgporter_mover_peer_connections{")
	c := newTLSTestMover(t)
	require.NoError(t, srv.trust.Trust(TrustedPeer{ID: c.id.ID, Perms: PermSend}))
	conn, _, err := dialMover(ctx, srv.Addr().String(), c.id, srv.ID(), 0)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, body := get(t, h, "/metrics")
		return strings.Contains(body, `pgporter_mover_peer_connections{peer="`+c.id.ID.String()+`",role="none"} 1`+"\n") &&
			strings.Contains(body, `pgporter_mover_peer_transfers_active{peer="`+c.id.ID.String()+`"} 0`+"\n")
	}, 10*time.Second, 5*time.Millisecond)
	conn.CloseWithError(quic.ApplicationErrorCode(0), "")
	require.Eventually(t, func() bool {
		_, body := get(t, h, "/metrics")
		return !strings.Contains(body, "pgporter_mover_peer_connections{")
	}, 10*time.Second, 5*time.Millisecond, "the series end with the connection")

	// The gauges hold the time of the last success.
	at := time.Unix(1_800_000_000, 0)
	srv.ExportDone(at)
	srv.metrics.transfersDone.Inc()
	_, body = get(t, h, "/metrics")
	require.Contains(t, body, "pgporter_mover_last_export_success_timestamp_seconds 1.8e+09\n")
	require.NotContains(t, body, "pgporter_mover_last_commit_timestamp_seconds 0\n")
	require.Contains(t, body, "pgporter_mover_transfers_committed_total 1\n")

	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	code, _ = get(t, h, "/healthz")
	require.Equal(t, http.StatusServiceUnavailable, code, "stopped")
}

// TestTransferSeries: while a transfer runs into a mover, its durable and
// announced bytes are series of their own, labelled with the transfer and
// the peer; they end with the transfer, so their number stays that of the
// transfers in progress. The sender's connections have the role send.
func TestTransferSeries(t *testing.T) {
	var h atomic.Pointer[http.Handler]
	bodies := make(chan string, 64)
	r := startReceiver(t, ServerOptions{SyncBytes: 1 << 20, OnDurable: func(string, int64) {
		if hp := h.Load(); hp != nil {
			rec := httptest.NewRecorder()
			(*hp).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			select {
			case bodies <- rec.Body.String():
			default:
			}
		}
	}})
	handler := r.srv.HTTPHandler()
	h.Store(&handler)
	src := t.TempDir()
	data := make([]byte, 6<<20)
	for i := range data {
		data[i] = byte(i * 7 / 3)
	}
	require.NoError(t, os.WriteFile(filepath.Join(src, "f.dat"), data, 0o644))
	s := newTestSender(t, r, PermSend)
	// One connection: a joined one would play no role until it joins.
	_, err := s.Send(context.Background(), r.addr, r.id.ID, SendOptions{Src: src, Dest: filepath.Join(r.root, "d"), TransferID: "t-series", RetryFor: -1, Connections: 1})
	require.NoError(t, err)
	// Send returns at the commit's answer, which the receiver writes before
	// its transfer's handler ends (its last sync may still call OnDurable):
	// stopped, the mover has waited for every handler. bodies is drained,
	// never closed, so a late scrape cannot send on a closed channel.
	r.stop()
	h.Store(nil)
	var seen int
	for drained := false; !drained; {
		var body string
		select {
		case body = <-bodies:
		default:
			drained = true
			continue
		}
		if strings.Contains(body, `pgporter_mover_transfer_durable_bytes{peer="`+s.ID().String()+`",transfer="t-series"} `) {
			require.Contains(t, body, `pgporter_mover_transfer_total_bytes{peer="`+s.ID().String()+`",transfer="t-series"} 6.291456e+06`)
			require.Contains(t, body, `pgporter_mover_peer_transfers_active{peer="`+s.ID().String()+`"} 1`+"\n")
			require.Regexp(t, `pgporter_mover_peer_connections\{peer="`+s.ID().String()+`",role="send"\} [1-9]`, body)
			require.NotRegexp(t, `pgporter_mover_peer_connections\{peer="`+s.ID().String()+`",role="(none|read|orchestrate|archive)"\}`, body)
			seen++
		}
	}
	require.Positive(t, seen, "the series while the transfer ran")
	_, body := get(t, handler, "/metrics")
	require.NotContains(t, body, "pgporter_mover_transfer_durable_bytes{", "the series end with the transfer")
	require.NotContains(t, body, "pgporter_mover_transfer_total_bytes{")
}

// TestPeerRoles: a connection's role label is the permission its requests
// need, counted in each role it plays, and its series end with it.
func TestPeerRoles(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	h := r.srv.HTTPHandler()
	c := newTLSTestMover(t)
	require.NoError(t, r.trust.Trust(TrustedPeer{ID: c.id.ID, Perms: PermRead | PermArchive | PermOrchestrate}))
	ctx := context.Background()
	series := func(role string, n int) string {
		return `pgporter_mover_peer_connections{peer="` + c.id.ID.String() + `",role="` + role + `"} ` + strconv.Itoa(n) + "\n"
	}
	scraped := func(want ...string) func() bool {
		return func() bool {
			_, body := get(t, h, "/metrics")
			for _, w := range want {
				if !strings.Contains(body, w) {
					return false
				}
			}
			return true
		}
	}

	// A repository client: reads on the control stream (refused here: no
	// repository), then pushes WAL on an archive stream of the same
	// connection.
	conn, cs, err := dialMover(ctx, r.addr, c.id, r.id.ID, 0)
	require.NoError(t, err)
	require.Eventually(t, scraped(series("none", 1)), 10*time.Second, 5*time.Millisecond)
	require.NoError(t, cs.write(&protocol.ListPoints{}))
	_, err = cs.next()
	require.Error(t, err, "this mover has no repository")
	_, body := get(t, h, "/metrics")
	require.Contains(t, body, series("read", 1))
	require.NotContains(t, body, `role="none"`)
	st, err := conn.OpenStreamSync(ctx)
	require.NoError(t, err)
	require.NoError(t, protocol.WriteStreamKind(st, protocol.StreamArchive))
	require.Eventually(t, scraped(series("read", 1), series("archive", 1)), 10*time.Second, 5*time.Millisecond)

	// An orchestrator, on a second connection (this mover runs no jobs).
	conn2, cs2, err := dialMover(ctx, r.addr, c.id, r.id.ID, 0)
	require.NoError(t, err)
	require.NoError(t, cs2.write(&protocol.RunJob{Kind: protocol.JobListPublications, Version: protocol.JobVersion}))
	_, err = cs2.next()
	require.ErrorContains(t, err, "runs no jobs")
	require.Eventually(t, scraped(series("orchestrate", 1), series("read", 1), series("archive", 1)), 10*time.Second, 5*time.Millisecond)
	_, body = get(t, h, "/metrics")
	require.NotContains(t, body, `role="send"`)
	require.Contains(t, body, `pgporter_mover_peer_transfers_active{peer="`+c.id.ID.String()+`"} 0`+"\n")

	conn.CloseWithError(quic.ApplicationErrorCode(0), "")
	conn2.CloseWithError(quic.ApplicationErrorCode(0), "")
	require.Eventually(t, func() bool {
		_, body := get(t, h, "/metrics")
		return !strings.Contains(body, "pgporter_mover_peer_connections{") && !strings.Contains(body, "pgporter_mover_peer_transfers_active{")
	}, 10*time.Second, 5*time.Millisecond, "the series end with the connections")
}

// TestExportSeries: the progress of export jobs run here has series per
// session and step, which end with the job (and only that job's).
func TestExportSeries(t *testing.T) {
	r := startReceiver(t, ServerOptions{})
	h := r.srv.HTTPHandler()
	r.srv.ExportProgress("x-1", "dump:shop", 3, 5)
	r.srv.ExportProgress("x-1", "transfer:shop", 1<<20, 4<<20)
	r.srv.ExportProgress("x-2", "dump:crm", 0, 0)
	_, body := get(t, h, "/metrics")
	require.Contains(t, body, `pgporter_mover_export_step_done{session="x-1",step="dump:shop"} 3`+"\n")
	require.Contains(t, body, `pgporter_mover_export_step_total{session="x-1",step="dump:shop"} 5`+"\n")
	require.Contains(t, body, `pgporter_mover_export_step_total{session="x-1",step="transfer:shop"} 4.194304e+06`+"\n")
	r.srv.ExportEnded("x-1")
	_, body = get(t, h, "/metrics")
	require.NotContains(t, body, `session="x-1"`)
	require.Contains(t, body, `pgporter_mover_export_step_done{session="x-2",step="dump:crm"} 0`+"\n")
}
