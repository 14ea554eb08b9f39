package bench

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and a parenthesis, as a process may set.
	line := "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 150 50 7 3 20 0 1 0 100 1000 200"
	cpu, err := parseStatCPU([]byte(line))
	require.NoError(t, err)
	require.InDelta(t, 2.10, cpu, 1e-9, "utime+stime+cutime+cstime = 210 ticks")

	_, err = parseStatCPU([]byte("1234 (x) S 1 2"))
	require.ErrorContains(t, err, "short")
	_, err = parseStatCPU([]byte("no parenthesis"))
	require.ErrorContains(t, err, "malformed")
}

func TestProcSelf(t *testing.T) {
	// Burn a little CPU so the tick-granular figure is above zero.
	x := 0
	for i := range 200_000_000 {
		x ^= i
	}
	_ = x
	cpu, err := procCPU(os.Getpid())
	require.NoError(t, err)
	require.Greater(t, cpu, 0.0)
	hwm, err := procHWM(os.Getpid())
	require.NoError(t, err)
	require.Greater(t, hwm, int64(1<<20))
	has, err := hasChildren(os.Getpid())
	require.NoError(t, err)
	require.False(t, has)
}

func TestReadPeakRSS(t *testing.T) {
	p := filepath.Join(t.TempDir(), "rss")
	require.NoError(t, os.WriteFile(p, []byte("Command exited with non-zero status 1\n2048\n"), 0o644))
	rss, err := readPeakRSS(p)
	require.NoError(t, err)
	require.Equal(t, int64(2<<20), rss)
	require.NoError(t, os.WriteFile(p, []byte("x\n"), 0o644))
	_, err = readPeakRSS(p)
	require.Error(t, err)
}

func TestParseTxBytes(t *testing.T) {
	js := `[{"ifindex":2,"ifname":"eth0","stats64":{"rx":{"bytes":7,"packets":1},"tx":{"bytes":123456789,"packets":9}}}]`
	n, err := parseTxBytes([]byte(js))
	require.NoError(t, err)
	require.Equal(t, int64(123456789), n)
	_, err = parseTxBytes([]byte(`[]`))
	require.ErrorContains(t, err, "0 links")
}
