package crypt_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/crypt"
)

// goldenObjectID is the object ID of chunk.Sum("chunk") under testSecret,
// as this package's first build computed it: object IDs name every chunk of
// every encrypted repository, so they must never change.
const goldenObjectID = "76d55ce94b51b1a8f220578e24af0629a68541e65195e68c594f7b732914d9cf"

func TestObjectID(t *testing.T) {
	k := crypt.MasterKeyFromSecret(testSecret())
	id := chunk.Sum([]byte("chunk"))
	o := k.ObjectID(id)

	require.NotEqual(t, [32]byte(id), [32]byte(o), "the object ID is the plain ID")
	require.NotEqual(t, blake3.Sum256(id[:]), [32]byte(o), "the object ID is an unkeyed hash of the plain ID")
	require.Equal(t, o, k.ObjectID(id), "not deterministic")
	require.Equal(t, o, crypt.MasterKeyFromSecret(testSecret()).ObjectID(id), "differs between two loads of one key")
	require.NotEqual(t, o, crypt.NewMasterKey().ObjectID(id), "two repositories' keys give one object ID")
	require.NotEqual(t, o, k.ObjectID(chunk.Sum([]byte("chunk2"))))

	// The construction, as the design note states it: keyed BLAKE3-256 of
	// the plain ID under a key derived from the master secret.
	secret := testSecret()
	var objKey [32]byte
	blake3.DeriveKey("pgporter 2026-12-06 repository object ID key v1", secret[:], objKey[:])
	h, err := blake3.NewKeyed(objKey[:])
	require.NoError(t, err)
	_, _ = h.Write(id[:])
	require.Equal(t, h.Sum(nil), o[:])

	require.Equal(t, goldenObjectID, o.String())
}

func TestObjectIDAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's sync.Pool drops items")
	}
	k := crypt.NewMasterKey()
	id := chunk.Sum([]byte("x"))
	var o crypt.ObjectID
	require.Zero(t, testing.AllocsPerRun(100, func() { o = k.ObjectID(id) }))
	require.Equal(t, o, k.ObjectID(id))
}

func TestMAC(t *testing.T) {
	k := crypt.NewMasterKey()
	data := []byte("an index run's bytes")
	m := k.MAC(crypt.KindIndex, "run-a.idx", data)
	require.NoError(t, k.VerifyMAC(crypt.KindIndex, "run-a.idx", data, m[:]))

	h := k.NewMAC(crypt.KindIndex, "run-a.idx")
	_, _ = h.Write(data[:5])
	_, _ = h.Write(data[5:])
	require.Equal(t, m[:], h.Sum(nil), "streamed MAC differs")

	other := []byte("an index run's bytez")
	for _, c := range []struct {
		name string
		kind crypt.Kind
		obj  string
		data []byte
		mac  []byte
	}{
		{"data", crypt.KindIndex, "run-a.idx", other, m[:]},
		{"name (a run moved)", crypt.KindIndex, "run-b.idx", data, m[:]},
		{"kind", crypt.KindPoint, "run-a.idx", data, m[:]},
		// A name and data that concatenate alike: the name's length is bound.
		{"boundary", crypt.KindIndex, "run-a.idxa", data[1:], m[:]},
		{"short MAC", crypt.KindIndex, "run-a.idx", data, m[:31]},
		{"no MAC", crypt.KindIndex, "run-a.idx", data, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			require.ErrorIs(t, k.VerifyMAC(c.kind, c.obj, c.data, c.mac), crypt.ErrTampered)
		})
	}
	m2 := crypt.NewMasterKey().MAC(crypt.KindIndex, "run-a.idx", data)
	require.NotEqual(t, m, m2, "two keys give one MAC")
}
