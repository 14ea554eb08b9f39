package chunkstore

// Test hooks, in package chunkstore_test's reach.

// PruneCrashPoints are the points of Prune that SetPruneCrashHook's
// function is called at.
var PruneCrashPoints = pruneCrashPoints

// SetPruneCrashHook makes Prune call f at each of PruneCrashPoints.
func SetPruneCrashHook(f func(point string)) { pruneCrashHook = f }
