package crypt_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/crypt"
)

func TestReadPassphraseFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	for _, c := range []struct {
		name, content, want string
	}{
		{"plain", "secret", "secret"},
		{"newline", "secret\n", "secret"},
		{"crlf", "secret\r\n", "secret"},
		{"only one line ending goes", "secret\n\n", "secret\n"},
		{"spaces are the passphrase's", "  secret words \n", "  secret words "},
		{"a lone carriage return stays", "secret\r", "secret\r"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := crypt.ReadPassphraseFile(write(c.name, c.content))
			require.NoError(t, err)
			require.Equal(t, c.want, string(got))
		})
	}
	for _, c := range []struct {
		name, content string
	}{{"empty", ""}, {"newline only", "\n"}, {"crlf only", "\r\n"}} {
		t.Run(c.name, func(t *testing.T) {
			_, err := crypt.ReadPassphraseFile(write(c.name, c.content))
			require.ErrorIs(t, err, crypt.ErrEmptyPassphrase)
			require.ErrorContains(t, err, c.name)
		})
	}

	missing := filepath.Join(dir, "absent")
	_, err := crypt.ReadPassphraseFile(missing)
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.ErrorContains(t, err, "password file "+missing+" does not exist")

	_, err = crypt.ReadPassphraseFile(dir)
	require.ErrorContains(t, err, "is a directory")

	_, err = crypt.ReadPassphraseFile(write("huge", strings.Repeat("x", 1<<20)))
	require.ErrorContains(t, err, "not a passphrase")
}

func TestPassphraseFromEnv(t *testing.T) {
	t.Setenv(crypt.PasswordEnv, "from env")
	got, ok, err := crypt.PassphraseFromEnv()
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "from env", string(got))

	t.Setenv(crypt.PasswordEnv, "")
	_, ok, err = crypt.PassphraseFromEnv()
	require.True(t, ok)
	require.ErrorIs(t, err, crypt.ErrEmptyPassphrase)
	require.ErrorContains(t, err, crypt.PasswordEnv)

	require.NoError(t, os.Unsetenv(crypt.PasswordEnv))
	_, ok, err = crypt.PassphraseFromEnv()
	require.NoError(t, err)
	require.False(t, ok)
}

func TestResolvePassphrase(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pass")
	require.NoError(t, os.WriteFile(file, []byte("from file\n"), 0o600))

	t.Setenv(crypt.PasswordEnv, "from env")
	got, err := crypt.ResolvePassphrase(file)
	require.NoError(t, err)
	require.Equal(t, "from file", string(got), "--repo-password-file wins over the environment")
	got, err = crypt.ResolvePassphrase("")
	require.NoError(t, err)
	require.Equal(t, "from env", string(got))

	_, err = crypt.ResolvePassphrase(file + ".absent")
	require.ErrorIs(t, err, fs.ErrNotExist, "a missing file falls back to the environment")

	require.NoError(t, os.Unsetenv(crypt.PasswordEnv))
	_, err = crypt.ResolvePassphrase("")
	require.ErrorIs(t, err, crypt.ErrNoPassphrase)
	require.ErrorContains(t, err, "--repo-password-file")
}
