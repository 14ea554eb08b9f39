package crypt_test

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/crypt"
)

func TestKeys(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "keys")
	ks := crypt.DirKeys{Dir: dir}

	_, _, err := crypt.Unlock(ctx, ks, testPass)
	require.ErrorIs(t, err, crypt.ErrNoKey, "a repository without key files")

	mk, first, err := crypt.InitKeys(ctx, ks, testPass, testKeyOptions)
	require.NoError(t, err)
	fi, err := os.Stat(filepath.Join(dir, first.ID))
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o600), fi.Mode().Perm())

	_, _, err = crypt.InitKeys(ctx, ks, testPass, testKeyOptions)
	require.ErrorIs(t, err, crypt.ErrKeysExist, "a second master key for one repository")

	// A second key file, another passphrase, the same master key.
	otherPass := []byte("another passphrase")
	o := testKeyOptions
	o.Host, o.User = "staging1", "pgporter"
	second, err := crypt.AddKey(ctx, ks, mk, otherPass, o)
	require.NoError(t, err)
	require.NotEqual(t, first.ID, second.ID)

	got1, kf1, err := crypt.Unlock(ctx, ks, testPass)
	require.NoError(t, err)
	require.Equal(t, first.ID, kf1.ID)
	got2, kf2, err := crypt.Unlock(ctx, ks, otherPass)
	require.NoError(t, err)
	require.Equal(t, second.ID, kf2.ID)
	sameKey(t, mk, got1)
	sameKey(t, got1, got2)

	_, _, err = crypt.Unlock(ctx, ks, []byte("neither"))
	require.ErrorIs(t, err, crypt.ErrWrongPassphrase)
	require.ErrorContains(t, err, "2 key files tried")

	list, err := crypt.ListKeys(ctx, ks)
	require.NoError(t, err)
	require.Len(t, list, 2)
	byID := map[string]crypt.KeyListing{}
	for _, l := range list {
		require.NoError(t, l.Err)
		byID[l.Name] = l
	}
	require.Equal(t, "staging1", byID[second.ID].File.Host)
	require.Equal(t, "pgporter", byID[second.ID].File.User)
	require.Equal(t, "db1", byID[first.ID].File.Host)
	require.Equal(t, crypt.MinKDF, byID[first.ID].File.KDF)

	// Remove the first: the second still opens the repository.
	require.NoError(t, crypt.RemoveKey(ctx, ks, first.ID))
	_, _, err = crypt.Unlock(ctx, ks, testPass)
	require.ErrorIs(t, err, crypt.ErrWrongPassphrase)
	got, _, err := crypt.Unlock(ctx, ks, otherPass)
	require.NoError(t, err)
	sameKey(t, mk, got)

	// The last one stays.
	err = crypt.RemoveKey(ctx, ks, second.ID)
	require.ErrorIs(t, err, crypt.ErrLastKey)
	_, _, err = crypt.Unlock(ctx, ks, otherPass)
	require.NoError(t, err, "the last key file went anyway")

	err = crypt.RemoveKey(ctx, ks, first.ID)
	require.ErrorIs(t, err, fs.ErrNotExist)
}

// TestRemoveKeyCorruptOthers guards against counting a key file that
// cannot be used as one that keeps the repository open.
func TestRemoveKeyCorruptOthers(t *testing.T) {
	ctx := t.Context()
	ks := crypt.DirKeys{Dir: t.TempDir()}
	mk, good, err := crypt.InitKeys(ctx, ks, testPass, testKeyOptions)
	require.NoError(t, err)
	bad, err := crypt.AddKey(ctx, ks, mk, []byte("other"), testKeyOptions)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(ks.Dir, bad.ID), []byte(`{"format":"garbage"}`), 0o600))

	require.ErrorIs(t, crypt.RemoveKey(ctx, ks, good.ID), crypt.ErrLastKey)
	require.NoError(t, crypt.RemoveKey(ctx, ks, bad.ID), "a corrupt key file cannot be removed")
	list, err := crypt.ListKeys(ctx, ks)
	require.NoError(t, err)
	require.Len(t, list, 1)
}

func TestUnlockSkipsUnusable(t *testing.T) {
	ctx := t.Context()
	ks := crypt.DirKeys{Dir: t.TempDir()}
	mk, good, err := crypt.InitKeys(ctx, ks, testPass, testKeyOptions)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(ks.Dir, "0000000000000000"), []byte("not json"), 0o600))

	got, kf, err := crypt.Unlock(ctx, ks, testPass)
	require.NoError(t, err, "a corrupt key file, first in name order, is skipped, not fatal")
	require.Equal(t, good.ID, kf.ID)
	sameKey(t, mk, got)

	_, _, err = crypt.Unlock(ctx, ks, []byte("wrong"))
	require.ErrorIs(t, err, crypt.ErrWrongPassphrase)
	require.ErrorIs(t, err, crypt.ErrKeyFileCorrupt, "the skipped key file is not named")

	list, err := crypt.ListKeys(ctx, ks)
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.ErrorIs(t, list[0].Err, crypt.ErrKeyFileCorrupt)
	require.Nil(t, list[0].File)

	// Only corrupt key files: no key, with the reasons.
	require.NoError(t, os.Remove(filepath.Join(ks.Dir, good.ID)))
	_, _, err = crypt.Unlock(ctx, ks, testPass)
	require.ErrorIs(t, err, crypt.ErrNoKey)
	require.ErrorIs(t, err, crypt.ErrKeyFileCorrupt)
}

// TestUnlockCheapestFirst: of two key files a passphrase opens, an unlock
// takes the one whose derivation costs least, even when the other comes
// first by name: a wal-push's generated key (MinKDF) is not made to pay
// for an administrator's (DefaultKDF) first.
func TestUnlockCheapestFirst(t *testing.T) {
	ctx := t.Context()
	ks := crypt.DirKeys{Dir: t.TempDir()}
	dearer := testKeyOptions
	dearer.KDF.Time++
	mk, dear, err := crypt.InitKeys(ctx, ks, testPass, dearer)
	require.NoError(t, err)
	// A cheaper key file for the same passphrase, named after the dearer
	// one (IDs are random: about one try in two).
	var cheap *crypt.KeyFile
	for range 64 {
		kf, err := crypt.AddKey(ctx, ks, mk, testPass, testKeyOptions)
		require.NoError(t, err)
		if kf.ID > dear.ID {
			cheap = kf
			break
		}
		require.NoError(t, os.Remove(filepath.Join(ks.Dir, kf.ID)))
	}
	require.NotNil(t, cheap, "no key ID sorted after %s in 64 tries", dear.ID)

	got, kf, err := crypt.Unlock(ctx, ks, testPass)
	require.NoError(t, err)
	require.Equal(t, cheap.ID, kf.ID, "the cheaper key file is tried first")
	require.Equal(t, crypt.MinKDF, kf.KDF)
	sameKey(t, mk, got)
}

// TestUnlockTampered guards against an unlock that goes on to other key
// files, or opens anyway, when the passphrase is right but the key file
// was altered.
func TestUnlockTampered(t *testing.T) {
	ctx := t.Context()
	ks := crypt.DirKeys{Dir: t.TempDir()}
	_, kf, err := crypt.InitKeys(ctx, ks, testPass, testKeyOptions)
	require.NoError(t, err)
	p := filepath.Join(ks.Dir, kf.ID)
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	var j map[string]any
	require.NoError(t, json.Unmarshal(b, &j))
	j["host"] = "elsewhere"
	b, err = json.Marshal(j)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(p, crypt.Rechecksum(b), 0o600))
	_, _, err = crypt.Unlock(ctx, ks, testPass)
	require.ErrorIs(t, err, crypt.ErrTampered)
}

func TestDirKeys(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	var prepared []string
	ks := crypt.DirKeys{Dir: dir, Mode: 0o640, Prepare: func(f *os.File) error {
		prepared = append(prepared, f.Name())
		return nil
	}}
	const id = "0123456789abcdef"
	require.NoError(t, ks.Create(ctx, id, []byte("one")))
	require.Len(t, prepared, 1)
	fi, err := os.Stat(filepath.Join(dir, id))
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o640), fi.Mode().Perm())
	require.ErrorIs(t, ks.Create(ctx, id, []byte("two")), fs.ErrExist, "a key file replaced")
	b, err := ks.Read(ctx, id)
	require.NoError(t, err)
	require.Equal(t, "one", string(b))

	// Names that are not key IDs are neither listed nor read nor written.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "README"), nil, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".tmp-123"), nil, 0o600))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "fedcba9876543210"), 0o755))
	names, err := ks.List(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{id}, names)
	for _, bad := range []string{"../" + id, "README", "0123456789ABCDEF", ""} {
		_, err := ks.Read(ctx, bad)
		require.Error(t, err, bad)
		require.Error(t, ks.Create(ctx, bad, nil), bad)
		require.Error(t, ks.Remove(ctx, bad), bad)
	}

	// A link is never followed, and an oversized file never read whole.
	secret := filepath.Join(t.TempDir(), "elsewhere")
	require.NoError(t, os.WriteFile(secret, []byte("not yours"), 0o600))
	require.NoError(t, os.Symlink(secret, filepath.Join(dir, "1111111111111111")))
	_, err = ks.Read(ctx, "1111111111111111")
	require.Error(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "2222222222222222"), make([]byte, 1<<20), 0o600))
	_, err = ks.Read(ctx, "2222222222222222")
	require.ErrorIs(t, err, crypt.ErrKeyFileCorrupt)

	require.NoError(t, ks.Remove(ctx, id))
	_, err = ks.Read(ctx, id)
	require.ErrorIs(t, err, fs.ErrNotExist)

	names, err = crypt.DirKeys{Dir: filepath.Join(dir, "absent")}.List(ctx)
	require.NoError(t, err)
	require.Empty(t, names)
}

// TestAddKeyTooMany guards against a key add that made a passphrase stop
// working: an unlock tries at most MaxUnlockTries usable key files, the
// cheapest derivations first and then in name order, and a key ID is
// random, so one key file past that many left whichever sorts last never
// tried, its passphrase refused as wrong. The
// add is refused; once a key file is removed, it is made.
func TestAddKeyTooMany(t *testing.T) {
	ctx := t.Context()
	ks := crypt.DirKeys{Dir: filepath.Join(t.TempDir(), "keys")}
	mk, _, err := crypt.InitKeys(ctx, ks, testPass, testKeyOptions)
	require.NoError(t, err)
	// A corrupt key file is not tried by an unlock: it does not count.
	require.NoError(t, ks.Create(ctx, "00000000000000ff", []byte("{}")))
	var last *crypt.KeyFile
	for range crypt.MaxUnlockTries - 1 {
		last, err = crypt.AddKey(ctx, ks, mk, []byte("another passphrase"), testKeyOptions)
		require.NoError(t, err)
	}
	_, err = crypt.AddKey(ctx, ks, mk, []byte("one too many"), testKeyOptions)
	require.ErrorIs(t, err, crypt.ErrTooManyKeys)
	names, err := ks.List(ctx)
	require.NoError(t, err)
	require.Len(t, names, crypt.MaxUnlockTries+1, "a refused add writes nothing")

	require.NoError(t, crypt.RemoveKey(ctx, ks, last.ID))
	kf, err := crypt.AddKey(ctx, ks, mk, []byte("one too many"), testKeyOptions)
	require.NoError(t, err)
	_, got, err := crypt.Unlock(ctx, ks, []byte("one too many"))
	require.NoError(t, err)
	require.Equal(t, kf.ID, got.ID)
}
