//go:build race

package crypt_test

// raceEnabled reports whether the tests run under the race detector, whose
// sync.Pool drops items at random: allocation counts mean nothing there.
const raceEnabled = true
