// Package pgtool finds PostgreSQL's programs and writes libpq connection
// strings: the one place that knows where the packages of this field put
// their binaries (Debian's /usr/lib/postgresql/N/bin, the PGDG RPMs'
// /usr/pgsql-N/bin, pg_config) and how libpq quotes a value. The export's
// instances, backup, restore, the demo, the tests and the benchmark harness
// all find PostgreSQL through it.
package pgtool

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Root is where Debian's postgresql-N packages install their binaries, in
// Root/N/bin.
const Root = "/usr/lib/postgresql"

// Majors returns the major versions installed under Root, newest first
// ("17", "15", "9.6").
func Majors() []string {
	ents, _ := os.ReadDir(Root)
	type major struct {
		name string
		v    float64
	}
	var ms []major
	for _, e := range ents {
		if v, err := strconv.ParseFloat(e.Name(), 64); err == nil { // "15", or "9.6" for old majors
			ms = append(ms, major{e.Name(), v})
		}
	}
	slices.SortFunc(ms, func(a, b major) int { return -cmpFloat(a.v, b.v) })
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.name
	}
	return out
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// executable reports whether path is an executable file.
func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// ServerBinDir returns the directory of the server binaries of a major
// version: configured (if set), Root/MAJOR/bin, /usr/pgsql-MAJOR/bin, or
// pg_config --bindir when that is the same major version.
func ServerBinDir(major, configured string) (string, error) {
	has := func(d string) bool { return executable(filepath.Join(d, "postgres")) }
	if configured != "" {
		if has(configured) {
			return configured, nil
		}
		return "", fmt.Errorf("no postgres binary in %s", configured)
	}
	for _, d := range []string{filepath.Join(Root, major, "bin"), filepath.Join("/usr/pgsql-"+major, "bin")} {
		if has(d) {
			return d, nil
		}
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if v, err := exec.Command(filepath.Join(d, "postgres"), "--version").Output(); err == nil && has(d) {
			if m := regexp.MustCompile(`(\d+)`).FindString(string(v)); m == major {
				return d, nil
			}
		}
	}
	return "", fmt.Errorf("PostgreSQL %s server binaries are not installed here: install the Debian package postgresql-%s", major, major)
}

// NewestServerBinDir returns the server binaries of the newest major
// version under Root.
func NewestServerBinDir() (string, error) {
	for _, m := range Majors() {
		if d, err := ServerBinDir(m, ""); err == nil && strings.HasPrefix(d, Root) {
			return d, nil
		}
	}
	return "", fmt.Errorf("no PostgreSQL server binaries under %s: install the Debian package postgresql (make setup does)", Root)
}

// ErrNoTool is what Tool fails with when it finds no such program.
var ErrNoTool = errors.New("not found")

// Tool returns the path of a client program (pg_dump, pg_restore,
// pg_controldata, ...): in binDir when given; else on PATH; else in the
// newest Root/N/bin that has it, since the newest client reads what every
// older server writes.
func Tool(name, binDir string) (string, error) {
	if binDir != "" {
		p := filepath.Join(binDir, name)
		if !executable(p) {
			return "", fmt.Errorf("%s: %w in %s", name, ErrNoTool, binDir)
		}
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, m := range Majors() {
		if p := filepath.Join(Root, m, "bin", name); executable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w on PATH or under %s (install postgresql-client)", name, ErrNoTool, Root)
}

// VersionTool returns the path of a program that must match the major
// version of a data directory (pg_controldata, pg_resetwal): on PATH, else
// in Root/MAJOR/bin or /usr/pgsql-MAJOR/bin; "" if none.
func VersionTool(name, major string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{filepath.Join(Root, major, "bin"), filepath.Join("/usr/pgsql-"+major, "bin")} {
		if p := filepath.Join(d, name); executable(p) {
			return p
		}
	}
	return ""
}

// Quote quotes a value for a libpq keyword/value connection string.
func Quote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}
