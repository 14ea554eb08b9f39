package crypt_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/crypt"
)

// testKeyOptions are the cheapest a key file may be: the floor.
var testKeyOptions = crypt.KeyOptions{
	KDF:     crypt.MinKDF,
	Host:    "db1",
	User:    "postgres",
	Created: time.Date(2026, 12, 6, 15, 34, 5, 0, time.UTC),
}

var testPass = []byte("correct horse battery staple")

// sameKey fails unless a and b are the same master key: each opens what
// the other sealed, and they key object IDs alike.
func sameKey(t *testing.T, a, b *crypt.MasterKey) {
	t.Helper()
	id := chunk.Sum([]byte("c"))
	require.Equal(t, a.ObjectID(id), b.ObjectID(id))
	got, err := b.Open(nil, crypt.KindConfig, "config", a.Seal(nil, crypt.KindConfig, "config", []byte("cfg")))
	require.NoError(t, err)
	require.Equal(t, "cfg", string(got))
}

func TestKeyFileRoundTrip(t *testing.T) {
	mk := crypt.NewMasterKey()
	kf, err := crypt.NewKeyFile(mk, testPass, testKeyOptions)
	require.NoError(t, err)
	require.Len(t, kf.ID, 16)
	b := kf.Marshal()

	dec, err := crypt.DecodeKeyFile(b)
	require.NoError(t, err)
	require.Equal(t, kf.ID, dec.ID)
	require.True(t, dec.Created.Equal(testKeyOptions.Created))
	require.Equal(t, "db1", dec.Host)
	require.Equal(t, "postgres", dec.User)
	require.Equal(t, crypt.MinKDF, dec.KDF)
	require.Equal(t, b, dec.Marshal(), "decode, encode: other bytes")

	got, err := dec.Unlock(testPass)
	require.NoError(t, err)
	sameKey(t, mk, got)

	var j map[string]any
	require.NoError(t, json.Unmarshal(b, &j))
	for _, field := range []string{"format", "id", "created", "host", "user", "kdf", "salt", "check", "data", "checksum"} {
		require.Contains(t, j, field)
	}
	require.NotContains(t, string(b), string(testPass))
}

func TestKeyFileDefaults(t *testing.T) {
	require.NoError(t, crypt.DefaultKDF.Validate())
	o := crypt.KeyOptions{KDF: crypt.MinKDF}
	kf, err := crypt.NewKeyFile(crypt.NewMasterKey(), testPass, o)
	require.NoError(t, err)
	require.NotEmpty(t, kf.Host)
	require.NotEmpty(t, kf.User)
	require.WithinDuration(t, time.Now(), kf.Created, time.Minute)
	require.Zero(t, kf.Created.Nanosecond())
	require.Equal(t, time.UTC, kf.Created.Location())
}

func TestKeyFileWrongPassphrase(t *testing.T) {
	kf, err := crypt.NewKeyFile(crypt.NewMasterKey(), testPass, testKeyOptions)
	require.NoError(t, err)
	for _, p := range [][]byte{[]byte("wrong"), append(bytes.Clone(testPass), ' '), testPass[1:], {}} {
		_, err := kf.Unlock(p)
		require.ErrorIs(t, err, crypt.ErrWrongPassphrase, "passphrase %q", p)
		require.NotErrorIs(t, err, crypt.ErrTampered)
		require.NotErrorIs(t, err, crypt.ErrKeyFileCorrupt)
	}
	_, err = crypt.NewKeyFile(crypt.NewMasterKey(), nil, testKeyOptions)
	require.ErrorIs(t, err, crypt.ErrEmptyPassphrase)
}

// TestKeyFileTampered alters a key file field by field, as damage does
// (the checksum then fails) and as someone who can write key files does
// (recomputing the checksum, which needs no key): each must be refused,
// with an error that says which.
func TestKeyFileTampered(t *testing.T) {
	mk := crypt.NewMasterKey()
	kf, err := crypt.NewKeyFile(mk, testPass, testKeyOptions)
	require.NoError(t, err)
	orig := kf.Marshal()

	edit := func(f func(j map[string]any)) []byte {
		var j map[string]any
		require.NoError(t, json.Unmarshal(orig, &j))
		f(j)
		b, err := json.Marshal(j)
		require.NoError(t, err)
		return b
	}
	flipB64 := func(field string, i int) func(map[string]any) {
		return func(j map[string]any) {
			b, err := base64.StdEncoding.DecodeString(j[field].(string))
			require.NoError(t, err)
			b[i] ^= 0x80
			j[field] = base64.StdEncoding.EncodeToString(b)
		}
	}
	set := func(field string, v any) func(map[string]any) {
		return func(j map[string]any) { j[field] = v }
	}
	setKDF := func(field string, v any) func(map[string]any) {
		return func(j map[string]any) { j["kdf"].(map[string]any)[field] = v }
	}

	cases := []struct {
		name   string
		edit   func(map[string]any)
		damage error // the error as damage: checksum left as it was
		attack error // the error with the checksum recomputed
	}{
		{"salt", flipB64("salt", 0), crypt.ErrKeyFileCorrupt, crypt.ErrWrongPassphrase},
		{"check", flipB64("check", 31), crypt.ErrKeyFileCorrupt, crypt.ErrWrongPassphrase},
		{"sealed key ciphertext", flipB64("data", crypt.HeaderSize), crypt.ErrKeyFileCorrupt, crypt.ErrTampered},
		{"sealed key nonce", flipB64("data", 3), crypt.ErrKeyFileCorrupt, crypt.ErrTampered},
		{"sealed key tag", flipB64("data", crypt.MasterKeySize+crypt.Overhead-1), crypt.ErrKeyFileCorrupt, crypt.ErrTampered},
		{"host", set("host", "attacker"), crypt.ErrKeyFileCorrupt, crypt.ErrTampered},
		{"user", set("user", "root"), crypt.ErrKeyFileCorrupt, crypt.ErrTampered},
		{"created", set("created", "2020-01-01T00:00:00Z"), crypt.ErrKeyFileCorrupt, crypt.ErrTampered},
		// KDF parameters: lowered below the floor, never accepted; lowered
		// or raised within bounds, the passphrase derives another key.
		{"memory below the floor", setKDF("memory_kib", 1024), crypt.ErrKeyFileCorrupt, crypt.ErrWeakKDF},
		{"time below the floor", setKDF("time", 1), crypt.ErrKeyFileCorrupt, crypt.ErrWeakKDF},
		{"memory raised", setKDF("memory_kib", crypt.MinKDF.MemoryKiB+1024), crypt.ErrKeyFileCorrupt, crypt.ErrWrongPassphrase},
		{"threads changed", setKDF("threads", 2), crypt.ErrKeyFileCorrupt, crypt.ErrWrongPassphrase},
		// Above the ceiling: refused before any memory is spent.
		{"memory above the ceiling", setKDF("memory_kib", 64<<20), crypt.ErrKeyFileCorrupt, crypt.ErrKeyFileCorrupt},
		{"time above the ceiling", setKDF("time", 100000), crypt.ErrKeyFileCorrupt, crypt.ErrKeyFileCorrupt},
		{"no threads", setKDF("threads", 0), crypt.ErrKeyFileCorrupt, crypt.ErrKeyFileCorrupt},
		{"another KDF", setKDF("algorithm", "scrypt"), crypt.ErrKeyFileCorrupt, crypt.ErrKeyFileCorrupt},
		{"short salt", set("salt", base64.StdEncoding.EncodeToString(make([]byte, 8))), crypt.ErrKeyFileCorrupt, crypt.ErrKeyFileCorrupt},
		{"short sealed key", set("data", base64.StdEncoding.EncodeToString(make([]byte, 40))), crypt.ErrKeyFileCorrupt, crypt.ErrKeyFileCorrupt},
		{"format", set("format", "pgporter-key-2"), crypt.ErrKeyFileCorrupt, crypt.ErrKeyFileCorrupt},
		{"ID", set("id", "../../etc/passwd"), crypt.ErrKeyFileCorrupt, crypt.ErrKeyFileCorrupt},
		{"unknown field", set("extra", 1), crypt.ErrKeyFileCorrupt, crypt.ErrKeyFileCorrupt},
		{"fractional time", set("created", "2026-12-06T15:34:05.5Z"), crypt.ErrKeyFileCorrupt, crypt.ErrKeyFileCorrupt},
		{"long host", set("host", strings.Repeat("h", 300)), crypt.ErrKeyFileCorrupt, crypt.ErrKeyFileCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, v := range []struct {
				how  string
				b    []byte
				want error
			}{
				{"damaged", edit(c.edit), c.damage},
				{"rewritten", crypt.Rechecksum(edit(c.edit)), c.attack},
			} {
				kf, err := crypt.DecodeKeyFile(v.b)
				if err == nil {
					_, err = kf.Unlock(testPass)
				}
				require.ErrorIs(t, err, v.want, "%s", v.how)
				for _, other := range []error{crypt.ErrKeyFileCorrupt, crypt.ErrWeakKDF, crypt.ErrWrongPassphrase, crypt.ErrTampered} {
					if other != v.want {
						require.NotErrorIs(t, err, other, "%s: %v", v.how, err)
					}
				}
			}
		})
	}

	for _, b := range [][]byte{nil, []byte("{"), orig[:len(orig)/2], append(bytes.Clone(orig), orig...), bytes.Repeat([]byte(" "), 20<<10)} {
		_, err := crypt.DecodeKeyFile(b)
		require.ErrorIs(t, err, crypt.ErrKeyFileCorrupt)
	}

	kf, err = crypt.DecodeKeyFile(orig)
	require.NoError(t, err)
	got, err := kf.Unlock(testPass)
	require.NoError(t, err, "the original still opens")
	sameKey(t, mk, got)
}

func TestKDFParams(t *testing.T) {
	for _, c := range []struct {
		p    crypt.KDFParams
		want error
	}{
		{crypt.DefaultKDF, nil},
		{crypt.MinKDF, nil},
		{crypt.KDFParams{Algorithm: "argon2id", Time: 1, MemoryKiB: 64 << 10, Threads: 2}, crypt.ErrWeakKDF},
		{crypt.KDFParams{Algorithm: "argon2id", Time: 4, MemoryKiB: 8 << 10, Threads: 2}, crypt.ErrWeakKDF},
		{crypt.KDFParams{Algorithm: "argon2id", Time: 4, MemoryKiB: 4 << 20, Threads: 2}, crypt.ErrKeyFileCorrupt},
		{crypt.KDFParams{Algorithm: "argon2i", Time: 4, MemoryKiB: 64 << 10, Threads: 2}, crypt.ErrKeyFileCorrupt},
		{crypt.KDFParams{}, crypt.ErrKeyFileCorrupt},
	} {
		err := c.p.Validate()
		if c.want == nil {
			require.NoError(t, err, "%s", c.p)
		} else {
			require.ErrorIs(t, err, c.want, "%s", c.p)
		}
	}
	// A key file is never written below the floor.
	weak := testKeyOptions
	weak.KDF.MemoryKiB = 1024
	_, err := crypt.NewKeyFile(crypt.NewMasterKey(), testPass, weak)
	require.ErrorIs(t, err, crypt.ErrWeakKDF)
}

// FuzzDecodeKeyFile feeds hostile bytes to DecodeKeyFile: it must never
// panic, and what it accepts must encode and decode again to the same key
// file. It never unlocks (the KDF would make each input cost 25 ms).
func FuzzDecodeKeyFile(f *testing.F) {
	kf, err := crypt.NewKeyFile(crypt.MasterKeyFromSecret(testSecret()), testPass, testKeyOptions)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(kf.Marshal())
	f.Add(crypt.Rechecksum(bytes.Replace(kf.Marshal(), []byte(`"db1"`), []byte(`"\u00e9"`), 1)))
	f.Add([]byte(`{"format":"pgporter-key-1"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		kf, err := crypt.DecodeKeyFile(b)
		if err != nil {
			return
		}
		again, err := crypt.DecodeKeyFile(kf.Marshal())
		if err != nil {
			t.Fatalf("a decoded key file does not decode again: %v", err)
		}
		if !bytes.Equal(again.Marshal(), kf.Marshal()) || again.ID != kf.ID || !again.Created.Equal(kf.Created) ||
			again.Host != kf.Host || again.User != kf.User || again.KDF != kf.KDF {
			t.Fatalf("decode, encode, decode changed the key file")
		}
	})
}

// BenchmarkKDF is the cost of one unlock (or key file made) with
// DefaultKDF and with the floor, MinKDF.
func BenchmarkKDF(b *testing.B) {
	for _, c := range []struct {
		name string
		kdf  crypt.KDFParams
	}{{"default", crypt.DefaultKDF}, {"floor", crypt.MinKDF}} {
		b.Run(c.name, func(b *testing.B) {
			kf, err := crypt.NewKeyFile(crypt.NewMasterKey(), testPass, crypt.KeyOptions{KDF: c.kdf})
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			for b.Loop() {
				if _, err := kf.Unlock(testPass); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Milliseconds())/float64(b.N), "ms/unlock")
		})
	}
}
