package staging

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// PGSERVICE names a service of the user's file, else of the system's, and
// its password (or its passfile) is the user's credential, before
// PGPASSWORD as libpq has it.
func TestServiceCredentials(t *testing.T) {
	home, sys := t.TempDir(), t.TempDir()
	write := func(name, content string) string {
		require.NoError(t, os.WriteFile(name, []byte(content), 0o600))
		return name
	}
	userFile := write(filepath.Join(home, ".pg_service.conf"), "# mine\n[shop]\nuser=app\npassword=from-service\nport=6432\n\n[nopw]\nuser=app\n")
	otherPass := write(filepath.Join(t.TempDir(), "pgpass"), "*:*:*:app:from-service-passfile\n")
	sysFile := write(filepath.Join(sys, "pg_service.conf"), "[shop]\nuser=sysuser\n[sysonly]\nuser=app\npassfile="+otherPass+"\n")
	env := func(kv map[string]string) func(string) string {
		return func(k string) string {
			if k == "PGSYSCONFDIR" {
				return sys
			}
			return kv[k]
		}
	}

	t.Run("none", func(t *testing.T) {
		s, err := LookupService(env(nil), home)
		require.NoError(t, err)
		require.Empty(t, s.Name)
	})
	t.Run("the user's file wins whole", func(t *testing.T) {
		s, err := LookupService(env(map[string]string{"PGSERVICE": "shop"}), home)
		require.NoError(t, err)
		require.Equal(t, userFile, s.File)
		require.Equal(t, "app", s.Settings["user"])
		getenv := env(map[string]string{"PGSERVICE": "shop", "PGPASSWORD": "from-env"})
		pw, from, err := ResolvePassword(PasswordOptions{User: "app", Service: s, Home: home, Getenv: getenv})
		require.NoError(t, err)
		require.Equal(t, "from-service", pw)
		require.Equal(t, "service shop in "+userFile, from)
	})
	t.Run("the system file, and the service's passfile", func(t *testing.T) {
		s, err := LookupService(env(map[string]string{"PGSERVICE": "sysonly"}), home)
		require.NoError(t, err)
		require.Equal(t, sysFile, s.File)
		pw, from, err := ResolvePassword(PasswordOptions{User: "app", Service: s, Home: home, Getenv: env(nil)})
		require.NoError(t, err)
		require.Equal(t, "from-service-passfile", pw)
		require.Equal(t, "password file "+otherPass, from)
	})
	t.Run("PGSERVICEFILE", func(t *testing.T) {
		f := write(filepath.Join(t.TempDir(), "svc.conf"), "[elsewhere]\npassword=x\n")
		s, err := LookupService(env(map[string]string{"PGSERVICE": "elsewhere", "PGSERVICEFILE": f}), home)
		require.NoError(t, err)
		require.Equal(t, f, s.File)
		require.Equal(t, "x", s.Settings["password"])
	})
	t.Run("a service without a password", func(t *testing.T) {
		s, err := LookupService(env(map[string]string{"PGSERVICE": "nopw"}), home)
		require.NoError(t, err)
		_, _, err = ResolvePassword(PasswordOptions{User: "app", Service: s, Home: t.TempDir(), Getenv: env(nil)})
		require.ErrorIs(t, err, ErrNoPassword)
		require.ErrorContains(t, err, "service nopw has no password")
	})
	t.Run("unknown service", func(t *testing.T) {
		_, err := LookupService(env(map[string]string{"PGSERVICE": "nosuch"}), home)
		require.ErrorIs(t, err, ErrNoService)
		require.ErrorContains(t, err, `"nosuch"`)
	})
	t.Run("a malformed file", func(t *testing.T) {
		f := write(filepath.Join(t.TempDir(), "bad.conf"), "user=nosection\n")
		_, err := LookupService(env(map[string]string{"PGSERVICE": "x", "PGSERVICEFILE": f}), home)
		require.ErrorContains(t, err, "service file "+f)
	})
}
