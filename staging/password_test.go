package staging

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

// TestPgpassLookup reads .pgpass lines through a temporary PGPASSFILE,
// parsed by jackc/pgpassfile: the cases where it agrees with libpq.
// TestPasswordCheckEndToEnd compares with libpq itself, differences
// included.
func TestPgpassLookup(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		db, user   string
		want       string
	}{
		{name: "exact", file: "localhost:5432:shop:app:pw\n", want: "pw"},
		{name: "no trailing newline", file: "localhost:5432:shop:app:pw", want: "pw"},
		{name: "CRLF", file: "localhost:5432:shop:app:pw\r\n", want: "pw"},
		{name: "wildcards", file: "*:*:*:*:any\n", want: "any"},
		{name: "wildcard host and db", file: "*:5432:*:app:pw\n", want: "pw"},
		{name: "other port", file: "localhost:5433:shop:app:pw\n"},
		{name: "other user", file: "localhost:5432:shop:bob:pw\n"},
		{name: "other database", file: "localhost:5432:other:app:pw\n"},
		{name: "other host", file: "db.example.com:5432:shop:app:pw\n"},
		{name: "first match wins", file: "localhost:5432:shop:bob:no\n*:*:*:app:first\nlocalhost:5432:shop:app:second\n", want: "first"},
		{name: "comments and blank lines", file: "# localhost:5432:shop:app:commented\n\n\r\n  \nlocalhost:5432:shop:app:pw\n", want: "pw"},
		{name: "a comment only at the start of a line", file: "localhost:5432:shop:app:#pw\n", want: "#pw"},
		{name: "escaped colon and backslash in the password", file: `localhost:5432:shop:app:a\:b\\c` + "\n", want: `a:b\c`},
		{name: "escaped colon in the database", db: "we:ird", file: `localhost:5432:we\:ird:app:pw` + "\n", want: "pw"},
		{name: "escaped backslash in the user", user: `dom\app`, file: `localhost:5432:shop:dom\\app:pw` + "\n", want: "pw"},
		{name: "star prefix is not a wildcard", file: "localhost:5432:sh*:app:pw\n"},
		{name: "spaces and unicode", db: "Weird DB ü", file: "localhost:5432:Weird DB ü:app:pw\n", want: "pw"},
		{name: "too few fields", file: "localhost:5432:shop:app\n"},
		{name: "case matters", file: "localhost:5432:Shop:app:pw\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, user := "shop", "app"
			if tc.db != "" {
				db = tc.db
			}
			if tc.user != "" {
				user = tc.user
			}
			p := filepath.Join(t.TempDir(), "pgpass")
			require.NoError(t, os.WriteFile(p, []byte(tc.file), 0o600))
			pw, from, err := ResolvePassword(PasswordOptions{User: user, Database: db, Home: t.TempDir(), Getenv: func(k string) string {
				if k == "PGPASSFILE" {
					return p
				}
				return ""
			}})
			if tc.want == "" {
				require.ErrorIs(t, err, ErrNoPassword)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, pw)
			require.Equal(t, "password file "+p, from)
		})
	}
}

func TestPasswordResolveOrder(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), mode))
		require.NoError(t, os.Chmod(p, mode))
		return p
	}
	file := write("pwfile", "from-file\nsecond line\n", 0o600)
	home := t.TempDir()
	pgpass := filepath.Join(home, ".pgpass")
	require.NoError(t, os.WriteFile(pgpass, []byte("localhost:6000:shop:app:from-home\n"), 0o600))
	other := write("other.pgpass", "*:6000:*:app:from-pgpassfile\n", 0o600)
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	base := PasswordOptions{User: "app", Database: "shop", Port: 6000, Home: home}

	for _, tc := range []struct {
		name       string
		mod        func(*PasswordOptions)
		want, from string
	}{
		{"password file first", func(o *PasswordOptions) {
			o.File, o.Getenv = file, env(map[string]string{"PGPASSWORD": "env", "PGPASSFILE": other})
		}, "from-file", "password file " + file},
		{"then PGPASSWORD", func(o *PasswordOptions) {
			o.Getenv = env(map[string]string{"PGPASSWORD": "env", "PGPASSFILE": other})
		}, "env", "PGPASSWORD"},
		{"an empty PGPASSWORD is not a password", func(o *PasswordOptions) {
			o.Getenv = env(map[string]string{"PGPASSWORD": ""})
		}, "from-home", "password file " + pgpass},
		{"then PGPASSFILE", func(o *PasswordOptions) {
			o.Getenv = env(map[string]string{"PGPASSFILE": other})
		}, "from-pgpassfile", "password file " + other},
		{"then ~/.pgpass", func(o *PasswordOptions) { o.Getenv = env(nil) }, "from-home", "password file " + pgpass},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.mod(&o)
			pw, from, err := ResolvePassword(o)
			require.NoError(t, err)
			require.Equal(t, tc.want, pw)
			require.Equal(t, tc.from, from)
		})
	}

	t.Run("no password anywhere", func(t *testing.T) {
		o := base
		o.Port, o.Getenv = 7000, env(nil)
		_, _, err := ResolvePassword(o)
		require.ErrorIs(t, err, ErrNoPassword)
		require.Contains(t, err.Error(), pgpass+" has no line for localhost:7000:shop:app")
	})
	t.Run("a PGPASSFILE that does not exist is ignored, as libpq does", func(t *testing.T) {
		o := base
		o.Getenv = env(map[string]string{"PGPASSFILE": filepath.Join(dir, "nosuch")})
		_, _, err := ResolvePassword(o)
		require.ErrorIs(t, err, ErrNoPassword)
	})
	t.Run("user is required", func(t *testing.T) {
		_, _, err := ResolvePassword(PasswordOptions{})
		require.Error(t, err)
	})
}

func TestPasswordFile(t *testing.T) {
	dir := t.TempDir()
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	for _, tc := range []struct {
		name, content string
		mode          os.FileMode
		want, err     string
		warn          bool
	}{
		{name: "first line, newline stripped", content: "s3cret\nignored\n", mode: 0o600, want: "s3cret"},
		{name: "CRLF stripped", content: "s3cret\r\n", mode: 0o400, want: "s3cret"},
		{name: "no newline", content: "s3cret", mode: 0o600, want: "s3cret"},
		{name: "spaces and colons are the password's", content: " a:b \\ \n", mode: 0o600, want: ` a:b \ `},
		{name: "readable by others: used, with a warning", content: "s3cret\n", mode: 0o644, want: "s3cret", warn: true},
		{name: "empty", content: "", mode: 0o600, err: "first line is empty"},
		{name: "empty first line", content: "\ns3cret\n", mode: 0o600, err: "first line is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logged.Reset()
			p := filepath.Join(dir, "pw")
			require.NoError(t, os.WriteFile(p, []byte(tc.content), 0o600))
			require.NoError(t, os.Chmod(p, tc.mode))
			pw, _, err := ResolvePassword(PasswordOptions{User: "app", File: p, Log: log, Getenv: func(string) string { return "" }})
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, pw)
			require.Equal(t, tc.warn, bytes.Contains(logged.Bytes(), []byte("group or others")), logged.String())
		})
	}
	t.Run("missing", func(t *testing.T) {
		_, _, err := ResolvePassword(PasswordOptions{User: "app", File: filepath.Join(dir, "nosuch")})
		require.ErrorContains(t, err, "password file")
	})
	t.Run("a directory", func(t *testing.T) {
		_, _, err := ResolvePassword(PasswordOptions{User: "app", File: dir})
		require.ErrorContains(t, err, "not a regular file")
	})
}

// A .pgpass that group or others can access is ignored with a warning, as
// libpq does, so that pgporter never accepts a password libpq would refuse.
func TestPgpassPermissions(t *testing.T) {
	home := t.TempDir()
	pgpass := filepath.Join(home, ".pgpass")
	require.NoError(t, os.WriteFile(pgpass, []byte("*:*:*:app:pw\n"), 0o600))
	noEnv := func(string) string { return "" }
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o600, true}, {0o400, true}, {0o640, false}, {0o604, false}, {0o660, false}, {0o644, false}, {0o700, true}, {0o610, false}} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			require.NoError(t, os.Chmod(pgpass, tc.mode))
			var logged bytes.Buffer
			pw, _, err := ResolvePassword(PasswordOptions{User: "app", Home: home, Getenv: noEnv, Log: slog.New(slog.NewTextHandler(&logged, nil))})
			if tc.ok {
				require.NoError(t, err)
				require.Equal(t, "pw", pw)
				require.Empty(t, logged.String())
				return
			}
			require.ErrorIs(t, err, ErrNoPassword)
			require.Contains(t, logged.String(), "group or world access")
		})
	}
	t.Run("not a plain file", func(t *testing.T) {
		dirHome := t.TempDir()
		require.NoError(t, os.Mkdir(filepath.Join(dirHome, ".pgpass"), 0o700))
		var logged bytes.Buffer
		_, _, err := ResolvePassword(PasswordOptions{User: "app", Home: dirHome, Getenv: noEnv, Log: slog.New(slog.NewTextHandler(&logged, nil))})
		require.ErrorIs(t, err, ErrNoPassword)
		require.Contains(t, logged.String(), "not a plain file")
	})
}

// TestPasswordCheckEndToEnd resolves passwords from a .pgpass and a password
// file and hands them to Check against a real instance: the right one
// passes, a wrong one is reported as a wrong password.
func TestPasswordCheckEndToEnd(t *testing.T) {
	testsupport.RequirePG(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "s3cret"})
	// A password with the characters .pgpass escapes.
	c.Exec(t, "postgres", `CREATE ROLE app LOGIN PASSWORD 'a:b\c'`)
	c.CreateDB(t, "Weird DB")
	c.Exec(t, "Weird DB", `CREATE TABLE t(v int); GRANT SELECT ON t TO app`)
	c.Stop(t)
	dataDir, runDir := copyDataDir(t, c.DataDir)
	ctx := context.Background()
	in, err := StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir})
	require.NoError(t, err)
	t.Cleanup(func() { in.Stop(context.Background()) })

	noEnv := func(string) string { return "" }
	check := func(t *testing.T, pw string) *CheckReport {
		t.Helper()
		rep, err := in.Check(ctx, CheckOptions{Databases: []string{"Weird DB"}, User: "app", Password: pw})
		require.NoError(t, err)
		return rep
	}
	t.Run("right password from .pgpass", func(t *testing.T) {
		home := t.TempDir()
		content := "# the source server\nlocalhost:5432:*:app:old\n" +
			"localhost:" + strconv.Itoa(in.Port) + `:Weird DB:app:a\:b\\c` + "\n"
		require.NoError(t, os.WriteFile(filepath.Join(home, ".pgpass"), []byte(content), 0o600))
		pw, from, err := ResolvePassword(PasswordOptions{User: "app", Database: "Weird DB", Port: in.Port, Home: home, Getenv: noEnv})
		require.NoError(t, err)
		require.Equal(t, "password file "+filepath.Join(home, ".pgpass"), from)
		rep := check(t, pw)
		require.NoError(t, rep.Err())
	})
	t.Run("wrong password from .pgpass", func(t *testing.T) {
		home := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(home, ".pgpass"), []byte(`*:*:*:app:a\:bc`+"\n"), 0o600))
		pw, _, err := ResolvePassword(PasswordOptions{User: "app", Database: "Weird DB", Port: in.Port, Home: home, Getenv: noEnv})
		require.NoError(t, err)
		require.Equal(t, "a:bc", pw)
		rep := check(t, pw)
		require.ErrorIs(t, rep.Err(), ErrChecks)
		require.Len(t, rep.Problems, 1)
		require.Equal(t, "credentials", rep.Problems[0].Kind)
		require.Contains(t, rep.Problems[0].Message, `user "app" cannot log in with the given password`)
	})
	t.Run("right password from a password file", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "pw")
		require.NoError(t, os.WriteFile(p, []byte(`a:b\c`+"\n"), 0o600))
		pw, _, err := ResolvePassword(PasswordOptions{User: "app", File: p, Getenv: noEnv})
		require.NoError(t, err)
		require.NoError(t, check(t, pw).Err())
	})
	// The parser agrees with libpq's on the same files, but for the
	// differences recorded. libpq names a
	// socket outside the default directory by its path, so Host is set to
	// that here.
	t.Run("agrees with libpq", func(t *testing.T) {
		port := strconv.Itoa(in.Port)
		for _, tc := range []struct {
			file string
			ok   bool
			// libpq differs from jackc/pgpassfile, which splits at every
			// unescaped colon and de-escapes only "\\:" and "\\\\": libpq
			// de-escapes every character in every field.
			libpq bool
		}{
			{"*:*:*:app:a\\:b\\\\c\n", true, true},
			{"*:*:*:app:a:b\\c\n", false, false},
			{"# *:*:*:app:a\\:b\\\\c\n*:*:*:app:wrong\n", false, false},
			{"*:*:*:app:wrong\n*:*:*:app:a\\:b\\\\c\n", false, false}, // the first match wins
			{"*:" + port + ":Weird DB:app:a\\:b\\\\c\r\n", true, true},
			{"*:" + port + ":Weird\\ DB:app:a\\:b\\\\c\n", false, true}, // pgpassfile keeps the backslash
			{"*:" + port + ":weird db:app:a\\:b\\\\c\n", false, false},
			{in.SocketDir + ":" + port + ":*:app:a\\:b\\\\c\n", true, true},
			{"localhost:" + port + ":*:app:a\\:b\\\\c\n", false, false},
			{"*:\\*:*:app:a\\:b\\\\c\n", false, false},
		} {
			p := filepath.Join(t.TempDir(), "pgpass")
			require.NoError(t, os.WriteFile(p, []byte(tc.file), 0o600))
			pw, _, err := ResolvePassword(PasswordOptions{User: "app", Database: "Weird DB", Host: in.SocketDir, Port: in.Port, Getenv: func(k string) string {
				if k == "PGPASSFILE" {
					return p
				}
				return ""
			}})
			ours := err == nil && pw == `a:b\c`
			psql := exec.Command(filepath.Join(in.BinDir, "psql"), "-w", "-X", "-c", "SELECT 1", in.ConnString("Weird DB", "app"))
			psql.Env = []string{"PGPASSFILE=" + p}
			out, err := psql.CombinedOutput()
			require.Equal(t, tc.ok, ours, "%q", tc.file)
			require.Equal(t, tc.libpq, err == nil, "%q: libpq says %s", tc.file, out)
		}
	})
	t.Run("wrong password from PGPASSWORD", func(t *testing.T) {
		pw, _, err := ResolvePassword(PasswordOptions{User: "app", Getenv: func(k string) string {
			if k == "PGPASSWORD" {
				return "a:b"
			}
			return ""
		}})
		require.NoError(t, err)
		rep := check(t, pw)
		require.Len(t, rep.Problems, 1)
		require.Equal(t, "credentials", rep.Problems[0].Kind)
	})
}
