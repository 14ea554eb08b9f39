package staging

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

func TestNormalizeLocale(t *testing.T) {
	for in, want := range map[string]string{
		"en_US.UTF-8":       "en_US.utf8",
		"en_US.utf8":        "en_US.utf8",
		"de_DE.ISO-8859-15": "de_DE.iso885915",
		"de_DE.UTF-8@euro":  "de_DE.utf8@euro",
		"sr_RS@latin":       "sr_RS@latin",
		"C.UTF-8":           "C.utf8",
		"C":                 "C",
		" fr_FR.UTF8 ":      "fr_FR.utf8",
	} {
		require.Equal(t, want, NormalizeLocale(in), in)
	}
}

func TestMissingLocales(t *testing.T) {
	installed := []string{"C", "C.utf8", "POSIX", "en_US.utf8", "de_DE.iso88591"}
	used := []string{"en_US.UTF-8", "C.UTF-8", "", "POSIX", "de_DE.ISO-8859-1", "fr_FR.UTF-8", "fr_FR.UTF-8", "pt_BR.utf8"}
	require.Equal(t, []string{"fr_FR.UTF-8", "pt_BR.utf8"}, MissingLocales(used, installed))
	// C and POSIX need nothing installed, even where 'locale -a' fails.
	require.Empty(t, MissingLocales([]string{"C", "POSIX", "C.UTF-8"}, nil))
}

func TestLocaleGenLine(t *testing.T) {
	for in, want := range map[string]string{
		"de_DE.UTF-8":       "de_DE.UTF-8 UTF-8",
		"de_DE.utf8":        "de_DE.UTF-8 UTF-8",
		"de_DE.iso885915":   "de_DE.ISO-8859-15 ISO-8859-15",
		"ru_RU.KOI8-R":      "ru_RU.KOI8-R KOI8-R",
		"de_DE.UTF-8@euro":  "de_DE.UTF-8@euro UTF-8",
		"de_DE":             "",
		"ja_JP.eucJP":       "ja_JP.EUC-JP EUC-JP",
		"xx_XX.weirdset-12": "xx_XX.WEIRDSET12 WEIRDSET12",
	} {
		require.Equal(t, want, LocaleGenLine(in), in)
	}
	h := MissingLocaleHint("de_DE.utf8")
	require.Contains(t, h, "locales-all")
	require.Contains(t, h, `"de_DE.UTF-8 UTF-8"`)
	require.Contains(t, h, "/etc/locale.gen")
	require.Contains(t, MissingLocaleHint("de_DE"), "/usr/share/i18n/SUPPORTED")
}

func TestLocaleProblems(t *testing.T) {
	installed := []string{"C", "C.utf8", "POSIX", "en_US.utf8"}
	dbs := []dbLocale{
		{Name: "shop", Collate: "en_US.UTF-8", Ctype: "en_US.UTF-8", Provider: "c"},
		{Name: "crm", Collate: "de_DE.UTF-8", Ctype: "de_DE.UTF-8", Provider: "c"},
		{Name: "hr", Collate: "C", Ctype: "fr_FR.UTF-8", Provider: "c"},
		{Name: "geo", Collate: "C.UTF-8", Ctype: "C.UTF-8", Provider: "i", ICULocale: "und"},
	}
	probs := localeProblems(dbs, installed, true, true, "15")
	require.Len(t, probs, 2, "%v", probs)
	require.Equal(t, "locale", probs[0].Kind)
	require.Equal(t, "crm", probs[0].DB)
	require.False(t, probs[0].Warning)
	require.Equal(t, `locale: database "crm": uses locale "de_DE.UTF-8" (LC_COLLATE and LC_CTYPE), which this host lacks (PostgreSQL refuses connections to it): `+
		`install the Debian package locales-all, or the package locales and add the line "de_DE.UTF-8 UTF-8" to /etc/locale.gen and run locale-gen`, probs[0].String())
	require.Contains(t, probs[1].Message, `"fr_FR.UTF-8" (LC_CTYPE)`)

	// A server built without ICU: only the ICU database is a problem.
	probs = localeProblems(dbs[3:], installed, false, true, "15")
	require.Len(t, probs, 1)
	require.Equal(t, "icu", probs[0].Kind)
	require.Contains(t, probs[0].Message, "built without ICU: install the Debian package postgresql-15")
	require.Empty(t, localeProblems(dbs[3:], installed, false, false, "15"), "no ICU problem when it is not known")
}

func TestConnLocaleProblem(t *testing.T) {
	err := &pgconn.PgError{Severity: "FATAL", Code: "XX000", Message: "database locale is incompatible with operating system",
		Detail: `The database was initialized with LC_COLLATE "xx_XX.UTF-8",  which is not recognized by setlocale().`}
	p, ok := connLocaleProblem(err, "shop", "15")
	require.True(t, ok)
	require.Equal(t, "locale", p.Kind)
	require.Contains(t, p.Message, `uses locale "xx_XX.UTF-8"`)
	require.Contains(t, p.Message, `"xx_XX.UTF-8 UTF-8"`)

	p, ok = connLocaleProblem(&pgconn.PgError{Severity: "FATAL", Code: "0A000", Message: "ICU is not supported in this build"}, "shop", "16")
	require.True(t, ok)
	require.Equal(t, "icu", p.Kind)
	require.Contains(t, p.Message, "postgresql-16")

	_, ok = connLocaleProblem(&pgconn.PgError{Code: "28P01", Message: "password authentication failed"}, "shop", "15")
	require.False(t, ok)
}

func TestDebianPackage(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"postgis", "postgresql-15-postgis-3"},
		{"$libdir/postgis-3", "postgresql-15-postgis-3"},
		{"postgis_topology-3.so", "postgresql-15-postgis-3"},
		{"vector", "postgresql-15-pgvector"},
		{"pg_cron", "postgresql-15-cron"},
		{"timescaledb-2.14.2", "timescaledb-2-postgresql-15 (from Timescale's repository)"},
		{"plpython3u", "postgresql-plpython3-15"},
		{"pg_stat_statements", "postgresql-15 (contrib, part of the server package)"},
		{"uuid-ossp", "postgresql-15 (contrib, part of the server package)"},
		{"no_such_extension", ""},
	} {
		require.Equal(t, tc.want, DebianPackage(tc.name, "15"), tc.name)
	}
	require.Equal(t, "pg_cron (Debian package postgresql-15-cron), mylib; install them, or start without them (export --allow-missing-preload; what needs them then fails)",
		missingPreloadHint([]string{"pg_cron", "mylib"}, "15"))
}

func TestLibraryProblems(t *testing.T) {
	libdir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(libdir, "plpgsql.so"), nil, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(libdir, "hstore.so"), nil, 0o644))
	libs := []cLibrary{
		{Probin: "$libdir/plpgsql"},
		{Probin: "hstore", Extensions: "hstore", InData: true},
		{Probin: "$libdir/postgis-3", Extensions: "postgis", InData: true},
		{Probin: "$libdir/pg_cron", Extensions: "pg_cron"},
		{Probin: "/opt/custom/lib/mine.so"},
	}
	probs := libraryProblems("shop", "15", libdir, libs)
	require.Len(t, probs, 3, "%v", probs)

	require.False(t, probs[0].Warning, "its types are in columns: pg_dump cannot read them")
	require.Equal(t, "extension", probs[0].Kind)
	require.Contains(t, probs[0].Message, "library $libdir/postgis-3 of extension postgis is not installed here (no "+filepath.Join(libdir, "postgis-3")+")")
	require.True(t, strings.HasSuffix(probs[0].Message, "install the Debian package postgresql-15-postgis-3"), probs[0].Message)

	require.True(t, probs[1].Warning, "no column has its types: the dump goes ahead")
	require.Contains(t, probs[1].Message, "postgresql-15-cron")

	require.True(t, probs[2].Warning)
	require.Contains(t, probs[2].Message, "install the package that provides /opt/custom/lib/mine.so for PostgreSQL 15")
}
