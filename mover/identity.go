package mover

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
)

// Files of the identity under the home directory.
const (
	identityDir  = "identity"
	certFileName = "cert.pem"
	keyFileName  = "key.pem"
)

// certCommonName is the subject of every mover certificate. Movers are named
// by their peer ID, not by the certificate's subject.
const certCommonName = "pgporter"

// ErrNoIdentity is returned by [LoadIdentity] when the home has no identity.
var ErrNoIdentity = errors.New("mover: no identity")

// Identity is this mover's key pair and self-signed certificate; ID is the
// hash of the certificate, what peers put in their trust lists.
type Identity struct {
	Cert tls.Certificate
	ID   PeerID

	home string // where it was loaded from: peers seen are recorded there
}

// StatelessResetKey derives the key of the QUIC stateless resets this
// mover sends from its private key: stable across restarts, so that a mover
// restarted after a crash can tell its predecessor's peers at once that
// their connections are gone (RFC 9000, section 10.3), instead of leaving
// them to time out. Nothing else can be derived from it.
func (id *Identity) StatelessResetKey() *quic.StatelessResetKey {
	h := sha256.New()
	h.Write([]byte("pgporter mover stateless reset key v1\x00"))
	if k, ok := id.Cert.PrivateKey.(ed25519.PrivateKey); ok {
		h.Write(k.Seed())
	}
	var key quic.StatelessResetKey
	copy(key[:], h.Sum(nil))
	return &key
}

// IdentityDir returns the directory holding the identity under home.
func IdentityDir(home string) string { return filepath.Join(home, identityDir) }

// InitIdentity creates the identity under home (identity/cert.pem and
// identity/key.pem) unless one exists; created says which happened. An
// existing identity is never replaced: peers trust its ID.
//
// Both files are written into a temporary directory that is then renamed to
// identity/, so a crash or a concurrent InitIdentity never leaves a key that
// does not match the certificate.
func InitIdentity(home string) (id *Identity, created bool, err error) {
	if id, err := LoadIdentity(home); err == nil {
		return id, false, nil
	} else if !errors.Is(err, ErrNoIdentity) {
		return nil, false, err
	}
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, false, fmt.Errorf("creating home: %w", err)
	}
	certPEM, keyPEM, err := newSelfSigned()
	if err != nil {
		return nil, false, err
	}
	tmp, err := os.MkdirTemp(home, ".identity-tmp-")
	if err != nil {
		return nil, false, fmt.Errorf("creating identity: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	if err := writeNewFileSynced(filepath.Join(tmp, keyFileName), keyPEM, 0o600); err != nil {
		return nil, false, err
	}
	if err := writeNewFileSynced(filepath.Join(tmp, certFileName), certPEM, 0o644); err != nil {
		return nil, false, err
	}
	if err := syncDirPath(tmp); err != nil {
		return nil, false, err
	}
	dst := IdentityDir(home)
	if err := os.Rename(tmp, dst); err != nil {
		// Another process won the race (rename refuses a non-empty target):
		// theirs is the identity.
		if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) {
			id, err := LoadIdentity(home)
			if errors.Is(err, ErrNoIdentity) {
				return nil, false, fmt.Errorf("creating identity: %s exists without %s: move it aside and retry", dst, certFileName)
			}
			return id, false, err
		}
		return nil, false, fmt.Errorf("creating identity: %w", err)
	}
	if err := syncDirPath(home); err != nil {
		return nil, false, err
	}
	id, err = LoadIdentity(home)
	if err != nil {
		return nil, false, err
	}
	return id, true, nil
}

// LoadIdentity reads the identity under home. Without one it returns an
// error matching [ErrNoIdentity] that tells how to create it.
func LoadIdentity(home string) (*Identity, error) {
	dir := IdentityDir(home)
	certPEM, err := os.ReadFile(filepath.Join(dir, certFileName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s: run 'pgporter mover init --home %s' first", ErrNoIdentity, home, home)
	}
	if err != nil {
		return nil, fmt.Errorf("reading identity: %w", err)
	}
	keyPath := filepath.Join(dir, keyFileName)
	keyPEM, err := readPrivateFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("reading identity: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loading identity from %s: %w", dir, err)
	}
	if len(cert.Certificate) != 1 {
		return nil, fmt.Errorf("loading identity from %s: %d certificates in %s, want 1", dir, len(cert.Certificate), certFileName)
	}
	return &Identity{Cert: cert, ID: PeerIDFromCert(cert.Certificate[0]), home: home}, nil
}

// ErrKeyExposed is matched by the refusal of a private key file that group
// or others may read.
var ErrKeyExposed = errors.New("mover: private key readable by others")

// readPrivateFile reads a private key file, refusing one that group or
// others can read: whoever reads the key can act as this mover.
func readPrivateFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; run 'chmod 600 %s'", ErrKeyExposed, name, perm, name)
	}
	return io.ReadAll(io.LimitReader(f, 1<<20))
}

// newSelfSigned returns a new Ed25519 key and a self-signed certificate for
// it, both PEM-encoded. The certificate never expires in practice: peers pin
// its hash, so an expiry would only break trust without adding safety.
func newSelfSigned() (certPEM, keyPEM []byte, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("generating serial: %w", err)
	}
	now := time.Now().UTC()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: certCommonName},
		DNSNames:              []string{certCommonName},
		NotBefore:             now.Add(-24 * time.Hour).Truncate(24 * time.Hour),
		NotAfter:              time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), // RFC 5280 "no expiry"
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, nil, fmt.Errorf("creating certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding key: %w", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM, nil
}

// writeNewFileSynced creates name with data and syncs it. The caller renames it
// into place and syncs the directory.
func writeNewFileSynced(name string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("writing %s: %w", filepath.Base(name), err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", filepath.Base(name), err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing %s: %w", filepath.Base(name), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", filepath.Base(name), err)
	}
	return nil
}

// syncDirPath makes the entries of dir (a rename into it) durable.
func syncDirPath(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}
