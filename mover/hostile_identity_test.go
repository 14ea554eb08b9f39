package mover

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLoadIdentityRefusesExposedKey guards against a private key that group
// or others can read (issue 15): whoever reads it can act as this mover.
// The error names the file and the command that fixes it; 0600 and 0400
// load.
func TestLoadIdentityRefusesExposedKey(t *testing.T) {
	home := t.TempDir()
	_, _, err := InitIdentity(home)
	require.NoError(t, err)
	key := filepath.Join(IdentityDir(home), keyFileName)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660} {
		require.NoError(t, os.Chmod(key, mode))
		_, err := LoadIdentity(home)
		require.ErrorIs(t, err, ErrKeyExposed, "mode %04o", mode)
		require.ErrorContains(t, err, key)
		require.ErrorContains(t, err, "chmod 600 "+key)
		_, err = NewServer(ServerOptions{Home: home, Listen: "127.0.0.1:0"})
		require.ErrorIs(t, err, ErrKeyExposed, "a mover does not start with it")
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		require.NoError(t, os.Chmod(key, mode))
		_, err := LoadIdentity(home)
		require.NoError(t, err, "mode %04o", mode)
	}
}
