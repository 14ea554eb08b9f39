package crypt

import (
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"

	"golang.org/x/crypto/chacha20poly1305"
)

// A sealed object is its plaintext encrypted and authenticated with
// XChaCha20-Poly1305:
//
//	offset  size  field
//	0       1     format, 1
//	1       24    nonce, random
//	25      n     ciphertext (n = length of the plaintext)
//	25+n    16    Poly1305 tag
//
// The associated data is the format, the object's kind and its name, so an
// object opens only as what it was sealed as: a pack record under another
// chunk's ID, a restore point under another point's name, or a WAL record
// read as a restore point all fail as ErrTampered. Random 192-bit nonces
// need no counter shared between the processes and hosts that write one
// repository, and their collision chance stays negligible for any number of
// objects a repository will ever hold (AES-GCM's 96-bit ones would not, past
// about 2^32 objects under one key).

// Sizes of a sealed object's parts.
const (
	NonceSize  = chacha20poly1305.NonceSizeX // 24
	HeaderSize = 1 + NonceSize               // format and nonce, before the ciphertext
	TagSize    = chacha20poly1305.Overhead   // 16
	// Overhead is how much longer a sealed object is than its plaintext.
	Overhead = HeaderSize + TagSize // 41
)

// formatV1 is the first byte of every sealed object, key file and MAC
// input this build writes.
const formatV1 = 1

var (
	// ErrTampered is matched by the error of every open that fails
	// authentication: an object, nonce, tag, kind or name altered, an
	// object truncated, or sealed under another key. Such bytes are never
	// returned. It is never retryable.
	ErrTampered = errors.New("crypt: authentication failed: the object was altered, moved, or sealed under another key")
	// ErrFormat is matched by the error of an open of an object whose
	// format byte this build does not know (a newer build's, or damage).
	ErrFormat = errors.New("crypt: unknown format of a sealed object")
)

// Kind is the role of a sealed or MACed object in a repository, bound to it
// with its name: an object opens only as the kind it was sealed as.
type Kind uint8

// Kinds of objects. Their numbers are part of every sealed object: never
// renumber them.
const (
	KindChunk   Kind = 1 // a pack record; name: the chunk's ObjectID bytes
	KindIndex   Kind = 2 // an index run (MACed, not sealed); name: its file name
	KindPoint   Kind = 3 // a restore point; name: its ID
	KindWAL     Kind = 4 // a WAL file's record; name: the WAL file name
	KindLock    Kind = 5 // a repository lock; name: its file name
	KindStatus  Kind = 6 // an operation's recorded outcomes; name: the operation
	KindConfig  Kind = 7 // the repository's configuration; name: "config"
	KindPending Kind = 8 // a prune's list of packs to delete; name: its file name

	kindKeyFile Kind = 255 // a key file's wrapped master secret; never sealed under a master key
)

func (k Kind) valid() bool { return k >= KindChunk && k <= KindPending }

func (k Kind) String() string {
	switch k {
	case KindChunk:
		return "chunk"
	case KindIndex:
		return "index"
	case KindPoint:
		return "point"
	case KindWAL:
		return "wal"
	case KindLock:
		return "lock"
	case KindStatus:
		return "status"
	case KindConfig:
		return "config"
	case KindPending:
		return "pending"
	case kindKeyFile:
		return "key file"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Seal appends the sealed form of plaintext, as the object of kind named
// name, to dst and returns it; it writes Overhead+len(plaintext) bytes.
// plaintext may overlap dst only exactly where the ciphertext goes:
// starting at dst[len(dst)+HeaderSize], in dst's spare capacity (sealing in
// place, as a pack writer that compressed a record there does); any other
// overlap panics. It allocates nothing when dst has room. It panics on an
// unknown kind, which only a programming error passes.
func (k *MasterKey) Seal(dst []byte, kind Kind, name string, plaintext []byte) []byte {
	if !kind.valid() {
		panic(fmt.Sprintf("crypt: sealing an object of unknown kind %d", uint8(kind)))
	}
	ad := getAD(kind, name)
	defer putAD(ad)
	return seal(k.data, dst, *ad, plaintext)
}

// Open authenticates sealed as the object of kind named name, appends its
// plaintext to dst and returns it. An object that fails gives an error
// matching ErrTampered (or ErrFormat) and dst unchanged, though its spare
// capacity may be overwritten. sealed may overlap dst only exactly where
// the plaintext goes (see OpenInPlace). Open allocates nothing when dst has
// room; it never allocates more than len(sealed) bytes, whatever sealed
// holds.
func (k *MasterKey) Open(dst []byte, kind Kind, name string, sealed []byte) ([]byte, error) {
	if !kind.valid() {
		return dst, fmt.Errorf("crypt: opening an object of unknown kind %d", uint8(kind))
	}
	ad := getAD(kind, name)
	defer putAD(ad)
	return open(k.data, dst, *ad, sealed)
}

// OpenInPlace is Open decrypting over sealed's own bytes: the plaintext it
// returns is sealed[HeaderSize:len(sealed)-TagSize]. On failure sealed's
// ciphertext is overwritten.
func (k *MasterKey) OpenInPlace(kind Kind, name string, sealed []byte) ([]byte, error) {
	if len(sealed) < Overhead {
		return k.Open(nil, kind, name, sealed) // reports the short object
	}
	return k.Open(sealed[HeaderSize:HeaderSize], kind, name, sealed)
}

func seal(aead cipher.AEAD, dst, ad, plaintext []byte) []byte {
	n := len(dst)
	// A plaintext in dst's spare capacity stays valid if Grow moves dst:
	// the old array is still the plaintext's, and no longer overlaps.
	dst = slices.Grow(dst, Overhead+len(plaintext))[:n+HeaderSize]
	dst[n] = formatV1
	nonce := dst[n+1 : n+HeaderSize]
	_, _ = rand.Read(nonce) // crypto/rand.Read never fails
	return aead.Seal(dst, nonce, plaintext, ad)
}

func open(aead cipher.AEAD, dst, ad, sealed []byte) ([]byte, error) {
	if len(sealed) < Overhead {
		return dst, fmt.Errorf("%w: %d bytes, shorter than a sealed object's %d bytes of overhead", ErrTampered, len(sealed), Overhead)
	}
	if sealed[0] != formatV1 {
		return dst, fmt.Errorf("%w %d (this build reads %d)", ErrFormat, sealed[0], formatV1)
	}
	out, err := aead.Open(dst, sealed[1:HeaderSize], sealed[HeaderSize:], ad)
	if err != nil {
		return dst, ErrTampered
	}
	return out, nil
}

// Associated data, pooled: a buffer passed to cipher.AEAD's methods escapes,
// so one built on the stack would cost an allocation per record.
var adPool = sync.Pool{New: func() any { return new([]byte) }}

// getAD returns the associated data of the object of kind named name:
// format, kind, name. The name needs no length: it is all that follows.
func getAD(kind Kind, name string) *[]byte {
	b := adPool.Get().(*[]byte)
	*b = append(append((*b)[:0], formatV1, byte(kind)), name...)
	return b
}

// maxPooledAD keeps a rare long name from pinning its buffer.
const maxPooledAD = 1 << 10

func putAD(b *[]byte) {
	if cap(*b) <= maxPooledAD {
		adPool.Put(b)
	}
}
