package crypt

import (
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"sync"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/pgporter/pgporter/chunkstore/chunk"
)

// MasterKeySize is the size of a repository's master secret. Every key the
// repository uses is derived from it, so one secret is all a key file wraps,
// and a subkey for a new purpose needs no new key file.
const MasterKeySize = 32

// Contexts of BLAKE3's key derivation, one per subkey; never change them:
// every sealed object, object ID and MAC of every repository depends on them.
const (
	contextData   = "pgporter 2026-12-06 repository data key v1"
	contextObject = "pgporter 2026-12-06 repository object ID key v1"
	contextMAC    = "pgporter 2026-12-06 repository MAC key v1"
)

// MasterKey is a repository's master key, unlocked: what seals and opens
// its objects and keys their names. It is safe for concurrent use.
type MasterKey struct {
	secret [MasterKeySize]byte
	data   cipher.AEAD // XChaCha20-Poly1305 under the data key
	objKey [32]byte
	macKey [32]byte

	objects sync.Pool // of *blake3.Hasher keyed with objKey: ObjectID allocates nothing
}

// NewMasterKey returns a fresh random master key, for a new repository.
func NewMasterKey() *MasterKey {
	var secret [MasterKeySize]byte
	_, _ = rand.Read(secret[:]) // crypto/rand.Read never fails
	return masterKeyFrom(secret)
}

// masterKeyFrom derives the subkeys of secret.
func masterKeyFrom(secret [MasterKeySize]byte) *MasterKey {
	k := &MasterKey{secret: secret}
	var dataKey [chacha20poly1305.KeySize]byte
	blake3.DeriveKey(contextData, secret[:], dataKey[:])
	aead, err := chacha20poly1305.NewX(dataKey[:])
	if err != nil {
		panic(fmt.Sprintf("crypt: XChaCha20-Poly1305 refused a %d-byte key: %v", len(dataKey), err))
	}
	k.data = aead
	blake3.DeriveKey(contextObject, secret[:], k.objKey[:])
	blake3.DeriveKey(contextMAC, secret[:], k.macKey[:])
	k.objects.New = func() any { return newKeyed(k.objKey) }
	return k
}

func newKeyed(key [32]byte) *blake3.Hasher {
	h, err := blake3.NewKeyed(key[:])
	if err != nil {
		panic(fmt.Sprintf("crypt: keyed BLAKE3 refused a 32-byte key: %v", err))
	}
	return h
}

// ObjectIDSize is the size of an ObjectID.
const ObjectIDSize = 32

// ObjectID is what an encrypted repository stores in place of a chunk ID:
// the keyed BLAKE3-256 of the chunk ID under the repository's object key.
// The store sees object IDs only, so it cannot tell whether it holds a
// chunk whose content (hence plain BLAKE3) it can guess. Its own type, so
// that a plain ID and a keyed one are never confused.
type ObjectID [ObjectIDSize]byte

// String returns the ID in lower-case hex.
func (o ObjectID) String() string { return hex.EncodeToString(o[:]) }

// ObjectID returns the keyed ID of chunk id. It is deterministic (the same
// chunk has the same object ID in every process holding the key), uniform
// (so sorted runs of them can be searched by interpolation, as plain IDs
// are), and one-way: the plain ID cannot be recovered from it.
func (k *MasterKey) ObjectID(id chunk.ID) ObjectID {
	h := k.objects.Get().(*blake3.Hasher)
	h.Reset()
	_, _ = h.Write(id[:])
	var o ObjectID
	h.Sum(o[:0])
	k.objects.Put(h)
	return o
}

// MACSize is the size of a MAC.
const MACSize = 32

// NewMAC returns a keyed BLAKE3-256 hash, under the repository's MAC key,
// of the object of kind named name: write the object's bytes to it, then
// compare its Sum with EqualMAC. For objects that stay readable in place
// (an index run, mapped and searched as it is) but must not be altered or
// moved unnoticed. Each call returns a fresh hash.
func (k *MasterKey) NewMAC(kind Kind, name string) hash.Hash {
	h := newKeyed(k.macKey)
	var b [binary.MaxVarintLen64 + 2]byte
	b[0], b[1] = formatV1, byte(kind)
	n := 2 + binary.PutUvarint(b[2:], uint64(len(name)))
	_, _ = h.Write(b[:n])
	_, _ = h.WriteString(name)
	return h
}

// MAC returns the MAC of data as the object of kind named name.
func (k *MasterKey) MAC(kind Kind, name string, data []byte) [MACSize]byte {
	h := k.NewMAC(kind, name)
	_, _ = h.Write(data)
	var m [MACSize]byte
	h.Sum(m[:0])
	return m
}

// VerifyMAC returns an error matching ErrTampered unless mac is the MAC of
// data as the object of kind named name.
func (k *MasterKey) VerifyMAC(kind Kind, name string, data, mac []byte) error {
	m := k.MAC(kind, name, data)
	if !EqualMAC(m[:], mac) {
		return fmt.Errorf("%w: MAC of %s %q does not match", ErrTampered, kind, name)
	}
	return nil
}

// EqualMAC reports whether two MACs are equal, in constant time.
func EqualMAC(a, b []byte) bool {
	return len(a) == MACSize && subtle.ConstantTimeCompare(a, b) == 1
}
