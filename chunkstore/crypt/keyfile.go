package crypt

import (
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"time"
	"unicode/utf8"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/chacha20poly1305"
)

// A key file holds the master secret sealed under a key derived from a
// passphrase, as restic's key files do; any number of them may hold the
// same secret, each under its own passphrase:
//
//	{
//	  "format": "pgporter-key-1",
//	  "id": "<16 hex digits>",           also the key file's name
//	  "created": "2026-12-06T15:34:05Z", whole seconds, UTC
//	  "host": "db1",
//	  "user": "postgres",
//	  "kdf": {"algorithm": "argon2id", "time": 8, "memory_kib": 65536, "threads": 2},
//	  "salt": "<base64: 32 random bytes>",
//	  "check": "<base64: 32 bytes>",
//	  "data": "<base64: the sealed master secret, 73 bytes>",
//	  "checksum": "<hex: BLAKE3-256 of all of the above>"
//	}
//
// argon2id(passphrase, salt, kdf) gives 64 bytes. The first 32 are the
// XChaCha20-Poly1305 key that seals the master secret (data, sealed as
// seal.go's objects are); its associated data is every metadata field
// (format to salt), so that none of them can be altered unnoticed by whoever
// holds the passphrase. The last 32, hashed, are check: a derived key that
// does not give check means a wrong passphrase (ErrWrongPassphrase); one that
// gives check but does not open data means altered bytes (ErrTampered). The
// checksum, which needs no key, tells accidental damage (ErrKeyFileCorrupt)
// from both. Someone who can write key files can recompute it: a salt, KDF
// parameter or check they changed reads as a wrong passphrase, because only
// the passphrase could tell, and it is exactly what they changed.

const keyFileFormat = "pgporter-key-1"

// contextCheck derives check from the second half of the KDF's output.
const contextCheck = "pgporter 2026-12-06 key file passphrase check v1"

const (
	keyIDLen   = 16  // hex digits of a key ID
	saltSize   = 32  // bytes of a key file's salt
	maxMetaLen = 255 // bytes of a key file's host or user
)

// MaxKeyFileSize bounds what is read of a key file: one is under 1 KiB;
// more is not one, and a KeyStore need not read it.
const MaxKeyFileSize = 16 << 10

var (
	// ErrWrongPassphrase is matched by the error of an unlock whose
	// passphrase opens no key file.
	ErrWrongPassphrase = errors.New("crypt: wrong passphrase")
	// ErrKeyFileCorrupt is matched by the error for a key file that does not
	// decode, fails its checksum, or holds parameters no build writes.
	ErrKeyFileCorrupt = errors.New("crypt: corrupt key file")
	// ErrWeakKDF is matched by the error for a key file, or key options,
	// whose KDF parameters are below MinKDF: a passphrase behind them would
	// be cheap to guess, so such a file is neither written nor used.
	ErrWeakKDF = errors.New("crypt: KDF parameters below the floor")
)

// KDFParams are the parameters of the passphrase's key derivation, kept in
// each key file.
type KDFParams struct {
	Algorithm string `json:"algorithm"`  // "argon2id"
	Time      uint32 `json:"time"`       // passes over memory
	MemoryKiB uint32 `json:"memory_kib"` // memory, in KiB
	Threads   uint8  `json:"threads"`    // lanes computed in parallel
}

var (
	// DefaultKDF is what new key files use: 64 MiB, 24 passes, 2 lanes.
	// Here (2 shared cores) it took 0.48 to 0.50 s with the machine quiet
	// (BenchmarkKDF), more beside other work: about half a second, once
	// per process that opens the repository. An attacker's cost per guess
	// is the memory times the passes, whatever the lanes.
	DefaultKDF = KDFParams{Algorithm: "argon2id", Time: 24, MemoryKiB: 64 << 10, Threads: 2}
	// MinKDF is the floor below which a key file is refused: OWASP's
	// least argon2id setting (19 MiB, 2 passes), about 20 ms here. It keeps
	// an attacker who rewrites key files from having a client accept, or
	// copy, parameters that make passphrases cheap to guess.
	MinKDF = KDFParams{Algorithm: "argon2id", Time: 2, MemoryKiB: 19 << 10, Threads: 1}
	// maxKDF bounds what a hostile key file can make an unlock spend.
	maxKDF = KDFParams{Algorithm: "argon2id", Time: 64, MemoryKiB: 2 << 20, Threads: 64}
)

// cost is what one derivation with p costs, in KiB times passes: its CPU
// time, whatever the lanes.
func (p KDFParams) cost() uint64 { return uint64(p.Time) * uint64(p.MemoryKiB) }

// Validate reports whether p may be used: ErrWeakKDF below MinKDF,
// ErrKeyFileCorrupt for an unknown algorithm or values above what any key
// file needs.
func (p KDFParams) Validate() error {
	switch {
	case p.Algorithm != "argon2id":
		return fmt.Errorf("%w: unknown KDF %q", ErrKeyFileCorrupt, p.Algorithm)
	case p.Time > maxKDF.Time || p.MemoryKiB > maxKDF.MemoryKiB || p.Threads > maxKDF.Threads:
		return fmt.Errorf("%w: KDF parameters %s above the ceiling %s", ErrKeyFileCorrupt, p, maxKDF)
	case p.Threads == 0:
		return fmt.Errorf("%w: KDF with no threads", ErrKeyFileCorrupt)
	case p.Time < MinKDF.Time || p.MemoryKiB < MinKDF.MemoryKiB:
		return fmt.Errorf("%w: %s, below %s", ErrWeakKDF, p, MinKDF)
	}
	return nil
}

func (p KDFParams) String() string {
	return fmt.Sprintf("%s t=%d m=%dKiB p=%d", p.Algorithm, p.Time, p.MemoryKiB, p.Threads)
}

// KeyOptions configure NewKeyFile. The zero value is ready to use.
type KeyOptions struct {
	KDF     KDFParams // zero: DefaultKDF
	Host    string    // zero: this host's name
	User    string    // zero: this process's user
	Created time.Time // zero: now
}

func (o KeyOptions) withDefaults() KeyOptions {
	if o.KDF == (KDFParams{}) {
		o.KDF = DefaultKDF
	}
	if o.Host == "" {
		o.Host, _ = os.Hostname()
	}
	if o.User == "" {
		if u, err := user.Current(); err == nil {
			o.User = u.Username
		}
	}
	if o.Created.IsZero() {
		o.Created = time.Now()
	}
	o.Created = o.Created.UTC().Truncate(time.Second)
	return o
}

// Validate reports whether o, with defaults filled in, is usable.
func (o KeyOptions) Validate() error {
	o = o.withDefaults()
	if err := o.KDF.Validate(); err != nil {
		return err
	}
	return checkMeta(o.Host, o.User)
}

func checkMeta(host, user string) error {
	for _, s := range []string{host, user} {
		if len(s) > maxMetaLen || !utf8.ValidString(s) {
			return fmt.Errorf("%w: host or user %q is not valid UTF-8 of at most %d bytes", ErrKeyFileCorrupt, s, maxMetaLen)
		}
	}
	return nil
}

// KeyFile is a decoded key file: who made it, when, and how its passphrase
// is stretched; the master secret stays sealed until Unlock.
type KeyFile struct {
	ID      string    // 16 hex digits; the key file's name in its KeyStore
	Created time.Time // whole seconds, UTC
	Host    string
	User    string
	KDF     KDFParams

	salt  [saltSize]byte
	check [32]byte
	data  []byte // the sealed master secret
}

// sealedSecretSize is the size of a key file's data.
const sealedSecretSize = MasterKeySize + Overhead

// NewKeyFile returns a key file holding mk's secret under passphrase. It
// spends one key derivation (DefaultKDF: about half a second).
func NewKeyFile(mk *MasterKey, passphrase []byte, opts KeyOptions) (*KeyFile, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if len(passphrase) == 0 {
		return nil, ErrEmptyPassphrase
	}
	opts = opts.withDefaults()
	var id [keyIDLen / 2]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails
	kf := &KeyFile{
		ID:      hex.EncodeToString(id[:]),
		Created: opts.Created,
		Host:    opts.Host,
		User:    opts.User,
		KDF:     opts.KDF,
	}
	_, _ = rand.Read(kf.salt[:])
	wrap, check := kf.derive(passphrase)
	kf.check = check
	kf.data = seal(wrap, make([]byte, 0, sealedSecretSize), kf.ad(), mk.secret[:])
	return kf, nil
}

// Unlock returns the master key kf holds, if passphrase is its passphrase.
// It spends one key derivation with kf.KDF. A wrong passphrase gives
// ErrWrongPassphrase; bytes altered since the key file was written, an
// error matching ErrTampered.
func (kf *KeyFile) Unlock(passphrase []byte) (*MasterKey, error) {
	if err := kf.KDF.Validate(); err != nil {
		return nil, fmt.Errorf("key file %s: %w", kf.ID, err)
	}
	if err := checkMeta(kf.Host, kf.User); err != nil {
		return nil, fmt.Errorf("key file %s: %w", kf.ID, err)
	}
	wrap, check := kf.derive(passphrase)
	if subtle.ConstantTimeCompare(check[:], kf.check[:]) != 1 {
		return nil, fmt.Errorf("%w for key file %s", ErrWrongPassphrase, kf.ID)
	}
	secret, err := open(wrap, make([]byte, 0, MasterKeySize), kf.ad(), kf.data)
	if err != nil || len(secret) != MasterKeySize {
		return nil, fmt.Errorf("%w (key file %s: the passphrase is right, but the sealed key or the metadata was changed)", ErrTampered, kf.ID)
	}
	mk := masterKeyFrom([MasterKeySize]byte(secret))
	clear(secret)
	return mk, nil
}

// derive stretches passphrase with kf's salt and parameters: the AEAD that
// seals the secret, and the check.
func (kf *KeyFile) derive(passphrase []byte) (wrap cipher.AEAD, check [32]byte) {
	out := argon2.IDKey(passphrase, kf.salt[:], kf.KDF.Time, kf.KDF.MemoryKiB, kf.KDF.Threads, 64)
	aead, err := chacha20poly1305.NewX(out[:32])
	if err != nil {
		panic(fmt.Sprintf("crypt: XChaCha20-Poly1305 refused a 32-byte key: %v", err))
	}
	blake3.DeriveKey(contextCheck, out[32:], check[:])
	clear(out)
	return aead, check
}

// meta is the canonical encoding of kf's metadata, format to salt: what the
// sealed secret is bound to, and the start of what the checksum covers.
func (kf *KeyFile) meta() []byte {
	b := make([]byte, 0, 128+len(kf.Host)+len(kf.User))
	b = append(b, keyFileFormat...)
	b = append(b, 0)
	b = appendString(b, kf.ID)
	b = binary.BigEndian.AppendUint64(b, uint64(kf.Created.Unix()))
	b = appendString(b, kf.Host)
	b = appendString(b, kf.User)
	b = appendString(b, kf.KDF.Algorithm)
	b = binary.BigEndian.AppendUint32(b, kf.KDF.Time)
	b = binary.BigEndian.AppendUint32(b, kf.KDF.MemoryKiB)
	b = append(b, kf.KDF.Threads)
	return append(b, kf.salt[:]...)
}

// ad is the associated data of the sealed secret.
func (kf *KeyFile) ad() []byte {
	return append([]byte{formatV1, byte(kindKeyFile)}, kf.meta()...)
}

func (kf *KeyFile) checksum() [32]byte {
	h := blake3.New()
	_, _ = h.Write(kf.meta())
	_, _ = h.Write(kf.check[:])
	_, _ = h.Write(kf.data)
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// keyFileJSON is a key file as stored.
type keyFileJSON struct {
	Format   string    `json:"format"`
	ID       string    `json:"id"`
	Created  time.Time `json:"created"`
	Host     string    `json:"host"`
	User     string    `json:"user"`
	KDF      KDFParams `json:"kdf"`
	Salt     []byte    `json:"salt"`
	Check    []byte    `json:"check"`
	Data     []byte    `json:"data"`
	Checksum string    `json:"checksum"`
}

// Marshal encodes kf as a key file.
func (kf *KeyFile) Marshal() []byte {
	sum := kf.checksum()
	b, err := json.MarshalIndent(keyFileJSON{
		Format:   keyFileFormat,
		ID:       kf.ID,
		Created:  kf.Created,
		Host:     kf.Host,
		User:     kf.User,
		KDF:      kf.KDF,
		Salt:     kf.salt[:],
		Check:    kf.check[:],
		Data:     kf.data,
		Checksum: hex.EncodeToString(sum[:]),
	}, "", "  ")
	if err != nil {
		panic(fmt.Sprintf("crypt: encoding a key file: %v", err)) // only plain fields
	}
	return append(b, '\n')
}

// DecodeKeyFile decodes and checks a key file, without its passphrase: its
// fields, its checksum (ErrKeyFileCorrupt), then its KDF parameters
// (ErrWeakKDF below the floor, ErrKeyFileCorrupt above the ceiling), so
// that Unlock never spends what a hostile file asks.
func DecodeKeyFile(b []byte) (*KeyFile, error) {
	corrupt := func(format string, args ...any) (*KeyFile, error) {
		return nil, fmt.Errorf("%w: %s", ErrKeyFileCorrupt, fmt.Sprintf(format, args...))
	}
	if len(b) > MaxKeyFileSize {
		return corrupt("%d bytes, above %d", len(b), MaxKeyFileSize)
	}
	var j keyFileJSON
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&j); err != nil {
		return corrupt("%v", err)
	}
	if d.More() {
		return corrupt("data after the key file")
	}
	switch {
	case j.Format != keyFileFormat:
		return corrupt("format %q, this build reads %q", j.Format, keyFileFormat)
	case !validKeyID(j.ID):
		return corrupt("ID %q is not %d lower-case hex digits", j.ID, keyIDLen)
	case j.Created.Nanosecond() != 0:
		return corrupt("creation time %s is not whole seconds", j.Created)
	case len(j.Salt) != saltSize:
		return corrupt("salt of %d bytes, want %d", len(j.Salt), saltSize)
	case len(j.Check) != 32:
		return corrupt("check of %d bytes, want 32", len(j.Check))
	case len(j.Data) != sealedSecretSize:
		return corrupt("sealed key of %d bytes, want %d", len(j.Data), sealedSecretSize)
	}
	if err := checkMeta(j.Host, j.User); err != nil {
		return nil, err
	}
	kf := &KeyFile{
		ID:      j.ID,
		Created: j.Created.UTC(),
		Host:    j.Host,
		User:    j.User,
		KDF:     j.KDF,
		salt:    [saltSize]byte(j.Salt),
		check:   [32]byte(j.Check),
		data:    j.Data,
	}
	sum, err := hex.DecodeString(j.Checksum)
	if want := kf.checksum(); err != nil || subtle.ConstantTimeCompare(sum, want[:]) != 1 {
		return corrupt("key file %s fails its checksum", j.ID)
	}
	if err := kf.KDF.Validate(); err != nil {
		return nil, fmt.Errorf("key file %s: %w", j.ID, err)
	}
	return kf, nil
}

// validKeyID reports whether s is a key ID: 16 lower-case hex digits. Key
// IDs are file names: nothing else is read or written as one.
func validKeyID(s string) bool {
	if len(s) != keyIDLen {
		return false
	}
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
