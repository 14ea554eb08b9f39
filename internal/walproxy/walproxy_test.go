package walproxy_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/walproxy"
)

// A file the archive holds arrives whole; one it lacks is ErrMissing (the
// restore_command's end of the archive); any other failure is an error
// that is not; a name that is no WAL file's is refused by the server.
func TestProxy(t *testing.T) {
	seg := bytes.Repeat([]byte("wal "), 1<<18)
	asked := map[string]int{}
	fetch := func(_ context.Context, name, dst string) error {
		asked[name]++
		switch name {
		case "000000010000000000000001":
			return os.WriteFile(dst, seg, 0o600)
		case "000000010000000000000002":
			return errors.New("the repository mover is unreachable")
		}
		return chunkstore.ErrWALNotFound
	}
	s, err := walproxy.Start(t.Context(), fetch, -1, -1, slog.Default())
	require.NoError(t, err)
	fi, err := os.Stat(s.Socket())
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "only its owner (the instance's OS user) and root connect")

	dst := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	require.NoError(t, walproxy.Fetch(t.Context(), s.Socket(), "000000010000000000000001", dst))
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(seg, got))

	err = walproxy.Fetch(t.Context(), s.Socket(), "000000010000000000000003", dst)
	require.ErrorIs(t, err, walproxy.ErrMissing)
	require.ErrorIs(t, err, chunkstore.ErrWALNotFound)

	err = walproxy.Fetch(t.Context(), s.Socket(), "000000010000000000000002", dst)
	require.ErrorContains(t, err, "unreachable")
	require.NotErrorIs(t, err, chunkstore.ErrWALNotFound, "a failure is not the end of the archive")

	err = walproxy.Fetch(t.Context(), s.Socket(), "../../etc/passwd", dst)
	require.ErrorContains(t, err, "not a WAL file name")
	require.Equal(t, map[string]int{"000000010000000000000001": 1, "000000010000000000000002": 1, "000000010000000000000003": 1}, asked)

	sock := s.Socket()
	require.NoError(t, s.Close())
	_, err = os.Stat(filepath.Dir(sock))
	require.ErrorIs(t, err, os.ErrNotExist, "nothing is left")
	require.Error(t, walproxy.Fetch(t.Context(), sock, "000000010000000000000001", dst))
}
