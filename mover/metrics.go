package mover

import (
	"net/http"
	"time"

	"github.com/pgporter/pgporter/internal/buildinfo"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
)

// metrics are the daemon's Prometheus series, served on --metrics.
type metrics struct {
	reg            *prometheus.Registry
	connections    prometheus.Counter
	refused        prometheus.Counter
	retries        prometheus.Counter
	transfersOpen  prometheus.Gauge
	transfersDone  prometheus.Counter
	transfersFail  prometheus.Counter
	chunksReceived prometheus.Counter
	wireBytes      prometheus.Counter
	durableBytes   prometheus.Counter
	localChunks    prometheus.Counter
	dedupedChunks  prometheus.Counter
	corruptChunks  prometheus.Counter
	udpRcvBuf      prometheus.Gauge
	udpSndBuf      prometheus.Gauge
	controlMsgs    prometheus.Counter
	controlWrites  prometheus.Counter
	lastExport     prometheus.Gauge
	lastCommit     prometheus.Gauge
	// Per-transfer series, one of each while a transfer into this mover
	// runs, removed when it ends: their number stays that of the transfers
	// in progress.
	transferDurable *prometheus.GaugeVec
	transferTotal   *prometheus.GaugeVec
	// Per-session series of the export jobs this mover runs as the
	// staging mover, removed when the job ends.
	exportDone  *prometheus.GaugeVec
	exportTotal *prometheus.GaugeVec
}

// transferLabels are the labels of the per-transfer series.
var transferLabels = []string{"transfer", "peer"}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	c := func(name, help string) prometheus.Counter {
		x := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "pgporter", Subsystem: "mover", Name: name, Help: help})
		m.reg.MustRegister(x)
		return x
	}
	m.connections = c("connections_total", "Connections accepted after the TLS handshake.")
	m.retries = c("handshake_retries_total", "Initial packets of new connections answered with a QUIC Retry (address validation) because the handshake rate was exceeded.")
	m.refused = c("requests_refused_total", "Requests refused (permission, path, space, conflict).")
	m.transfersDone = c("transfers_committed_total", "Transfers verified and renamed into place.")
	m.transfersFail = c("transfers_failed_total", "Transfer connections that ended in an error.")
	m.chunksReceived = c("chunks_received_total", "Chunks received from senders and verified.")
	m.wireBytes = c("chunk_wire_bytes_total", "Chunk payload bytes received, as sent (compressed).")
	m.durableBytes = c("durable_bytes_total", "Plain bytes made durable (fsynced and recorded).")
	m.localChunks = c("chunks_copied_local_total", "Chunks copied from elsewhere in the same transfer instead of sent.")
	m.dedupedChunks = c("chunks_deduped_total", "Chunks copied from earlier committed transfers instead of sent.")
	m.corruptChunks = c("chunks_corrupt_total", "Chunks whose content did not match their BLAKE3 ID.")
	m.controlMsgs = c("control_messages_sent_total", "Messages written on transfer control streams.")
	m.controlWrites = c("control_writes_total", "Stream writes that carried them (several messages per write when coalesced).")
	m.transfersOpen = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "pgporter", Subsystem: "mover", Name: "transfers_active", Help: "Transfers in progress."})
	m.udpRcvBuf = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "pgporter", Subsystem: "mover", Name: "udp_rcvbuf_bytes", Help: "Receive buffer of the QUIC socket as the kernel granted it (SO_RCVBUF); below 7 MiB, raise net.core.rmem_max."})
	m.udpSndBuf = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "pgporter", Subsystem: "mover", Name: "udp_sndbuf_bytes", Help: "Send buffer of the QUIC socket as the kernel granted it (SO_SNDBUF); below 7 MiB, raise net.core.wmem_max."})
	m.reg.MustRegister(m.udpRcvBuf, m.udpSndBuf)
	m.lastExport = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "pgporter", Subsystem: "mover", Name: "last_export_success_timestamp_seconds", Help: "When an export job that this mover ran as the staging mover last ended with its session done (Unix time); 0 until one has."})
	m.lastCommit = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "pgporter", Subsystem: "mover", Name: "last_commit_timestamp_seconds", Help: "When a transfer into this mover was last verified and committed (Unix time; a dump arriving on a target); 0 until one has."})
	m.reg.MustRegister(m.lastExport, m.lastCommit)
	m.transferDurable = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "pgporter", Subsystem: "mover", Name: "transfer_durable_bytes",
		Help: "Plain bytes of a transfer in progress into this mover made durable so far (the series ends with the transfer)."}, transferLabels)
	m.transferTotal = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "pgporter", Subsystem: "mover", Name: "transfer_total_bytes",
		Help: "Plain bytes of a transfer in progress into this mover, as the sender announced them; 0 for a tree still being written (the series ends with the transfer)."}, transferLabels)
	m.reg.MustRegister(m.transferDurable, m.transferTotal)
	m.exportDone = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "pgporter", Subsystem: "mover", Name: "export_step_done",
		Help: "Progress of a step of an export job this mover runs as the staging mover: bytes of a transfer, tables of a dump (the series end with the job)."}, []string{"session", "step"})
	m.exportTotal = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "pgporter", Subsystem: "mover", Name: "export_step_total",
		Help: "What a step of an export job this mover runs has to do, in the unit of export_step_done; 0 while unknown (the series end with the job)."}, []string{"session", "step"})
	m.reg.MustRegister(m.exportDone, m.exportTotal)
	m.transfersDone = stampingCounter{m.transfersDone, m.lastCommit}
	bi := buildinfo.Get()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "pgporter", Name: "build_info", Help: "This build: always 1, with its release, commit and Go version as labels."}, []string{"version", "commit", "goversion"})
	build.WithLabelValues(bi.Version, bi.Commit, bi.GoVersion).Set(1)
	m.reg.MustRegister(build)
	m.reg.MustRegister(m.transfersOpen, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// HTTPHandler serves the daemon's HTTP endpoints (mover serve --metrics):
// the Prometheus metrics on /metrics, and on /healthz 200 "ok" while the
// server accepts connections (503 before Serve and once shutdown began).
// Any other path is 404.
func (s *Server) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.MetricsHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !s.serving.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not serving\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// ExportDone records that an export job this mover ran as the staging
// mover ended with its session done, at t.
func (s *Server) ExportDone(t time.Time) {
	s.metrics.lastExport.Set(float64(t.UnixNano()) / 1e9)
}

// ExportProgress records a step's progress of export job session
// (orchestrator.StagingJobs.ExportProgress).
func (s *Server) ExportProgress(session, step string, done, total int64) {
	l := prometheus.Labels{"session": session, "step": step}
	s.metrics.exportDone.With(l).Set(float64(done))
	s.metrics.exportTotal.With(l).Set(float64(total))
}

// ExportEnded removes the series of export job session.
func (s *Server) ExportEnded(session string) {
	l := prometheus.Labels{"session": session}
	s.metrics.exportDone.DeletePartialMatch(l)
	s.metrics.exportTotal.DeletePartialMatch(l)
}

// stampingCounter is a counter that also sets a gauge to the time of its
// last increment.
type stampingCounter struct {
	prometheus.Counter
	last prometheus.Gauge
}

func (c stampingCounter) Inc() {
	c.Counter.Inc()
	c.last.SetToCurrentTime()
}

func (c stampingCounter) Add(v float64) {
	c.Counter.Add(v)
	c.last.SetToCurrentTime()
}

// noteRole records that conn, a connection of peer, made a request that
// needs permission role: the role the peer plays on it. A connection may
// play several (a repository client that reads and pushes WAL); its roles
// end with it.
func (s *Server) noteRole(peer PeerID, conn *quic.Conn, role Perm) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.peerConns[peer]; m != nil {
		if _, ok := m[conn]; ok {
			m[conn] |= role
		}
	}
}

// roleNone is the role label of a connection that has made no request yet.
const roleNone = "none"

// peerCollector reports per-peer series from the server's live state at
// each scrape. A peer has series only while it holds connections, so their
// number is bounded by the peers connected (each in the trust list: others
// are refused in the handshake) times the roles (the permissions, and
// none), and none outlives its peer's connections.
type peerCollector struct {
	s                *Server
	conns, transfers *prometheus.Desc
}

func newPeerCollector(s *Server) peerCollector {
	return peerCollector{
		s: s,
		conns: prometheus.NewDesc("pgporter_mover_peer_connections",
			"Connections a peer holds open to this mover, by the role it plays on them: the permission their requests need (send, read, orchestrate, archive), or none before the first request. A connection that plays several roles counts in each.",
			[]string{"peer", "role"}, nil),
		transfers: prometheus.NewDesc("pgporter_mover_peer_transfers_active", "Transfers in progress from a peer into this mover (each needs the send permission).", []string{"peer"}, nil),
	}
}

func (c peerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.conns
	ch <- c.transfers
}

func (c peerCollector) Collect(ch chan<- prometheus.Metric) {
	type peerRole struct {
		peer PeerID
		role string
	}
	conns, transfers := map[peerRole]int{}, map[PeerID]int{}
	c.s.mu.Lock()
	for p, m := range c.s.peerConns {
		transfers[p] = 0
		for _, roles := range m {
			if roles == 0 {
				conns[peerRole{p, roleNone}]++
			}
			for _, r := range roles.Names() {
				conns[peerRole{p, r}]++
			}
		}
	}
	for _, a := range c.s.active {
		if _, ok := transfers[a.peer]; ok {
			transfers[a.peer]++
		}
	}
	c.s.mu.Unlock()
	for k, n := range conns {
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(n), k.peer.String(), k.role)
	}
	for p, n := range transfers {
		ch <- prometheus.MustNewConstMetric(c.transfers, prometheus.GaugeValue, float64(n), p.String())
	}
}
