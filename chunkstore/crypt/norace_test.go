//go:build !race

package crypt_test

const raceEnabled = false
