//go:build race

package mover

// raceEnabled reports whether the tests run under the race detector, where
// the heaviest tests shrink or leave their work to the plain pass (make
// test runs both).
const raceEnabled = true
