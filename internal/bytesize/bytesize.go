package bytesize

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"
)

// Format prints n bytes with an IEC unit: "512 B", "1.5 KiB", "82 MiB"
// (humanize.IBytes: one decimal below 10 of a unit, none above). A negative
// n keeps its sign.
func Format(n int64) string {
	if n < 0 {
		return "-" + humanize.IBytes(uint64(-n))
	}
	return humanize.IBytes(uint64(n))
}

// Rate prints n bytes over secs seconds as "12 MiB/s"; 0 seconds counts as
// a nanosecond, so an instant transfer prints a rate rather than a division
// by zero.
func Rate(n int64, secs float64) string {
	return Format(int64(float64(n)/max(secs, 1e-9))) + "/s"
}

// Parse reads "512K", "100M", "1.5G", "2T", with or without "B" or "iB"
// ("100MiB", "100MB": all powers of 1024, as Format prints them), or a plain
// number of bytes.
func Parse(s string) (int64, error) {
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
			t = strings.TrimSpace(t[:n-1])
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || v*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("size %q: want a number with an optional K, M, G or T suffix (powers of 1024)", s)
	}
	return int64(v * float64(mult)), nil
}
