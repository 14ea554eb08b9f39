package bytesize

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFormat(t *testing.T) {
	for _, c := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1536, "1.5 KiB"},
		{82854982, "79 MiB"},
		{3 << 30, "3.0 GiB"},
		{-2048, "-2.0 KiB"},
	} {
		require.Equal(t, c.want, Format(c.n), "%d", c.n)
	}
	require.Equal(t, "10 MiB/s", Rate(20<<20, 2))
	require.Equal(t, "0 B/s", Rate(0, 0))
}

func TestParse(t *testing.T) {
	for in, want := range map[string]int64{
		"512": 512, "512K": 512 << 10, "100M": 100 << 20, "100MiB": 100 << 20, "100mb": 100 << 20,
		"1.5G": 3 << 29, "2T": 2 << 40, " 7 M ": 7 << 20,
	} {
		got, err := Parse(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "M", "-1", "ten", "1X", "9999999T"} {
		_, err := Parse(in)
		require.Error(t, err, in)
	}
}
