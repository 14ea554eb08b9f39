package testsupport

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"testing"

	"github.com/pgporter/pgporter/internal/pgtool"
)

// BinDirEnv names the variable that points RequirePG at a specific
// PostgreSQL bin directory instead of the newest one under pgtool.Root.
const BinDirEnv = "PGPORTER_PG_BINDIR"

// inCI reports whether a missing prerequisite must fail the test rather than
// skip it: in CI a skipped PostgreSQL or FUSE test would hide a broken runner.
func inCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail skips the test with reason, or fails it in CI (CI=true),
// where a skipped test would hide a missing prerequisite.
func SkipOrFail(t testing.TB, reason string) {
	t.Helper()
	if inCI() {
		t.Fatal(reason + " (CI=true: missing prerequisites fail instead of skipping)")
	}
	t.Skip(reason)
}

// RequirePG returns the bin directory of the newest PostgreSQL under
// /usr/lib/postgresql, or $PGPORTER_PG_BINDIR when set. When none is usable it
// skips the test, or fails it when CI=true. Running as root also needs the
// postgres OS user, because the server refuses to run as root.
func RequirePG(t testing.TB) string {
	t.Helper()
	dir, err := findPG()
	if err != nil {
		SkipOrFail(t, "PostgreSQL not available: "+err.Error())
	}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup(pgOSUser); err != nil {
			SkipOrFail(t, "PostgreSQL not usable as root: no OS user "+pgOSUser+": "+err.Error())
		}
	}
	return dir
}

func findPG() (string, error) {
	if d := os.Getenv(BinDirEnv); d != "" {
		return d, checkPGBinDir(d)
	}
	for _, m := range pgtool.Majors() {
		if d := filepath.Join(pgtool.Root, m, "bin"); checkPGBinDir(d) == nil {
			return d, nil
		}
	}
	return "", fmt.Errorf("no server binaries under %s (set %s)", pgtool.Root, BinDirEnv)
}

func checkPGBinDir(d string) error {
	for _, name := range []string{"initdb", "postgres", "pg_dump"} {
		fi, err := os.Stat(filepath.Join(d, name))
		if err != nil {
			return err
		}
		if fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%s is not executable", filepath.Join(d, name))
		}
	}
	return nil
}

// RequireFUSE skips the test, or fails it when CI=true, unless /dev/fuse can
// be opened for reading and writing and this process is root (pgporter
// mounts with go-fuse's DirectMount).
func RequireFUSE(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		SkipOrFail(t, "FUSE not available: "+err.Error())
	}
	f.Close()
	RequireRoot(t, "mounting with DirectMount")
}

// RequireRoot skips the test, or fails it when CI=true, unless this process
// is root; why says what needs it.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, why+" needs root")
	}
}

// RequireTool returns the path of the program name, or skips the test (fails
// it when CI=true) when it is not installed; pkg is the Debian package that
// has it.
func RequireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		SkipOrFail(t, fmt.Sprintf("%s not found (apt-get install %s): %v", name, pkg, err))
	}
	return p
}
