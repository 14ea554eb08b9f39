package main

import (
	"fmt"
	"github.com/pgporter/pgporter/mover"
	"strconv"
	"strings"
)

// parseSize reads "512K", "100M", "1.5G", "2T" (powers of 1024) or bytes.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("size %q: want a number with an optional K, M, G or T suffix", s)
	}
	return int64(v * float64(mult)), nil
}

// humanSize prints n bytes with a binary unit.
func humanSize(n int64) string { return mover.HumanBytes(n) }
