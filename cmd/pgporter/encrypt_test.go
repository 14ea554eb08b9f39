package main

import (
	"encoding/json"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// writePass writes a passphrase file.
func writePass(t *testing.T, passphrase string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pass")
	require.NoError(t, os.WriteFile(p, []byte(passphrase+"\n"), 0o600))
	return p
}

// TestEncryptedRepoCLI: an encrypted repository from the command line.
// repo init --encrypt; backup, restore-points, check need its passphrase,
// refused (with their exit codes) when it is missing, wrong, or given to a
// plain repository; keys are added, listed and removed; a mover serves
// the repository to a staging host that holds no key, whose mount reads
// every file back; repo copy seals a plain repository's points anew.
func TestEncryptedRepoCLI(t *testing.T) {
	testsupport.RequireFUSE(t)
	t.Setenv(crypt.PasswordEnv, "")
	os.Unsetenv(crypt.PasswordEnv)
	t.Setenv(chunkstore.PasswordFileEnv, "")
	os.Unsetenv(chunkstore.PasswordFileEnv)
	src, files := fakeDataDir(t)
	repo := filepath.Join(t.TempDir(), "repo")
	pass, pass2, wrong := writePass(t, "first passphrase"), writePass(t, "second passphrase"), writePass(t, "wrong")

	code, out, errs := runCLI(t, "repo", "init", "--repo", repo, "--encrypt", "--repo-password-file", pass)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "created encrypted repository")
	code, _, errs = runCLI(t, "repo", "init", "--repo", repo, "--encrypt", "--repo-password-file", pass)
	require.Equal(t, exitConflict, code, errs)
	require.Contains(t, errs, "a repository is there already")

	code, _, errs = runCLI(t, "backup", "--repo", repo, "--pgdata", src)
	require.Equal(t, exitUsage, code, errs)
	require.Contains(t, errs, crypt.PasswordEnv, "the message says where a passphrase comes from")
	code, _, errs = runCLI(t, "backup", "--repo", repo, "--pgdata", src, "--repo-password-file", wrong)
	require.Equal(t, exitPermission, code, errs)
	require.Contains(t, errs, "wrong passphrase")
	code, out, errs = runCLI(t, "backup", "--repo", repo, "--pgdata", src, "--repo-password-file", pass)
	require.Equal(t, 0, code, errs)
	id := lastLine(out)
	require.Regexp(t, `^rp-`, id)

	t.Setenv(crypt.PasswordEnv, "first passphrase") // the other source
	code, out, errs = runCLI(t, "restore-points", "--repo", repo)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, id)
	os.Unsetenv(crypt.PasswordEnv)
	plain0 := plainRepo(t, src)
	t.Setenv(chunkstore.PasswordFileEnv, pass) // a job's settings
	code, out, errs = runCLI(t, "restore-points", "--repo", repo)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, id)
	code, _, errs = runCLI(t, "restore-points", "--repo", plain0)
	require.Equal(t, exitUsage, code, "the variable is one repository's, as the flag: a plain repository refuses it: %s", errs)
	require.Contains(t, errs, chunkstore.PasswordFileEnv)
	os.Unsetenv(chunkstore.PasswordFileEnv)
	code, out, errs = runCLI(t, "check", "--repo", repo, "--read-data", "--repo-password-file", pass)
	require.Equal(t, 0, code, "%s%s", out, errs)

	// A plain repository refuses a passphrase, and creates nothing for one.
	plain := filepath.Join(t.TempDir(), "plain")
	code, _, errs = runCLI(t, "backup", "--repo", plain, "--pgdata", src, "--repo-password-file", pass)
	require.Equal(t, exitUsage, code, errs)
	require.Contains(t, errs, "not encrypted")
	require.NoDirExists(t, plain)

	// Keys.
	code, out, errs = runCLI(t, "key", "add", "--repo", repo, "--repo-password-file", pass, "--new-password-file", pass2)
	require.Equal(t, 0, code, errs)
	key2 := lastLine(out)
	// A generated passphrase, for wal-push: a new 0600 file, the floor KDF.
	gen := filepath.Join(t.TempDir(), "wal-push.pass")
	code, out, errs = runCLI(t, "key", "add", "--repo", repo, "--repo-password-file", pass, "--generate", "--password-file-out", gen)
	require.Equal(t, 0, code, errs)
	keyGen := lastLine(out)
	fi, err := os.Stat(gen)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	code, _, errs = runCLI(t, "key", "add", "--repo", repo, "--repo-password-file", pass, "--generate", "--password-file-out", gen)
	require.Equal(t, exitConflict, code, "an existing file is never overwritten: %s", errs)
	code, out, errs = runCLI(t, "restore-points", "--repo", repo, "--repo-password-file", gen)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, id)
	code, _, errs = runCLI(t, "key", "remove", "--repo", repo, "--repo-password-file", gen, keyGen)
	require.Equal(t, 0, code, errs)

	code, out, errs = runCLI(t, "key", "list", "--repo", repo, "--repo-password-file", pass, "--json")
	require.Equal(t, 0, code, errs)
	var keys []struct {
		ID      string `json:"id"`
		Current bool   `json:"current"`
		Host    string `json:"host"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &keys), out)
	require.Len(t, keys, 2)
	var key1 string
	for _, k := range keys {
		require.NotEmpty(t, k.Host)
		if k.Current {
			key1 = k.ID
		}
	}
	require.NotEmpty(t, key1)
	require.NotEqual(t, key1, key2)
	code, _, errs = runCLI(t, "key", "remove", "--repo", repo, "--repo-password-file", pass2, key1)
	require.Equal(t, 0, code, errs)
	code, _, errs = runCLI(t, "key", "remove", "--repo", repo, "--repo-password-file", pass2, key2)
	require.Equal(t, exitConflict, code, errs)
	require.Contains(t, errs, "last usable key")
	code, _, errs = runCLI(t, "restore-points", "--repo", repo, "--repo-password-file", pass)
	require.Equal(t, exitPermission, code, "the removed key's passphrase opens nothing: %s", errs)
	code, _, errs = runCLI(t, "key", "list", "--repo", plainRepo(t, src))
	require.Equal(t, exitUsage, code, errs)
	require.Contains(t, errs, "not encrypted")

	// A mover serves it, with its key, to a staging host that has none.
	srvHome, srvID := initMoverHome(t)
	stagingHome, stagingID := initMoverHome(t)
	code, _, errs = runCLI(t, "mover", "trust", stagingID, "--allow", "read", "--home", srvHome)
	require.Equal(t, 0, code, errs)
	srv := startProc(t, "--home", srvHome, "mover", "serve", "--listen", "127.0.0.1:0", "--repo", repo, "--repo-password-file", pass2)
	peer := srv.waitListening(t) + "#" + srvID
	mnt := filepath.Join(t.TempDir(), "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o755))
	me, err := user.Current()
	require.NoError(t, err)
	p := startProc(t, "--home", stagingHome, "mount", "--repo-peer", peer, "--restore-point", "latest", "--owner", me.Username, mnt)
	require.Contains(t, p.waitStdout(t, "mounted "), id)
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(mnt, name))
		require.NoError(t, err, name)
		require.Equal(t, want, got, name)
	}
	require.NoError(t, p.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, 0, p.wait(t), p.stderr.String())

	// repo copy from a plain repository into an encrypted one.
	sealed := filepath.Join(t.TempDir(), "sealed")
	code, _, errs = runCLI(t, "repo", "init", "--repo", sealed, "--encrypt", "--repo-password-file", pass)
	require.Equal(t, 0, code, errs)
	from := plainRepo(t, src)
	code, out, errs = runCLI(t, "repo", "copy", "--from", from, "--to", sealed, "--to-password-file", pass)
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "1 restore points copied")
	code, out, errs = runCLI(t, "check", "--repo", sealed, "--read-data", "--repo-password-file", pass)
	require.Equal(t, 0, code, "%s%s", out, errs)
	code, _, errs = runCLI(t, "repo", "copy", "--from", from, "--to", sealed)
	require.Equal(t, exitUsage, code, "--to's passphrase is its own: %s", errs)
	require.True(t, strings.Contains(errs, crypt.PasswordEnv), errs)
}

// plainRepo is a plain repository holding one backup of src.
func plainRepo(t *testing.T, src string) string {
	t.Helper()
	repo := filepath.Join(t.TempDir(), "plain")
	code, _, errs := runCLI(t, "backup", "--repo", repo, "--pgdata", src)
	require.Equal(t, 0, code, errs)
	return repo
}

// TestEncryptedExportAtDir: point-in-time export and publication from an
// encrypted directory repository, with the passphrase given by
// --repo-password-file only (nothing in the environment, which children would
// inherit). The server's archiver pushes with a key of its own; the
// instance, which cannot open the repository, replays WAL that pgporter
// fetches for it; the publication's own process opens the repository with
// the file the publication recorded.
func TestEncryptedExportAtDir(t *testing.T) {
	testsupport.RequireFUSE(t)
	t.Setenv(crypt.PasswordEnv, "")
	os.Unsetenv(crypt.PasswordEnv)
	t.Setenv(chunkstore.PasswordFileEnv, "")
	os.Unsetenv(chunkstore.PasswordFileEnv)
	c, repo, pgUID := archivingClusterTo(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "pw"}, "", "")
	// Stopped while its repository becomes encrypted: its archiver, pushing
	// a segment with the command that has no passphrase yet, would fail
	// and count it (pg_stat_archiver.failed_count, which waitArchived
	// checks). What it pushed before, at the latest while stopping, went
	// into a plain repository in the same place, which makes way: the
	// export's recovery starts from the backup taken below.
	c.Stop(t)
	pushed, err := os.ReadDir(repo)
	require.NoError(t, err)
	for _, e := range pushed {
		require.NoError(t, os.RemoveAll(filepath.Join(repo, e.Name())))
	}
	pass := writePass(t, "root's passphrase")
	code, _, errs := runCLI(t, "repo", "init", "--repo", repo, "--encrypt", "--repo-password-file", pass)
	require.Equal(t, 0, code, errs)
	// The archiver's key: generated, in a file postgres owns.
	archPass := filepath.Join(c.Base, "wal-push.pass")
	code, _, errs = runCLI(t, "key", "add", "--repo", repo, "--repo-password-file", pass, "--generate", "--password-file-out", archPass)
	require.Equal(t, 0, code, errs)
	require.NoError(t, os.Chown(archPass, int(pgUID), -1))
	c.Settings["archive_command"] = strings.Replace(c.Settings["archive_command"], " %p", " --repo-password-file "+archPass+" %p", 1)
	c.Start(t)

	c.CreateDB(t, "shop")
	c.Exec(t, "shop", "CREATE TABLE orders(id int primary key, item text); INSERT INTO orders SELECT g, 'before the backup' FROM generate_series(1, 100) g")
	code, _, errs = runCLI(t, "backup", "--repo", repo, "--from-server", c.ConnString("postgres"), "--repo-password-file", pass)
	require.Equal(t, 0, code, errs)
	c.Exec(t, "shop", "INSERT INTO orders SELECT g, 'after the backup' FROM generate_series(101, 250) g")
	noted := c.Query(t, "shop", "SELECT clock_timestamp()::text")
	c.Exec(t, "shop", "DELETE FROM orders WHERE id > 50")
	waitArchived(t, c)
	t.Setenv("PGPASSWORD", "pw")

	home, to := t.TempDir(), t.TempDir()
	code, out, errs := runCLI(t, "--home", home, "export", "--repo", repo, "--repo-password-file", pass, "--at", noted, "--db", "shop", "--table", "orders", "--to", to, "--staging-dir", cliStagingDir(t))
	require.Equal(t, 0, code, "%s\n%s", out, errs)
	flags := []string{"--pg-host", c.SocketDir, "--pg-port", strconv.Itoa(c.Port), "--pg-user", c.User}
	code, _, errs = runCLI(t, append([]string{"restore", filepath.Join(to, "shop"), "--dbname", "shop_at", "--create"}, flags...)...)
	require.Equal(t, exitOK, code, errs)
	require.Equal(t, "250 250", c.Query(t, "shop_at", "SELECT count(*) || ' ' || max(id) FROM orders"))

	port := freeTCPPort(t)
	pub := publishCLI(t, home, repo, port, "--at", noted, "--repo-password-file", pass)
	conn := pubConn(t, port, "shop")
	var n int
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT count(*) FROM orders").Scan(&n))
	require.Equal(t, 250, n)
	conn.Close(t.Context())
	code, _, errs = runCLI(t, "--home", home, "unpublish", pub.ID)
	require.Equal(t, 0, code, errs)
}
