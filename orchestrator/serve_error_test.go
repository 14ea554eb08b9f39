package orchestrator

import (
	"errors"
	"fmt"
	"testing"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/pebbledb"
	"github.com/stretchr/testify/require"
)

// TestServeErrorRelay: the serve process's error reaches Publish with its
// text and, for the errors the CLI gives their own exit code, its identity.
func TestServeErrorRelay(t *testing.T) {
	for _, err := range []error{
		fmt.Errorf("opening repository: the repository /r is held open by another process: %w", &pebbledb.LockedError{Dir: "/r/index", PID: 42}),
		fmt.Errorf("repository /r: %w", chunkstore.ErrNotRepo),
		errors.New("mounting: fusermount3 failed"),
	} {
		got := parseServeError(formatServeError(err))
		require.Equal(t, err.Error(), got.Error())
		for _, k := range errorKinds {
			require.Equal(t, errors.Is(err, k.err), errors.Is(got, k.err), k.name)
		}
	}
}
