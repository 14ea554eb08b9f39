package bench

import "time"

// Measure is what one run of a tool measured. A zero field was not measured
// (no real run moves zero bytes or takes zero CPU).
type Measure struct {
	Wall time.Duration `json:"wall_ns"`
	// CPUSender and CPUReceiver are user+system CPU-seconds of each side's
	// process trees over the run. An in-process scenario fills CPUSender only.
	CPUSender   float64 `json:"cpu_sender_s,omitempty"`
	CPUReceiver float64 `json:"cpu_receiver_s,omitempty"`
	// WireBytes is what crossed the link from sender to receiver, IP headers
	// included (the sender's interface counter).
	WireBytes int64 `json:"wire_bytes,omitempty"`
	// RSSSender and RSSReceiver are peak resident set sizes in bytes.
	RSSSender   int64 `json:"rss_sender_bytes,omitempty"`
	RSSReceiver int64 `json:"rss_receiver_bytes,omitempty"`
	// Extra holds tool-specific figures, e.g. "ratio" of a codec or
	// "reported_wire_bytes" of pgporter send --json.
	Extra map[string]float64 `json:"extra,omitempty"`
}
