package chunkstore

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/pgporter/pgporter/chunkstore/crypt"
)

// An encrypted store's format marker (DIR/format, or chunks/format on a
// Remote) names the sealed layout and carries a check: the layout's name
// sealed under the store's key, so that a Local, which does not see the
// repository's config (docs/design/0010-repository-encryption.md,
// "Config"), refuses another store's key at open rather than reporting
// every chunk as tampered:
//
//	pgporter-chunkstore-2-sealed
//	check <base64 of Seal(KindConfig, "chunks/format", "pgporter-chunkstore-2-sealed")>
//
// A plain store's marker is storeFormat alone, as before.
const (
	sealedFormat    = "pgporter-chunkstore-2-sealed"
	formatCheckName = "chunks/format"
	formatCheckTag  = "check "
)

var (
	// ErrEncrypted is matched by the error of opening an encrypted store
	// without a key.
	ErrEncrypted = errors.New("chunkstore: the store is encrypted: it needs its key (a passphrase)")
	// ErrNotEncrypted is matched by the error of opening a plain store
	// with a key.
	ErrNotEncrypted = errors.New("chunkstore: the store is not encrypted: open it without a key")
	// ErrWrongKey is matched by the error of opening an encrypted store
	// with a key that is not its own. It wraps the crypt error too
	// (crypt.ErrTampered; ErrFormat for a check that is not a sealed
	// object): the store cannot tell a wrong key from an altered marker.
	ErrWrongKey = errors.New("chunkstore: the key is not this store's")
)

// formatBody is the format marker a new store of l's kind records.
func (l *Local) formatBody() []byte {
	if l.key == nil {
		return []byte(storeFormat + "\n")
	}
	sealed := l.key.Seal(nil, crypt.KindConfig, formatCheckName, []byte(sealedFormat))
	return []byte(sealedFormat + "\n" + formatCheckTag + base64.StdEncoding.EncodeToString(sealed) + "\n")
}

// checkFormatBody refuses a format marker b that is not of l's kind: of
// another layout, encrypted when l has no key or plain when it has one, or
// sealed under another key. where names the store in its errors.
func (l *Local) checkFormatBody(where string, b []byte) error {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	switch got := strings.TrimSpace(lines[0]); {
	case got == storeFormat && len(lines) == 1:
		if l.key != nil {
			return fmt.Errorf("%w (%s)", ErrNotEncrypted, where)
		}
		return nil
	case got == sealedFormat:
		if l.key == nil {
			return fmt.Errorf("%w (%s)", ErrEncrypted, where)
		}
		if len(lines) != 2 || !strings.HasPrefix(lines[1], formatCheckTag) {
			return fmt.Errorf("chunkstore: the format marker of %s has no key check: %w", where, crypt.ErrTampered)
		}
		sealed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(strings.TrimPrefix(lines[1], formatCheckTag)))
		if err != nil {
			return fmt.Errorf("chunkstore: the key check of %s does not decode: %w", where, crypt.ErrTampered)
		}
		plain, err := l.key.Open(nil, crypt.KindConfig, formatCheckName, sealed)
		if err != nil {
			return fmt.Errorf("%w (%s): %w", ErrWrongKey, where, err)
		}
		if !bytes.Equal(plain, []byte(sealedFormat)) {
			return fmt.Errorf("%w (%s): the key check opens to %q", ErrWrongKey, where, plain)
		}
		return nil
	default:
		want := storeFormat
		if l.key != nil {
			want = sealedFormat
		}
		return fmt.Errorf("chunkstore: %s holds a store of format %q; this build reads %q", where, got, want)
	}
}
