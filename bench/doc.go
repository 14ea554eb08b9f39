// Package bench is the benchmark harness that compares pgporter with its
// peers (rsync, tar|zstd, pgBackRest) on the same data in the same run. Its
// figures are reported in docs/BENCHMARKS.md.
package bench
