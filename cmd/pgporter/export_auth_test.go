package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/mover"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// noTerminal makes the CLI run in this process see no terminal on stdin,
// whatever go test was started from.
func noTerminal(t *testing.T) {
	old := terminal
	terminal = func() (int, bool) { return -1, false }
	t.Cleanup(func() { terminal = old })
}

// noPasswordEnv leaves the CLI no password source but those a test adds.
func noPasswordEnv(t *testing.T) {
	for _, k := range []string{"PGPASSWORD", "PGSERVICE", "PGSERVICEFILE"} {
		t.Setenv(k, "")
	}
	t.Setenv("PGPASSFILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("PGSYSCONFDIR", t.TempDir())
}

// TestExportAuthBackupHBA exports a backup whose pg_hba.conf trusts local
// connections with --auth backup-hba and no password anywhere; without
// --auth the same export fails at once (exit 2, no session). Before, there
// was no --auth, and the export warned, mounted, started PostgreSQL and
// failed with "password authentication failed". A backup whose local lines
// ask for a password is refused with --auth backup-hba (exit 5), naming the
// line.
func TestExportAuthBackupHBA(t *testing.T) {
	testsupport.RequirePG(t)
	testsupport.RequireFUSE(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{})
	c.CreateDB(t, "shop")
	c.Exec(t, "shop", `CREATE TABLE items(id int primary key, name text); INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 2000) g`)
	c.Stop(t)
	hba := filepath.Join(c.DataDir, "pg_hba.conf")
	backup := func(lines string) string {
		require.NoError(t, os.WriteFile(hba, []byte(lines), 0o600))
		repo := filepath.Join(t.TempDir(), "repo")
		code, _, errs := runCLI(t, "backup", "--repo", repo, "--pgdata", c.DataDir)
		require.Equal(t, 0, code, errs)
		return repo
	}
	trusting := backup("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
	asking := backup("local all postgres peer\nlocal all all scram-sha-256\n")
	noPasswordEnv(t)
	noTerminal(t)

	home, to := t.TempDir(), t.TempDir()
	args := []string{"--home", home, "export", "--repo", trusting, "--db", "shop", "--to", to, "--staging-dir", cliStagingDir(t)}
	code, _, errs := runCLI(t, args...)
	require.Equal(t, exitUsage, code, errs)
	require.Contains(t, errs, `no password given for PostgreSQL user "postgres"`)
	require.Contains(t, errs, "no terminal to ask on")
	code, out, _ := runCLI(t, "--home", home, "sessions", "--json")
	require.Equal(t, 0, code)
	require.JSONEq(t, `{"sessions":[]}`, out, "nothing ran")

	code, out, errs = runCLI(t, append(args, "--auth", "backup-hba", "--json")...)
	require.Equal(t, 0, code, errs)
	var res exportJSON
	require.NoError(t, json.Unmarshal([]byte(lastLine(out)), &res), out)
	require.Equal(t, "done", res.State)
	rep, err := mover.Verify(t.Context(), filepath.Join(to, "shop"))
	require.NoError(t, err)
	require.Empty(t, rep.Problems)
	require.FileExists(t, filepath.Join(to, "shop", "toc.dat"))

	code, _, errs = runCLI(t, "--home", home, "export", "--repo", asking, "--db", "shop", "--to", t.TempDir(), "--staging-dir", cliStagingDir(t), "--auth", "backup-hba")
	require.Equal(t, exitPermission, code, errs)
	require.Contains(t, errs, `pg_hba.conf:1 ("local all postgres peer") logs role "postgres" in by peer authentication`)
	require.Contains(t, errs, "pgporter runs as root and connects as root")
	code, _, errs = runCLI(t, "--home", home, "export", "--repo", asking, "--db", "shop", "--to", t.TempDir(), "--staging-dir", cliStagingDir(t), "--auth", "backup-hba", "--pg-user", "app")
	require.Equal(t, exitPermission, code, errs)
	require.Contains(t, errs, `pg_hba.conf:2 ("local all all scram-sha-256") asks role "app" for scram-sha-256 authentication, which needs a password`)
}

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (ptm, pts *os.File) {
	t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { ptm.Close() })
	unlock := 0
	require.NoError(t, unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, unlock))
	n, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPTN)
	require.NoError(t, err)
	pts, err = os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	require.NoError(t, err)
	t.Cleanup(func() { pts.Close() })
	return ptm, pts
}

// With no password anywhere and a terminal on stdin, the password is asked
// for there, without echo (before: a warning, and the export went on).
func TestPasswordPrompt(t *testing.T) {
	noPasswordEnv(t)
	ptm, pts := openPTY(t)
	old := terminal
	terminal = func() (int, bool) { return int(pts.Fd()), true }
	t.Cleanup(func() { terminal = old })
	var stderr bytes.Buffer
	g := &globals{stderr: &stderr, log: slog.New(slog.DiscardHandler)}
	type result struct {
		pw  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		pw, err := resolveCredentials(g, &credentials{user: "app", port: 5432})
		done <- result{pw, err}
	}()
	// Typed once the terminal stops echoing, as a user types after the prompt.
	for {
		tio, err := unix.IoctlGetTermios(int(pts.Fd()), unix.TCGETS)
		require.NoError(t, err)
		if tio.Lflag&unix.ECHO == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, err := fmt.Fprint(ptm, "s3:cret\n")
	require.NoError(t, err)
	res := <-done
	require.NoError(t, res.err)
	require.Equal(t, "s3:cret", res.pw)
	require.Contains(t, stderr.String(), `Password for PostgreSQL user "app"`)
	echo := make([]byte, 256)
	fd := int(ptm.Fd()) // Fd makes it blocking: once, before SetNonblock
	require.NoError(t, unix.SetNonblock(fd, true))
	n, _ := unix.Read(fd, echo) // what the terminal echoed, if anything
	require.NotContains(t, string(echo[:max(n, 0)]), "s3:cret", "the password is not echoed")
}
