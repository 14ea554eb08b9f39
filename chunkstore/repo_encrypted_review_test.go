package chunkstore_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/internal/s3test"
)

// TestEncryptedRepoConfigRemoved guards against a downgrade: with the
// config and key files of an encrypted repository deleted, every reader
// and writer took it for a plain one. The store's open refused, but
// RecordRun wrote the outcome in the clear over the sealed one, and
// ListRepo and ReadStatus accepted restore points and records planted in
// the clear. A sealed store marker without a config is tampering.
func TestEncryptedRepoConfigRemoved(t *testing.T) {
	t.Setenv(crypt.PasswordEnv, "")
	os.Unsetenv(crypt.PasswordEnv)
	t.Run("dir", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "repo")
		testConfigRemoved(t, dir, func(name string) {
			require.NoError(t, os.RemoveAll(filepath.Join(dir, filepath.FromSlash(name))))
		}, func(name string) bool {
			_, err := os.Stat(filepath.Join(dir, filepath.FromSlash(name)))
			return err == nil
		})
	})
	t.Run("s3", func(t *testing.T) {
		srv := s3test.Shared(t)
		srv.SetEnv(t)
		bucket := srv.NewBucket(t)
		b, err := objstore.NewS3(srv.Client(t, srv.Endpoint), bucket, "repo", objstore.S3Options{})
		require.NoError(t, err)
		testConfigRemoved(t, "s3://"+bucket+"/repo", func(name string) {
			for o, err := range b.List(t.Context(), name) {
				require.NoError(t, err)
				require.NoError(t, b.Delete(t.Context(), o.Name))
			}
		}, func(name string) bool {
			for _, err := range b.List(t.Context(), name) {
				require.NoError(t, err)
				return true
			}
			return false
		})
	})
}

func testConfigRemoved(t *testing.T, url string, remove func(prefix string), exists func(prefix string) bool) {
	ctx := chunkstore.WithPasswordFile(t.Context(), passFile(t, "pass"))
	_, err := chunkstore.InitRepo(ctx, url, chunkstore.InitOptions{Passphrase: []byte("pass"), Key: crypt.KeyOptions{KDF: crypt.MinKDF}})
	require.NoError(t, err)
	r, err := chunkstore.OpenRepo(ctx, url, nil)
	require.NoError(t, err)
	_, err = r.Backup(ctx, fakeDataDir(t), chunkstore.BackupOptions{})
	require.NoError(t, err)
	require.NoError(t, r.Close())

	remove("config")
	remove("keys/")
	remove("status/")
	now := time.Now()
	err = chunkstore.RecordRun(t.Context(), url, chunkstore.Run{Op: chunkstore.OpBackup, Start: now, End: now, Err: errors.New("secret")})
	require.ErrorIs(t, err, crypt.ErrTampered)
	require.False(t, exists("status/"), "an outcome written in the clear")
	_, err = chunkstore.OpenRepo(t.Context(), url, nil)
	require.ErrorIs(t, err, crypt.ErrTampered)
	_, err = chunkstore.ListRepo(t.Context(), url)
	require.ErrorIs(t, err, crypt.ErrTampered)
	_, err = chunkstore.ReadStatus(t.Context(), url)
	require.ErrorIs(t, err, crypt.ErrTampered)
	_, err = chunkstore.InitRepo(ctx, url, chunkstore.InitOptions{Passphrase: []byte("pass"), Key: crypt.KeyOptions{KDF: crypt.MinKDF}})
	require.ErrorIs(t, err, chunkstore.ErrRepoExists, "init does not take over the sealed store")
}

// TestEncryptedInitRace guards against two inits at once on one place:
// each wrote a key file of its own master key, one config won, and the
// loser's key file stayed, so that the passphrase of both opened the
// loser's (in name order) about half the time and was refused as
// tampered. The loser removes a key file of its own that the config does
// not accept.
func TestEncryptedInitRace(t *testing.T) {
	t.Setenv(crypt.PasswordEnv, "")
	os.Unsetenv(crypt.PasswordEnv)
	ctx := chunkstore.WithPasswordFile(t.Context(), passFile(t, "pass"))
	for range 6 {
		dir := filepath.Join(t.TempDir(), "repo")
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range errs {
			wg.Go(func() {
				_, errs[i] = chunkstore.InitRepo(ctx, dir, chunkstore.InitOptions{Passphrase: []byte("pass"), Key: crypt.KeyOptions{KDF: crypt.MinKDF}})
			})
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
			} else {
				require.ErrorIs(t, err, chunkstore.ErrRepoExists)
			}
		}
		require.Equal(t, 1, ok, "one init creates the repository: %v", errs)
		r, err := chunkstore.OpenRepo(ctx, dir, nil)
		require.NoError(t, err)
		keys, err := r.ListKeys(ctx)
		require.NoError(t, err)
		require.NoError(t, r.Close())
		for _, k := range keys {
			// Each key file left opens the repository under the passphrase.
			require.NoError(t, k.Err)
			mk, err := k.File.Unlock([]byte("pass"))
			require.NoError(t, err)
			require.True(t, sameMasterKey(t, dir, mk), "key file %s holds another master key", k.Name)
		}
	}
}

// sameMasterKey reports whether mk opens the check of the config of the
// repository in dir: whether it is that repository's master key.
func sameMasterKey(t *testing.T, dir string, mk *crypt.MasterKey) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "config"))
	require.NoError(t, err)
	var c struct{ ID, Check string }
	require.NoError(t, json.Unmarshal(b, &c))
	sealed, err := base64.StdEncoding.DecodeString(c.Check)
	require.NoError(t, err)
	plain, err := mk.Open(nil, crypt.KindConfig, "config", sealed)
	return err == nil && string(plain) == c.ID
}
