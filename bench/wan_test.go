package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMoveRows(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		k    int
		want string
	}{
		{"spread and appended", "a0\nb1\nc0\nd1\n", 2, "a0\nc0\nb0\nd0\n"},
		{"a last line without newline stays last", "a0\nb0\nc", 1, "a0\nb1\nc"},
		{"k above the lines moves each", "x\ny\n", 5, "0\n0\n"},
		{"none", "a\nb\n", 0, "a\nb\n"},
		{"empty", "", 3, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := string(moveRows([]byte(tc.in), tc.k))
			require.Equal(t, tc.want, got)
			require.Len(t, got, len(tc.in), "an update keeps the size")
		})
	}
}

func TestWriteUpdated(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	require.NoError(t, writeTree(a, 256<<10))
	require.NoError(t, writeUpdated(a, b, UpdatedRows))
	ents, err := os.ReadDir(a)
	require.NoError(t, err)
	require.Len(t, ents, 3)
	changed := 0
	for _, e := range ents {
		x, err := os.ReadFile(filepath.Join(a, e.Name()))
		require.NoError(t, err)
		y, err := os.ReadFile(filepath.Join(b, e.Name()))
		require.NoError(t, err)
		require.Len(t, y, len(x), e.Name())
		if !bytes.Equal(x, y) {
			changed++
			require.Equal(t, "3001.dat", e.Name(), "the largest file, pgbench rows, is updated")
			// 100 rows, each a changed copy at the end.
			lines := bytes.Split(y, []byte("\n"))
			require.Greater(t, len(lines), 2*UpdatedRows)
		}
		ai, err := os.Stat(filepath.Join(a, e.Name()))
		require.NoError(t, err)
		bi, err := os.Stat(filepath.Join(b, e.Name()))
		require.NoError(t, err)
		require.True(t, bi.ModTime().After(ai.ModTime()), "a later dump: rsync's quick check must not skip it")
	}
	require.Equal(t, 1, changed)
	n, err := changedBytes(a, b)
	require.NoError(t, err)
	require.Positive(t, n)
	require.NoError(t, sameTree(a, a))
	require.ErrorContains(t, sameTree(b, a), "3001.dat differs")
}

func TestDiffBytes(t *testing.T) {
	require.Equal(t, int64(0), diffBytes([]byte("abc"), []byte("abc")))
	require.Equal(t, int64(1), diffBytes([]byte("abc"), []byte("abd")))
	require.Equal(t, int64(3), diffBytes([]byte("abc"), []byte("abdxy")))
	require.Equal(t, int64(2), diffBytes(nil, []byte("xy")))
}

func TestSelectScenarios(t *testing.T) {
	all := scenarios(Options{}, &wanData{})
	names := func(ss []Scenario) []string {
		var out []string
		for _, s := range ss {
			out = append(out, s.Name())
		}
		return out
	}
	got, err := selectScenarios(all, []string{"delta", "wan", "outage"})
	require.NoError(t, err)
	require.Equal(t, []string{"wan", "wan-lossy", "outage", "delta"}, names(got), "a name brings its variants, in the harness's order")
	got, err = selectScenarios(all, []string{"wan-lossy"})
	require.NoError(t, err)
	require.Equal(t, []string{"wan-lossy"}, names(got))
	got, err = selectScenarios(all, nil)
	require.NoError(t, err)
	require.Len(t, got, len(all))
	_, err = selectScenarios(all, []string{"wa"})
	require.ErrorContains(t, err, `unknown scenario "wa"`)
}
