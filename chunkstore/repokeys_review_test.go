package chunkstore_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/internal/s3test"
)

// TestEncryptedInitKilledAfterConfig guards against an init killed between
// its config and its store: ListRepo found no repository there (so key
// list, key add, restore-points and repo copy --to refused it), and a
// rerun of the init found the config and refused it as a repository that
// exists, for good. A rerun under a passphrase that opens it now makes the
// store; another passphrase is still refused.
func TestEncryptedInitKilledAfterConfig(t *testing.T) {
	t.Setenv(crypt.PasswordEnv, "")
	os.Unsetenv(crypt.PasswordEnv)
	t.Run("dir", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "repo")
		testInitKilledAfterConfig(t, dir, func() {
			// What the init had written: its key file and its config
			// (and the keys directory), nothing of the store.
			for _, sub := range []string{"chunks", "points", "locks"} {
				require.NoError(t, os.RemoveAll(filepath.Join(dir, sub)))
			}
		})
	})
	t.Run("s3", func(t *testing.T) {
		srv := s3test.Shared(t)
		srv.SetEnv(t)
		bucket := srv.NewBucket(t)
		b, err := objstore.NewS3(srv.Client(t, srv.Endpoint), bucket, "repo", objstore.S3Options{})
		require.NoError(t, err)
		testInitKilledAfterConfig(t, "s3://"+bucket+"/repo", func() {
			for o, err := range b.List(t.Context(), "") {
				require.NoError(t, err)
				if o.Name != "config" && filepath.Dir(o.Name) != "keys" {
					require.NoError(t, b.Delete(t.Context(), o.Name))
				}
			}
		})
	})
}

func testInitKilledAfterConfig(t *testing.T, url string, killedAfterConfig func()) {
	ctx := chunkstore.WithPasswordFile(t.Context(), passFile(t, "pass"))
	opts := chunkstore.InitOptions{Passphrase: []byte("pass"), Key: crypt.KeyOptions{KDF: crypt.MinKDF}}
	keyID, err := chunkstore.InitRepo(ctx, url, opts)
	require.NoError(t, err)
	killedAfterConfig()
	_, err = chunkstore.ListRepo(ctx, url)
	require.ErrorIs(t, err, chunkstore.ErrNotRepo, "the state of an init killed after its config")

	_, err = chunkstore.InitRepo(ctx, url, chunkstore.InitOptions{Passphrase: []byte("other"), Key: opts.Key})
	require.ErrorIs(t, err, chunkstore.ErrRepoExists, "another passphrase")
	require.ErrorIs(t, err, crypt.ErrWrongPassphrase)

	again, err := chunkstore.InitRepo(ctx, url, opts)
	require.NoError(t, err, "the rerun")
	require.Equal(t, keyID, again, "the rerun uses the key file it left")
	rps, err := chunkstore.ListRepo(ctx, url)
	require.NoError(t, err)
	require.Empty(t, rps)
	r, err := chunkstore.OpenRepoWith(ctx, url, chunkstore.RepoOptions{Lock: chunkstore.LockShared})
	require.NoError(t, err)
	require.True(t, r.Encrypted())
	require.Equal(t, keyID, r.KeyID())
	keys, err := r.ListKeys(ctx)
	require.NoError(t, err)
	require.Len(t, keys, 1)
	require.NoError(t, r.Close())

	_, err = chunkstore.InitRepo(context.WithoutCancel(ctx), url, opts)
	require.ErrorIs(t, err, chunkstore.ErrRepoExists, "once finished, a repository that exists")
}
