package chunkstore

import "time"

// Test hooks, in package chunkstore_test's reach.

// PruneCrashPoints are the points of Prune that SetPruneCrashHook's
// function is called at.
var PruneCrashPoints = pruneCrashPoints

// SetPruneCrashHook makes Prune call f at each of PruneCrashPoints.
func SetPruneCrashHook(f func(point string)) { pruneCrashHook = f }

// SetStaleUploadAge sets how old a multipart upload must be for Prune to
// abort it, until t's end.
func SetStaleUploadAge(t interface{ Cleanup(func()) }, age time.Duration) {
	old := staleUploadAge
	staleUploadAge = age
	t.Cleanup(func() { staleUploadAge = old })
}

// SetReadAhead turns l's block read-ahead on or off (blockcache.go), for
// the benchmark that compares them.
func SetReadAhead(l *Local, on bool) { l.blocks.noReadAhead = !on }
