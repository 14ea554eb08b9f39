//go:build !race

package mover

const raceEnabled = false
