package mover

import (
	"github.com/pgporter/pgporter/internal/buildinfo"
	"github.com/prometheus/client_golang/prometheus"
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
}

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
	bi := buildinfo.Get()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "pgporter", Name: "build_info", Help: "This build: always 1, with its release, commit and Go version as labels."}, []string{"version", "commit", "goversion"})
	build.WithLabelValues(bi.Version, bi.Commit, bi.GoVersion).Set(1)
	m.reg.MustRegister(build)
	m.reg.MustRegister(m.transfersOpen, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}
