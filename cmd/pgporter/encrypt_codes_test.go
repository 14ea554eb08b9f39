package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/crypt"
)

// TestEncryptedExitCodes guards the exit codes of an encrypted
// repository's failures that were a generic 1: a --repo-password-file that
// does not exist or is a directory (a usage mistake, 2), a key remove of an
// ID the repository lacks (8), a config whose key files were removed (7),
// and a sealed store whose config was removed (7, where it said to give a
// passphrase and, given one, to drop it).
func TestEncryptedExitCodes(t *testing.T) {
	repo, pass := newEncryptedRepo(t)

	code, _, errs := runCLI(t, "restore-points", "--repo", repo, "--repo-password-file", filepath.Join(t.TempDir(), "nosuch"))
	require.Equal(t, exitUsage, code, errs)
	code, _, errs = runCLI(t, "restore-points", "--repo", repo, "--repo-password-file", t.TempDir())
	require.Equal(t, exitUsage, code, errs)
	code, _, errs = runCLI(t, "key", "remove", "--repo", repo, "--repo-password-file", pass, "0123456789abcdef")
	require.Equal(t, exitNotFound, code, errs)

	keys := filepath.Join(t.TempDir(), "keys")
	require.NoError(t, os.Rename(filepath.Join(repo, "keys"), keys))
	code, _, errs = runCLI(t, "restore-points", "--repo", repo, "--repo-password-file", pass)
	require.Equal(t, exitVerification, code, errs)
	require.NoError(t, os.Rename(keys, filepath.Join(repo, "keys")))

	require.NoError(t, os.Remove(filepath.Join(repo, "config")))
	src, _ := fakeDataDir(t)
	for _, args := range [][]string{
		{"restore-points", "--repo", repo},
		{"restore-points", "--repo", repo, "--repo-password-file", pass},
		{"backup", "--repo", repo, "--pgdata", src},
	} {
		code, _, errs = runCLI(t, args...)
		require.Equal(t, exitVerification, code, "%v: %s", args, errs)
		require.Contains(t, errs, "no config", "%v", args)
	}
}

// TestEncryptedRepoCopyPlain guards against repo copy of an encrypted
// repository creating a plain --to: every chunk, restore point and system
// ID went into it in the clear, asked for by nobody. A --to made first by
// repo init, plain or encrypted, is copied into.
func TestEncryptedRepoCopyPlain(t *testing.T) {
	repo, pass := newEncryptedRepo(t)
	src, _ := fakeDataDir(t)
	code, _, errs := runCLI(t, "backup", "--repo", repo, "--pgdata", src, "--repo-password-file", pass)
	require.Equal(t, 0, code, errs)

	to := filepath.Join(t.TempDir(), "copy")
	code, _, errs = runCLI(t, "repo", "copy", "--from", repo, "--to", to, "--from-password-file", pass)
	require.Equal(t, exitUsage, code, errs)
	require.NoDirExists(t, to)
	code, _, errs = runCLI(t, "repo", "init", "--repo", to)
	require.Equal(t, 0, code, errs)
	code, out, errs := runCLI(t, "repo", "copy", "--from", repo, "--to", to, "--from-password-file", pass)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "1 restore points copied")
}

// newEncryptedRepo makes an encrypted directory repository with the
// passphrase in the file pass, and clears the passphrase variables for the
// test, so that only the flags given supply one.
func newEncryptedRepo(t *testing.T) (repo, pass string) {
	t.Helper()
	t.Setenv(crypt.PasswordEnv, "")
	os.Unsetenv(crypt.PasswordEnv)
	t.Setenv(chunkstore.PasswordFileEnv, "")
	os.Unsetenv(chunkstore.PasswordFileEnv)
	repo = filepath.Join(t.TempDir(), "repo")
	pass = writePass(t, "first passphrase")
	_, err := chunkstore.InitRepo(t.Context(), repo, chunkstore.InitOptions{Passphrase: []byte("first passphrase"), Key: crypt.KeyOptions{KDF: crypt.MinKDF}})
	require.NoError(t, err)
	return repo, pass
}

// TestEncryptedWeakKeyExitCodes guards the exit codes of a repository
// holding a key file below the KDF floor (testdata/weak-key: one a build
// never writes, planted by whoever can write key files): a wrong
// passphrase was a usage mistake (2), not 5, because the unlock's error
// names the weak key file it skipped; and a repository whose only key file
// is weak was 2 too, where an altered or planted key file is 7. The weak
// key file is listed with why and can be removed.
func TestEncryptedWeakKeyExitCodes(t *testing.T) {
	repo, pass := newEncryptedRepo(t)
	const weak = "cccccb7bd562d2fc"
	b, err := os.ReadFile(filepath.Join("testdata", "weak-key", weak))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(repo, "keys", weak), b, 0o600))

	code, _, errs := runCLI(t, "restore-points", "--repo", repo, "--repo-password-file", writePass(t, "wrong"))
	require.Equal(t, exitPermission, code, errs)
	require.Contains(t, errs, "wrong passphrase")
	code, out, errs := runCLI(t, "key", "list", "--repo", repo, "--repo-password-file", pass)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, weak)
	require.Contains(t, out, "below")

	keys := filepath.Join(t.TempDir(), "keys")
	require.NoError(t, os.Rename(filepath.Join(repo, "keys"), keys))
	require.NoError(t, os.Mkdir(filepath.Join(repo, "keys"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(repo, "keys", weak), b, 0o600))
	code, _, errs = runCLI(t, "restore-points", "--repo", repo, "--repo-password-file", pass)
	require.Equal(t, exitVerification, code, errs)
	require.NoError(t, os.RemoveAll(filepath.Join(repo, "keys")))
	require.NoError(t, os.Rename(keys, filepath.Join(repo, "keys")))

	code, _, errs = runCLI(t, "key", "remove", "--repo", repo, "--repo-password-file", pass, weak)
	require.Equal(t, 0, code, errs)
	require.NoFileExists(t, filepath.Join(repo, "keys", weak))
}
