package mover

import (
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
)

// PeerID names a mover: the SHA-256 of its certificate (DER). Two movers
// trust each other by exchanging peer IDs out of band, as Syncthing devices
// exchange device IDs; no certificate authority is involved.
type PeerID [32]byte

// peerIDLen is the length of the text form without dashes: 52 base32
// characters in 4 groups of 13, each group followed by a check character.
const (
	peerIDGroups   = 4
	peerIDGroupLen = 13
	peerIDLen      = peerIDGroups * (peerIDGroupLen + 1) // 56
	peerIDShowLen  = 7
)

const base32Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

var peerIDEncoding = base32.NewEncoding(base32Alphabet).WithPadding(base32.NoPadding)

// ErrBadPeerID is returned by [ParsePeerID] for text that is not a peer ID.
var ErrBadPeerID = errors.New("mover: invalid peer ID")

// PeerIDFromCert returns the peer ID of the certificate der.
func PeerIDFromCert(der []byte) PeerID { return sha256.Sum256(der) }

// IsZero reports whether id is the zero value (no peer).
func (id PeerID) IsZero() bool { return id == PeerID{} }

// String returns the form operators read and type: 56 characters (the
// base32 of the ID with a Luhn mod 32 check character after every 13) in 8
// dash-separated groups of 7, e.g. "MFRGGZD-FMZTWQ2-…".
func (id PeerID) String() string {
	plain := peerIDEncoding.EncodeToString(id[:])
	var checked strings.Builder
	checked.Grow(peerIDLen)
	for i := range peerIDGroups {
		g := plain[i*peerIDGroupLen : (i+1)*peerIDGroupLen]
		checked.WriteString(g)
		checked.WriteByte(luhn32(g))
	}
	s := checked.String()
	var out strings.Builder
	out.Grow(peerIDLen + peerIDLen/peerIDShowLen - 1)
	for i := 0; i < len(s); i += peerIDShowLen {
		if i > 0 {
			out.WriteByte('-')
		}
		out.WriteString(s[i : i+peerIDShowLen])
	}
	return out.String()
}

// Short returns the first group of the ID, enough to tell peers apart in
// logs; it is not unique and must not be used to identify a peer.
func (id PeerID) Short() string { return id.String()[:peerIDShowLen] }

// MarshalText implements [encoding.TextMarshaler] with the [PeerID.String] form.
func (id PeerID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements [encoding.TextUnmarshaler] with [ParsePeerID].
func (id *PeerID) UnmarshalText(b []byte) error {
	p, err := ParsePeerID(string(b))
	if err != nil {
		return err
	}
	*id = p
	return nil
}

// ParsePeerID parses the text form of a peer ID. It ignores case, dashes and
// spaces, reads the digits 0, 1 and 8 (not in the base32 alphabet) as the
// letters O, I and B they are usually mistaken for, and verifies every check
// character so that a typo is reported rather than trusted.
func ParsePeerID(s string) (PeerID, error) {
	var b strings.Builder
	b.Grow(peerIDLen)
	for _, r := range s {
		switch {
		case r == '-' || r == ' ' || r == '\t':
			continue
		case r >= 'a' && r <= 'z':
			r -= 'a' - 'A'
		case r == '0':
			r = 'O'
		case r == '1':
			r = 'I'
		case r == '8':
			r = 'B'
		}
		if !strings.ContainsRune(base32Alphabet, r) {
			return PeerID{}, fmt.Errorf("%w %q: character %q is not in A-Z, 2-7", ErrBadPeerID, s, r)
		}
		if b.Len() == peerIDLen {
			return PeerID{}, fmt.Errorf("%w %q: longer than %d characters", ErrBadPeerID, s, peerIDLen)
		}
		b.WriteRune(r)
	}
	checked := b.String()
	if len(checked) != peerIDLen {
		return PeerID{}, fmt.Errorf("%w %q: %d characters, want %d (8 groups of 7)", ErrBadPeerID, s, len(checked), peerIDLen)
	}
	var plain strings.Builder
	plain.Grow(peerIDGroups * peerIDGroupLen)
	for i := range peerIDGroups {
		g := checked[i*(peerIDGroupLen+1) : (i+1)*(peerIDGroupLen+1)]
		if luhn32(g[:peerIDGroupLen]) != g[peerIDGroupLen] {
			return PeerID{}, fmt.Errorf("%w %q: check character mismatch: typo?", ErrBadPeerID, s)
		}
		plain.WriteString(g[:peerIDGroupLen])
	}
	raw, err := peerIDEncoding.DecodeString(plain.String())
	if err != nil || len(raw) != len(PeerID{}) {
		return PeerID{}, fmt.Errorf("%w %q: not decodable", ErrBadPeerID, s)
	}
	id := PeerID(raw)
	// The last base32 character carries one bit; a text whose unused bits are
	// set would decode to the same ID as another text. Accept one spelling.
	if peerIDEncoding.EncodeToString(id[:]) != plain.String() {
		return PeerID{}, fmt.Errorf("%w %q: not in canonical form: typo?", ErrBadPeerID, s)
	}
	return id, nil
}

// luhn32 returns the Luhn mod N check character (N = 32, over the base32
// alphabet) of s, which holds only alphabet characters. It catches every
// single-character error and most swaps of adjacent characters.
func luhn32(s string) byte {
	const n = len(base32Alphabet)
	factor := 2
	sum := 0
	for i := len(s) - 1; i >= 0; i-- {
		addend := factor * strings.IndexByte(base32Alphabet, s[i])
		addend = addend/n + addend%n
		sum += addend
		factor = 3 - factor
	}
	return base32Alphabet[(n-sum%n)%n]
}
