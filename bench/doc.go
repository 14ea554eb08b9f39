// Package bench is the benchmark harness that compares pgporter with its
// peers (rsync, tar|zstd|nc, pg_dump+rsync and pgBackRest) on the same
// data and the same emulated links in one run (issue 17).
//
// A Scenario prepares data and links and names the Tools that do its job;
// Run runs every tool of a scenario interleaved over several repetitions and
// records a Measure per run. A Result goes to a JSON file, to lines in the
// Go benchmark format (for benchstat), to a Markdown table and to charts.
// The command is bench/cmd/pgporter-bench.
//
// It is not a library for pgporter itself: nothing outside bench/ imports it.
package bench
