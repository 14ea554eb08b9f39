package staging

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgporter/pgporter/internal/pgcatalog"
)

// The checks of what the backup's databases use that this host may lack:
// the locales of each database, ICU, and the libraries of its C functions
// (extensions, procedural languages). PostgreSQL only finds out when a
// connection or a dump needs them, with errors that name no package.

// dbLocale is a database's locale settings, from pg_database.
type dbLocale struct {
	Name, Collate, Ctype string
	Provider             string // datlocprovider: "c" libc, "i" ICU, "b" builtin (17)
	ICULocale            string // daticulocale (15, 16) or datlocale (17)
}

// serverHasICU is serverHasICUOf, a variable for tests: every packaged
// server here has ICU.
var serverHasICU = serverHasICUOf

// serverHasICUOf reports whether the postgres binary in bin was built with
// ICU (links libicu). Not known (false, false) if its file cannot be read
// as ELF.
func serverHasICUOf(bin string) (has, known bool) {
	f, err := elf.Open(filepath.Join(bin, "postgres"))
	if err != nil {
		return false, false
	}
	defer f.Close()
	libs, err := f.ImportedLibraries()
	if err != nil {
		return false, false
	}
	for _, l := range libs {
		if strings.HasPrefix(l, "libicu") {
			return true, true
		}
	}
	return false, true
}

// databaseLocales reads the locale settings of the databases dbs.
func (in *Instance) databaseLocales(ctx context.Context, c *pgx.Conn, dbs []string) ([]dbLocale, error) {
	provider, icu := `'c'`, `''`
	if v, _ := strconv.Atoi(in.Version); v >= 17 {
		provider, icu = "datlocprovider::text", "coalesce(datlocale, '')"
	} else if v >= 15 {
		provider, icu = "datlocprovider::text", "coalesce(daticulocale, '')"
	}
	rows, err := c.Query(ctx, `SELECT datname, datcollate, datctype, `+provider+`, `+icu+` FROM pg_database WHERE datname = ANY($1) ORDER BY datname`, dbs)
	if err != nil {
		return nil, fmt.Errorf("reading the databases' locales: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (dbLocale, error) {
		var l dbLocale
		err := r.Scan(&l.Name, &l.Collate, &l.Ctype, &l.Provider, &l.ICULocale)
		return l, err
	})
}

// localeProblems returns the problems of databases whose locales this host
// lacks (installed: 'locale -a'), or whose ICU locale provider this server
// was not built with (hasICU, if known).
func localeProblems(dbs []dbLocale, installed []string, hasICU, icuKnown bool, major string) []Problem {
	var probs []Problem
	for _, d := range dbs {
		for _, l := range MissingLocales([]string{d.Collate, d.Ctype}, installed) {
			what := "LC_COLLATE and LC_CTYPE"
			switch {
			case NormalizeLocale(l) != NormalizeLocale(d.Ctype):
				what = "LC_COLLATE"
			case NormalizeLocale(l) != NormalizeLocale(d.Collate):
				what = "LC_CTYPE"
			}
			probs = append(probs, Problem{Kind: "locale", DB: d.Name, Message: fmt.Sprintf(
				"uses locale %q (%s), which this host lacks (PostgreSQL refuses connections to it): %s", l, what, MissingLocaleHint(l))})
		}
		if d.Provider == "i" && icuKnown && !hasICU {
			probs = append(probs, Problem{Kind: "icu", DB: d.Name, Message: fmt.Sprintf(
				"uses ICU collations (locale provider icu, locale %q), and this host's PostgreSQL %s was built without ICU: install the Debian package postgresql-%s, which is built with ICU", d.ICULocale, major, major)})
		}
	}
	return probs
}

// connLocaleRe finds the locale in the detail of the error PostgreSQL ends
// a connection with when the database's locale is not installed.
var connLocaleRe = regexp.MustCompile(`LC_(?:COLLATE|CTYPE) "([^"]*)"`)

// connLocaleProblem returns the problem a failed connection to db reports
// if it failed for the database's locale or ICU, which are only checked
// when a connection is made (with lc_messages=C, the instance's messages
// are in English).
func connLocaleProblem(err error, db, major string) (Problem, bool) {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return Problem{}, false
	}
	if m := connLocaleRe.FindStringSubmatch(pe.Detail); m != nil && strings.Contains(pe.Message, "locale") {
		return Problem{Kind: "locale", DB: db, Message: fmt.Sprintf(
			"uses locale %q, which this host lacks (%s): %s", m[1], pe.Message, MissingLocaleHint(m[1]))}, true
	}
	if strings.Contains(pe.Message, "ICU is not supported") {
		return Problem{Kind: "icu", DB: db, Message: fmt.Sprintf(
			"uses ICU collations, and this host's PostgreSQL %s was built without ICU: install the Debian package postgresql-%s, which is built with ICU", major, major)}, true
	}
	return Problem{}, false
}

// libraryFile returns the file a C function's probin names, as PostgreSQL
// finds it: "$libdir/x" in libdir, a bare name in libdir (the default
// dynamic_library_path), then with ".so" appended; and whether it exists.
func libraryFile(libdir, probin string) (string, bool) {
	name := probin
	if rest, ok := strings.CutPrefix(name, "$libdir"); ok {
		name = libdir + rest
	} else if !strings.Contains(name, "/") {
		name = filepath.Join(libdir, name)
	}
	for _, f := range []string{name, name + ".so"} {
		if fi, err := os.Stat(f); err == nil && fi.Mode().IsRegular() {
			return f, true
		}
	}
	return name, false
}

// cLibrary is a row of pgcatalog.CLibraries.
type cLibrary = pgcatalog.CLibrary

// libraryProblems returns a problem for each library of libs missing in
// libdir: an error when columns have its types (pg_dump cannot read them),
// else a warning (the dump goes ahead; restoring it needs the library).
func libraryProblems(db, major, libdir string, libs []cLibrary) []Problem {
	var probs []Problem
	for _, l := range libs {
		file, ok := libraryFile(libdir, l.Probin)
		if ok {
			continue
		}
		of, hint := "", installHint(l.Probin, major)
		if l.Extensions != "" {
			of = " of extension " + l.Extensions
			if first, _, _ := strings.Cut(l.Extensions, ", "); DebianPackage(first, major) != "" {
				hint = installHint(first, major)
			}
		}
		if l.InData {
			probs = append(probs, Problem{Kind: "extension", DB: db, Message: fmt.Sprintf(
				"library %s%s is not installed here (no %s), and columns have its types, which pg_dump could not read: %s", l.Probin, of, file, hint)})
			continue
		}
		probs = append(probs, Problem{Kind: "extension", DB: db, Warning: true, Message: fmt.Sprintf(
			"library %s%s is not installed here (no %s); the dump does not need it, since no column has its types, but restoring the dump does: %s", l.Probin, of, file, hint)})
	}
	return probs
}

// checkLibraries checks the libraries of db's C functions (c is connected
// to db).
func (in *Instance) checkLibraries(ctx context.Context, c *pgx.Conn, db, libdir string) ([]Problem, error) {
	rows, err := c.Query(ctx, pgcatalog.CLibraries)
	if err != nil {
		return nil, fmt.Errorf("listing the libraries of database %q: %w", db, err)
	}
	libs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[cLibrary])
	if err != nil {
		return nil, fmt.Errorf("listing the libraries of database %q: %w", db, err)
	}
	return libraryProblems(db, in.Version, libdir, libs), nil
}

// catalogConn connects to a database to read the catalog from: postgres,
// else template1, else the first database to check that takes the
// connection. A database whose locale this host lacks refuses every
// connection (its problem is reported by checkDB), as does one that does
// not exist. It returns nil and no error if none can be reached that way,
// and the error of a login that failed.
func (in *Instance) catalogConn(ctx context.Context, o CheckOptions) (*pgx.Conn, error) {
	for _, db := range append([]string{"postgres", "template1"}, o.Databases...) {
		c, err := in.connect(ctx, db, o.User, o.Password)
		if err == nil {
			return c, nil
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) {
			return nil, err
		}
		if _, ok := connLocaleProblem(err, db, in.Version); !ok && pe.Code != "3D000" && pe.Code != "42501" {
			return nil, err // a login that failed, or worse
		}
	}
	return nil, nil
}

// DatabaseLocale is a database's locale settings as a backup recorded
// them (chunkstore.DBInfo).
type DatabaseLocale struct {
	Name, Collate, Ctype string
	Provider             string // "c" libc, "i" ICU, "b" builtin
	ICULocale            string
}

// CheckLocalesBefore checks, before anything is mounted or started, that
// this host has the locales of the databases dbs (and ICU, for those that
// use it) for the server of major version major in bin. Databases with no
// recorded locale are not checked here (the instance's check finds them).
// A host whose installed locales cannot be listed passes.
func CheckLocalesBefore(dbs []DatabaseLocale, bin, major string) *CheckReport {
	var locs []dbLocale
	for _, d := range dbs {
		if d.Collate != "" || d.Ctype != "" {
			locs = append(locs, dbLocale(d))
		}
	}
	rep := &CheckReport{}
	if len(locs) == 0 {
		return rep
	}
	installed, err := InstalledLocales()
	if err != nil {
		return rep
	}
	has, known := serverHasICU(bin)
	rep.Problems = localeProblems(locs, installed, has, known, major)
	return rep
}

// CheckLibrariesBefore checks, before anything is mounted or started,
// that this host's server of major version major in bin has the libraries
// of database db's C functions, as a backup recorded them. Only what would
// fail the dump is a problem here; the instance's check warns of the rest.
func CheckLibrariesBefore(db string, libs []pgcatalog.CLibrary, bin, major string) *CheckReport {
	rep := &CheckReport{}
	if len(libs) == 0 {
		return rep
	}
	libdir := pkgLibDir(bin)
	if libdir == "" {
		return rep
	}
	for _, p := range libraryProblems(db, major, libdir, libs) {
		if !p.Warning {
			rep.Problems = append(rep.Problems, p)
		}
	}
	return rep
}

// checkLocales checks the locales and ICU of the databases dbs (c is
// connected to any database).
func (in *Instance) checkLocales(ctx context.Context, c *pgx.Conn, dbs []string) ([]Problem, error) {
	locs, err := in.databaseLocales(ctx, c, dbs)
	if err != nil {
		return nil, err
	}
	installed, err := InstalledLocales()
	if err != nil {
		in.log.Warn("not checking the databases' locales", "err", err)
		installed = nil
		for _, l := range locs { // take them as there: a connection will tell
			installed = append(installed, l.Collate, l.Ctype)
		}
	}
	has, known := serverHasICU(in.BinDir)
	return localeProblems(locs, installed, has, known, in.Version), nil
}
