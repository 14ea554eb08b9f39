package mover

import (
	"crypto/ed25519"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestInitIdentityOnce(t *testing.T) {
	home := filepath.Join(t.TempDir(), "home")

	id, created, err := InitIdentity(home)
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, PeerIDFromCert(id.Cert.Certificate[0]), id.ID)

	again, created, err := InitIdentity(home)
	require.NoError(t, err)
	require.False(t, created, "an existing identity is never replaced")
	require.Equal(t, id.ID, again.ID)

	loaded, err := LoadIdentity(home)
	require.NoError(t, err)
	require.Equal(t, id.ID, loaded.ID)
	require.Equal(t, id.Cert.Certificate, loaded.Cert.Certificate)
	require.Equal(t, id.Cert.PrivateKey, loaded.Cert.PrivateKey)

	cert, err := x509.ParseCertificate(loaded.Cert.Certificate[0])
	require.NoError(t, err)
	require.Equal(t, "pgporter", cert.Subject.CommonName)
	require.IsType(t, ed25519.PublicKey{}, cert.PublicKey)
	require.Greater(t, cert.NotAfter.Year(), 9000)
	require.NoError(t, cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature), "self-signed")

	entries, err := os.ReadDir(home)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary directory left behind")
}

func TestIdentityFileModes(t *testing.T) {
	home := filepath.Join(t.TempDir(), "home")
	_, _, err := InitIdentity(home)
	require.NoError(t, err)
	for name, want := range map[string]os.FileMode{
		home:              0o700 | os.ModeDir,
		IdentityDir(home): 0o700 | os.ModeDir,
		filepath.Join(IdentityDir(home), "key.pem"): 0o600,
	} {
		fi, err := os.Stat(name)
		require.NoError(t, err)
		require.Equal(t, want, fi.Mode(), name)
	}
	fi, err := os.Stat(filepath.Join(IdentityDir(home), "cert.pem"))
	require.NoError(t, err)
	require.Zero(t, fi.Mode().Perm()&0o022, "cert.pem writable by others")
}

func TestInitIdentityConcurrent(t *testing.T) {
	home := t.TempDir()
	ids := make([]PeerID, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			id, _, err := InitIdentity(home)
			if err == nil {
				ids[i] = id.ID
			}
		})
	}
	wg.Wait()
	for _, id := range ids {
		require.Equal(t, ids[0], id, "every caller gets the one identity")
	}
	loaded, err := LoadIdentity(home)
	require.NoError(t, err)
	require.Equal(t, ids[0], loaded.ID)
}

func TestLoadIdentityMissing(t *testing.T) {
	home := t.TempDir()
	_, err := LoadIdentity(home)
	require.ErrorIs(t, err, ErrNoIdentity)
	require.ErrorContains(t, err, "pgporter mover init --home "+home)
}

func TestInitIdentityRefusesPartial(t *testing.T) {
	// Regression: a half-removed identity must not be silently replaced by a
	// new one, nor reported as "no identity".
	home := t.TempDir()
	_, _, err := InitIdentity(home)
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(IdentityDir(home), "cert.pem")))
	_, _, err = InitIdentity(home)
	require.ErrorContains(t, err, "move it aside")
}
