package bench

import "github.com/pgporter/pgporter/internal/synth"

// The LAN scenario's synthetic dump (see internal/synth).
var (
	PgbenchRows = synth.PgbenchRows
	MD5Rows     = synth.MD5Rows
	MixedRows   = synth.MixedRows
)
