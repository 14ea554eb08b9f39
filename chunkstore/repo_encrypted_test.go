package chunkstore_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/chunkstore/storetest"
	"github.com/pgporter/pgporter/internal/s3test"
)

// encryptedRepo is a repository under test: where it is, and every byte
// it holds (files or objects), for the checks that nothing is in the clear.
type encryptedRepo struct {
	url   string
	files func(t *testing.T) map[string][]byte
}

// passFile writes passphrase to a file of its own.
func passFile(t *testing.T, passphrase string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pass")
	require.NoError(t, os.WriteFile(p, []byte(passphrase+"\n"), 0o600))
	return p
}

// TestEncryptedRepo is a whole encrypted repository's life, in a directory
// and in a bucket: init, backup, WAL, the listings that open nothing
// (ListRepo, ReadHealth, ReadStatus, WAL coverage), keys added and
// removed, forget and prune, check. No file or object holds a chunk ID, a
// system identifier, or a recorded error's text in the clear; a wrong, a
// missing and a superfluous passphrase are each refused with their own
// error.
func TestEncryptedRepo(t *testing.T) {
	t.Setenv(crypt.PasswordEnv, "") // set but empty would be an error: unset it
	os.Unsetenv(crypt.PasswordEnv)
	t.Run("dir", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "repo")
		testEncryptedRepo(t, encryptedRepo{url: dir, files: func(t *testing.T) map[string][]byte {
			out := map[string][]byte{}
			require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
				if err != nil || !d.Type().IsRegular() {
					return err
				}
				b, err := os.ReadFile(p)
				out[p] = b
				return err
			}))
			return out
		}})
	})
	t.Run("s3", func(t *testing.T) {
		srv := s3test.Shared(t)
		srv.SetEnv(t)
		bucket := srv.NewBucket(t)
		b, err := objstore.NewS3(srv.Client(t, srv.Endpoint), bucket, "repo", objstore.S3Options{})
		require.NoError(t, err)
		testEncryptedRepo(t, encryptedRepo{url: "s3://" + bucket + "/repo", files: func(t *testing.T) map[string][]byte {
			out := map[string][]byte{}
			for o, err := range b.List(t.Context(), "") {
				require.NoError(t, err)
				data, err := b.Get(t.Context(), o.Name, nil)
				require.NoError(t, err)
				out[o.Name] = data
			}
			return out
		}})
	})
}

func testEncryptedRepo(t *testing.T, repo encryptedRepo) {
	pass := passFile(t, "correct horse battery staple")
	ctx := chunkstore.WithPasswordFile(t.Context(), pass)
	fast := crypt.KeyOptions{KDF: crypt.MinKDF}

	_, err := chunkstore.InitRepo(ctx, repo.url, chunkstore.InitOptions{Passphrase: []byte("correct horse battery staple"), Key: fast})
	require.NoError(t, err)
	_, err = chunkstore.InitRepo(ctx, repo.url, chunkstore.InitOptions{Passphrase: []byte("another"), Key: fast})
	require.ErrorIs(t, err, chunkstore.ErrRepoExists)

	// Refusals: no passphrase, a wrong one.
	_, err = chunkstore.OpenRepo(t.Context(), repo.url, nil)
	require.ErrorIs(t, err, crypt.ErrNoPassphrase)
	_, err = chunkstore.ListRepo(t.Context(), repo.url)
	require.ErrorIs(t, err, crypt.ErrNoPassphrase)
	_, err = chunkstore.OpenRepo(chunkstore.WithPasswordFile(t.Context(), passFile(t, "wrong")), repo.url, nil)
	require.ErrorIs(t, err, crypt.ErrWrongPassphrase)

	// A backup, a WAL segment, a recorded failure.
	src := fakeDataDir(t)
	r, err := chunkstore.OpenRepo(ctx, repo.url, nil)
	require.NoError(t, err)
	require.True(t, r.Encrypted())
	first, err := r.Backup(ctx, src, chunkstore.BackupOptions{SourceHost: "db-secret-host"})
	require.NoError(t, err)
	nodes := checkRestorePoint(t, r, first, src)
	require.NoError(t, r.Close())
	// As wal-push does it: no lock, packs of its own.
	r, err = chunkstore.OpenRepoWith(ctx, repo.url, chunkstore.RepoOptions{Lock: chunkstore.LockNone, Store: chunkstore.LocalOptions{WriteOnly: true}})
	require.NoError(t, err)
	_, err = r.PushWAL(ctx, walSegment(t, t.TempDir(), "000000010000000000000005", 3))
	require.NoError(t, err)
	require.NoError(t, r.Close())
	const secretErr = "database payroll_secret is gone"
	now := time.Now()
	require.NoError(t, chunkstore.RecordRun(ctx, repo.url, chunkstore.Run{Op: chunkstore.OpBackup, Start: now, End: now, Err: errors.New(secretErr)}))

	// What opens nothing reads it with the passphrase.
	rps, err := chunkstore.ListRepo(ctx, repo.url)
	require.NoError(t, err)
	require.Len(t, rps, 1)
	require.Equal(t, first.ID, rps[0].ID)
	h, err := chunkstore.ReadHealth(ctx, repo.url)
	require.NoError(t, err)
	require.Equal(t, 1, h.RestorePoints)
	require.Equal(t, "000000010000000000000005", h.WAL.Last)
	require.Contains(t, h.Ops[chunkstore.OpBackup].LastError, secretErr)

	// Nothing in the clear: chunk IDs (binary or hex), the system ID, the
	// source host, the recorded error.
	secrets := [][]byte{[]byte(first.SystemID), []byte("db-secret-host"), []byte("payroll_secret")}
	for _, id := range first.Tree {
		secrets = append(secrets, id[:], []byte(hex.EncodeToString(id[:])))
	}
	for _, n := range nodes {
		for _, c := range n.Chunks {
			secrets = append(secrets, c.ID[:], []byte(hex.EncodeToString(c.ID[:])))
		}
	}
	files := repo.files(t)
	require.NotEmpty(t, files)
	for name, b := range files {
		for _, s := range secrets {
			require.False(t, bytes.Contains(b, s), "%s holds %q in the clear", name, s)
		}
	}

	// Keys: a second passphrase opens it; the last key is never removed.
	r, err = chunkstore.OpenRepo(ctx, repo.url, nil)
	require.NoError(t, err)
	firstKey := r.KeyID()
	kf, err := r.AddKey(ctx, []byte("second passphrase"), fast)
	require.NoError(t, err)
	keys, err := r.ListKeys(ctx)
	require.NoError(t, err)
	require.Len(t, keys, 2)
	require.Error(t, r.RemoveKey(ctx, firstKey), "a key is removed under the exclusive lock only")
	require.NoError(t, r.Close())
	second := chunkstore.WithPasswordFile(t.Context(), passFile(t, "second passphrase"))
	ex, err := chunkstore.OpenRepoWith(second, repo.url, chunkstore.RepoOptions{Lock: chunkstore.LockExclusive})
	require.NoError(t, err)
	require.Equal(t, kf.ID, ex.KeyID())
	require.NoError(t, ex.RemoveKey(ctx, firstKey))
	require.ErrorIs(t, ex.RemoveKey(ctx, kf.ID), crypt.ErrLastKey)
	require.NoError(t, ex.Close())
	_, err = chunkstore.ListRepo(chunkstore.WithPasswordFile(t.Context(), passFile(t, "correct horse battery staple")), repo.url)
	require.ErrorIs(t, err, crypt.ErrWrongPassphrase, "a removed passphrase stops working, in this process too")

	// Forget and prune: the second backup shares little with the first.
	rnd := storetest.RandomBytes(rand.New(rand.NewPCG(9, 9)), 3<<20)
	require.NoError(t, os.WriteFile(filepath.Join(src, "base/5/16384"), rnd, 0o600))
	r, err = chunkstore.OpenRepo(second, repo.url, nil)
	require.NoError(t, err)
	kept, err := r.Backup(second, src, chunkstore.BackupOptions{})
	require.NoError(t, err)
	require.NoError(t, r.Close())
	ex, err = chunkstore.OpenRepoWith(second, repo.url, chunkstore.RepoOptions{Lock: chunkstore.LockExclusive})
	require.NoError(t, err)
	require.NoError(t, ex.Forget([]chunkstore.RestorePoint{*first}))
	st, err := ex.Prune(second, false)
	require.NoError(t, err)
	require.Positive(t, st.DeadChunks)
	require.Positive(t, st.PacksDeleted+st.PacksRepacked)
	require.NoError(t, ex.Close())
	r, err = chunkstore.OpenRepo(second, repo.url, nil)
	require.NoError(t, err)
	defer r.Close()
	rep, err := r.Check(second, chunkstore.CheckOptions{ReadData: true})
	require.NoError(t, err)
	require.Empty(t, rep.Problems)
	require.Equal(t, 1, rep.RestorePoints)
	checkRestorePoint(t, r, kept, src)
}

// TestEncryptedRepoTamper: restore points and WAL records swapped, or
// planted in the clear, are refused as tampered, never read.
func TestEncryptedRepoTamper(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	pass := passFile(t, "pass")
	ctx := chunkstore.WithPasswordFile(t.Context(), pass)
	_, err := chunkstore.InitRepo(ctx, dir, chunkstore.InitOptions{Passphrase: []byte("pass"), Key: crypt.KeyOptions{KDF: crypt.MinKDF}})
	require.NoError(t, err)
	r, err := chunkstore.OpenRepo(ctx, dir, nil)
	require.NoError(t, err)
	src := fakeDataDir(t)
	a, err := r.Backup(ctx, src, chunkstore.BackupOptions{})
	require.NoError(t, err)
	b, err := r.Backup(ctx, src, chunkstore.BackupOptions{})
	require.NoError(t, err)
	for _, n := range []string{"000000010000000000000001", "000000010000000000000002"} {
		_, err = r.PushWAL(ctx, walSegment(t, t.TempDir(), n, 1))
		require.NoError(t, err)
	}
	require.NoError(t, r.Close())

	swap := func(p, q string) {
		pb, err := os.ReadFile(p)
		require.NoError(t, err)
		qb, err := os.ReadFile(q)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(p, qb, 0o644))
		require.NoError(t, os.WriteFile(q, pb, 0o644))
	}
	pa, pb := filepath.Join(dir, "points", a.ID+".json"), filepath.Join(dir, "points", b.ID+".json")
	swap(pa, pb)
	_, err = chunkstore.ListRepo(ctx, dir)
	require.ErrorIs(t, err, crypt.ErrTampered, "swapped restore points")
	swap(pa, pb)
	_, err = chunkstore.ListRepo(ctx, dir)
	require.NoError(t, err)

	// A plain restore point planted beside the sealed ones.
	plain := []byte(`{"format":1,"id":"rp-20260101T000000Z-000000"}`)
	planted := filepath.Join(dir, "points", "rp-20260101T000000Z-000000.json")
	require.NoError(t, os.WriteFile(planted, plain, 0o644))
	_, err = chunkstore.ListRepo(ctx, dir)
	require.ErrorIs(t, err, crypt.ErrTampered, "a restore point in the clear")
	require.NoError(t, os.Remove(planted))

	wals, err := filepath.Glob(filepath.Join(dir, "wal", "*", "*.json"))
	require.NoError(t, err)
	require.Len(t, wals, 2)
	swap(wals[0], wals[1])
	r, err = chunkstore.OpenRepo(ctx, dir, nil)
	require.NoError(t, err)
	defer r.Close()
	_, err = r.WALRecord("000000010000000000000001")
	require.ErrorIs(t, err, crypt.ErrTampered, "swapped WAL records")
	err = r.FetchWAL(ctx, "000000010000000000000002", filepath.Join(t.TempDir(), "x"))
	require.ErrorIs(t, err, crypt.ErrTampered)
}

// TestEncryptedRepoRefusals: a --password-file for a plain repository, or
// for one that does not exist, is refused, and creates nothing; key files
// left by an interrupted init are named as such.
func TestEncryptedRepoRefusals(t *testing.T) {
	t.Setenv(crypt.PasswordEnv, "")
	os.Unsetenv(crypt.PasswordEnv)
	ctx := chunkstore.WithPasswordFile(t.Context(), passFile(t, "pass"))
	missing := filepath.Join(t.TempDir(), "repo")
	_, err := chunkstore.OpenRepo(ctx, missing, nil)
	require.ErrorIs(t, err, chunkstore.ErrPasswordForPlain)
	require.NoDirExists(t, missing, "a refused open creates nothing")

	plain := filepath.Join(t.TempDir(), "plain")
	r, err := chunkstore.OpenRepo(t.Context(), plain, nil)
	require.NoError(t, err)
	require.False(t, r.Encrypted())
	require.NoError(t, r.Close())
	_, err = chunkstore.OpenRepo(ctx, plain, nil)
	require.ErrorIs(t, err, chunkstore.ErrPasswordForPlain)
	_, err = chunkstore.InitRepo(ctx, plain, chunkstore.InitOptions{Passphrase: []byte("pass"), Key: crypt.KeyOptions{KDF: crypt.MinKDF}})
	require.ErrorIs(t, err, chunkstore.ErrRepoExists)

	// Key files without a config: an init that stopped halfway.
	half := filepath.Join(t.TempDir(), "half")
	_, _, err = crypt.InitKeys(t.Context(), crypt.DirKeys{Dir: filepath.Join(half, "keys")}, []byte("pass"), crypt.KeyOptions{KDF: crypt.MinKDF})
	require.NoError(t, err)
	_, err = chunkstore.OpenRepo(ctx, half, nil)
	require.ErrorContains(t, err, "interrupted")
	// Run again, init finishes with the key files it left.
	_, err = chunkstore.InitRepo(ctx, half, chunkstore.InitOptions{Passphrase: []byte("pass")})
	require.NoError(t, err)
	r, err = chunkstore.OpenRepo(ctx, half, nil)
	require.NoError(t, err)
	require.True(t, r.Encrypted())
	require.NoError(t, r.Close())
}
