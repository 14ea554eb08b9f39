package staging

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

// probeLib is a library path that does not exist: a session that loads it
// fails with "could not access file", harmlessly.
const probeLib = "/nonexistent/pgporter_probe"

// hostileDataDir returns a copy of a stopped cluster whose configuration
// files and catalog set settings that load code: in postgresql.auto.conf,
// an included file, ALTER ROLE … SET and ALTER DATABASE … SET.
func hostileDataDir(t *testing.T) (dataDir, runDir, binDir, fakeLib string) {
	t.Helper()
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "s3cret"})
	c.Exec(t, "postgres", "CREATE ROLE reader LOGIN PASSWORD 'r3ad' IN ROLE pg_read_all_settings")
	c.CreateDB(t, "shop")
	c.Exec(t, "shop", "CREATE TABLE items(id int primary key, name text); INSERT INTO items SELECT g, 'item '||g FROM generate_series(1,100) g; GRANT SELECT ON items TO reader")
	c.Exec(t, "postgres", "ALTER DATABASE shop SET work_mem = '7MB'")
	c.Exec(t, "postgres", "ALTER DATABASE shop SET session_preload_libraries = '"+probeLib+"_db'")
	// The probe is live: a session on shop loads the library and fails.
	_, err := pgx.Connect(context.Background(), c.ConnString("shop"))
	require.ErrorContains(t, err, "could not access file")
	c.Exec(t, "postgres", "ALTER ROLE reader IN DATABASE shop SET local_preload_libraries = 'pgporter_probe_local'")
	c.Exec(t, "postgres", `ALTER ROLE reader SET "Dynamic_Library_Path" = '/nonexistent'`)
	c.Exec(t, "postgres", "ALTER ROLE reader SET extension_destdir = '/nonexistent'")
	c.Exec(t, "postgres", "ALTER ROLE reader SET search_path = 'public'")
	c.Exec(t, "postgres", "ALTER ROLE postgres SET session_preload_libraries = '"+probeLib+"_role'")
	c.Stop(t)
	dataDir, runDir = copyDataDir(t, c.DataDir)

	// A file that would break postgres if loaded, named through $libdir/..:
	// the name exists as a ".so" outside the library directory.
	f, err := os.CreateTemp("/tmp", "pgporter-probe-*.so")
	require.NoError(t, err)
	_, _ = f.WriteString("not an ELF file")
	require.NoError(t, f.Close())
	t.Cleanup(func() { os.Remove(f.Name()) })
	fakeLib = "$libdir/../../../../../.." + strings.TrimSuffix(f.Name(), ".so")

	auto := "session_preload_libraries = '" + probeLib + "_auto'\n" +
		"shared_preload_libraries = '" + fakeLib + "'\n" +
		"archive_mode = on\narchive_command = 'touch /tmp/pgporter-probe-archived'\n"
	appendFile(t, filepath.Join(dataDir, "postgresql.auto.conf"), auto, dataDir)
	appendFile(t, filepath.Join(dataDir, "hostile.conf"), "local_preload_libraries = 'pgporter_probe_incl'\nexternal_pid_file = '/tmp/pgporter-probe.pid'\n", dataDir)
	appendFile(t, filepath.Join(dataDir, "postgresql.conf"), "\ninclude 'hostile.conf'\n", dataDir)
	return dataDir, runDir, c.BinDir, fakeLib
}

// appendFile appends text to name, owned like dataDir.
func appendFile(t *testing.T, name, text, dataDir string) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	require.NoError(t, err)
	_, err = f.WriteString(text)
	require.NoError(t, errorsJoin(err, f.Close()))
	if os.Geteuid() == 0 {
		out, err := exec.Command("chown", "--reference="+dataDir, name).CombinedOutput()
		require.NoError(t, err, string(out))
	}
}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// TestInstanceNeutralisesCodeSettings guards against a backup running code
// in the throwaway instance (issue 15): preload libraries set in
// postgresql.auto.conf, an included file, or only in the catalog with ALTER
// ROLE/DATABASE … SET (which override the command line) must not load, and
// a preload library named by a path must not be kept.
func TestInstanceNeutralisesCodeSettings(t *testing.T) {
	testsupport.RequirePG(t)
	dataDir, runDir, bin, fakeLib := hostileDataDir(t)
	ctx := context.Background()

	in, err := StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: bin, Throwaway: true, AllowMissingPreload: true})
	require.NoError(t, err, LogTail(filepath.Join(runDir, "postgres.log"), 30))
	defer in.Stop(ctx)
	require.Equal(t, []string{fakeLib}, in.Dropped, "a library named by a path is not an installed one")
	removed := strings.Join(in.Neutralised, "\n")
	for _, want := range []string{
		`*/shop: session_preload_libraries="` + probeLib + `_db"`,
		`postgres/*: session_preload_libraries="` + probeLib + `_role"`,
		"reader/shop: local_preload_libraries=pgporter_probe_local",
		"reader/*: dynamic_library_path=/nonexistent",
		"reader/*: extension_destdir=/nonexistent",
	} {
		require.Contains(t, removed, want)
	}
	require.NotContains(t, removed, "work_mem")
	require.NotContains(t, removed, "search_path")

	for _, who := range []struct{ user, pw string }{{"postgres", "s3cret"}, {"reader", "r3ad"}} {
		conn, err := pgx.Connect(ctx, in.ConnString("shop", who.user)+" password="+who.pw)
		require.NoError(t, err, "a session of %s on shop", who.user)
		var spl, lpl, dlp, ext, shared, workMem, archive, pidFile string
		require.NoError(t, conn.QueryRow(ctx, `SELECT current_setting('session_preload_libraries'), current_setting('local_preload_libraries'),
			current_setting('dynamic_library_path'), current_setting('extension_destdir'), current_setting('shared_preload_libraries'),
			current_setting('work_mem'), current_setting('archive_command'), current_setting('external_pid_file')`).
			Scan(&spl, &lpl, &dlp, &ext, &shared, &workMem, &archive, &pidFile))
		conn.Close(ctx)
		require.Empty(t, spl)
		require.Empty(t, lpl)
		require.Equal(t, "$libdir", dlp)
		require.Empty(t, ext)
		require.Empty(t, shared)
		require.NotContains(t, archive, "touch")
		require.Equal(t, filepath.Join(runDir, "postgres.pid"), pidFile)
		require.Equal(t, "7MB", workMem, "harmless database settings still apply")
	}
	require.NoFileExists(t, "/tmp/pgporter-probe.pid")

	// pg_dump works, and the dump keeps the harmless database setting.
	dump := filepath.Join(runDir, "dump")
	_, err = in.Dump(ctx, DumpOptions{DB: "shop", User: "postgres", Password: "s3cret", Dir: dump})
	require.NoError(t, err)
	out, err := exec.Command(filepath.Join(bin, "pg_restore"), "--create", "-f", "-", dump).CombinedOutput()
	require.NoError(t, err, string(out))
	require.Contains(t, string(out), "ALTER DATABASE shop SET work_mem TO '7MB'")
	require.NotContains(t, string(out), "preload")
}

// TestCodeSettingsCoverServer: every setting of the installed server whose
// name says it loads libraries or runs commands is neutralised, so a new
// server version's setting is not missed silently.
func TestCodeSettingsCoverServer(t *testing.T) {
	bin := testsupport.RequirePG(t)
	out, err := exec.Command(filepath.Join(bin, "postgres"), "--describe-config").Output()
	require.NoError(t, err)
	ours := map[string]bool{"shared_preload_libraries": true}
	for _, s := range codeSettings {
		ours[s.name] = true
	}
	risky := regexp.MustCompile(`librar|_command$|provider|destdir`)
	n := 0
	for line := range strings.Lines(string(out)) {
		name, _, _ := strings.Cut(line, "\t")
		if risky.MatchString(name) && name != "ssl_passphrase_command_supports_reload" {
			n++
			require.True(t, ours[name], "%s loads code or runs a program and is not neutralised", name)
		}
	}
	require.GreaterOrEqual(t, n, 10)
	args, err := codeSettingArgs(bin)
	require.NoError(t, err)
	require.Contains(t, args, "session_preload_libraries=")
}

// TestMountIsNoexec guards against a library or program shipped in a backup
// being run from the mount: a session_preload_libraries or a C function's
// library path that names a file in the data directory must not load.
func TestMountIsNoexec(t *testing.T) {
	script := []byte("#!/bin/sh\necho ran\n")
	tree, store := buildTree(t, []testFile{
		{path: "bin", typ: chunkstore.NodeDir, mode: 0o755},
		{path: "bin/run.sh", typ: chunkstore.NodeFile, mode: 0o755, data: script},
	})
	_, mnt := mountTree(t, tree, store, MountOptions{})
	name := filepath.Join(mnt, "bin/run.sh")
	got, err := os.ReadFile(name)
	require.NoError(t, err)
	require.Equal(t, script, got, "the file is there and readable")
	out, err := exec.Command(name).CombinedOutput()
	require.ErrorIs(t, err, syscall.EACCES, "ran: %s", out)

	f, err := os.Open(name)
	require.NoError(t, err)
	defer f.Close()
	_, err = syscall.Mmap(int(f.Fd()), 0, len(script), syscall.PROT_READ|syscall.PROT_EXEC, syscall.MAP_PRIVATE)
	require.ErrorIs(t, err, syscall.EPERM, "a mapping for execution, as dlopen makes, is refused")
}
