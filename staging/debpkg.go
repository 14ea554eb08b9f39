package staging

import (
	"fmt"
	"path"
	"regexp"
	"strings"
)

// debianPackages name the Debian package (%s: the major version) of the
// extensions and libraries found most often outside PostgreSQL's own
// contrib, by extension name and by library base name.
var debianPackages = map[string]string{
	"postgis":                "postgresql-%s-postgis-3",
	"postgis_raster":         "postgresql-%s-postgis-3",
	"postgis_topology":       "postgresql-%s-postgis-3",
	"postgis_sfcgal":         "postgresql-%s-postgis-3",
	"postgis_tiger_geocoder": "postgresql-%s-postgis-3",
	"address_standardizer":   "postgresql-%s-postgis-3",
	"rtpostgis":              "postgresql-%s-postgis-3",
	"pgrouting":              "postgresql-%s-pgrouting",
	"vector":                 "postgresql-%s-pgvector",
	"pg_cron":                "postgresql-%s-cron",
	"pgaudit":                "postgresql-%s-pgaudit",
	"pg_repack":              "postgresql-%s-repack",
	"pg_partman":             "postgresql-%s-partman",
	"pg_partman_bgw":         "postgresql-%s-partman",
	"hypopg":                 "postgresql-%s-hypopg",
	"orafce":                 "postgresql-%s-orafce",
	"pglogical":              "postgresql-%s-pglogical",
	"h3":                     "postgresql-%s-h3",
	"h3_postgis":             "postgresql-%s-h3",
	"pg_hint_plan":           "postgresql-%s-pg-hint-plan",
	"pgtap":                  "postgresql-%s-pgtap",
	"ip4r":                   "postgresql-%s-ip4r",
	"rum":                    "postgresql-%s-rum",
	"plv8":                   "postgresql-%s-plv8",
	"pg_squeeze":             "postgresql-%s-squeeze",
	"wal2json":               "postgresql-%s-wal2json",
	"plpython3u":             "postgresql-plpython3-%s",
	"plpython3":              "postgresql-plpython3-%s",
	"plperl":                 "postgresql-plperl-%s",
	"plperlu":                "postgresql-plperl-%s",
	"pltcl":                  "postgresql-pltcl-%s",
	"pltclu":                 "postgresql-pltcl-%s",
	"timescaledb":            "timescaledb-2-postgresql-%s (from Timescale's repository)",
}

// contribModules ship with the server package itself (Debian's
// postgresql-N holds contrib since PostgreSQL 10).
var contribModules = strings.Fields(`adminpack amcheck auth_delay auto_explain autoinc basebackup_to_shell
	basic_archive bloom btree_gin btree_gist citext cube dblink dict_int dict_xsyn earthdistance
	file_fdw fuzzystrmatch hstore hstore_plperl hstore_plpython3 insert_username intagg intarray isn
	jsonb_plperl jsonb_plpython3 lo ltree ltree_plpython3 moddatetime old_snapshot pageinspect
	passwordcheck pg_buffercache pg_freespacemap pg_prewarm pg_stat_statements pg_surgery pg_trgm
	pg_visibility pg_walinspect pgcrypto pgrowlocks pgstattuple postgres_fdw refint seg sepgsql
	sslinfo tablefunc tcn test_decoding tsm_system_rows tsm_system_time unaccent uuid-ossp xml2
	plpgsql pgoutput`)

// versionSuffix is the version some libraries carry in their file name
// ("postgis-3", "timescaledb-2.14.2").
var versionSuffix = regexp.MustCompile(`-[0-9][0-9.]*$`)

// DebianPackage names the Debian package that installs the extension or
// library name (an extension name, a library as shared_preload_libraries
// or a C function names it: "postgis-3", "$libdir/vector") for PostgreSQL
// major, or "" when it is not one this program knows.
func DebianPackage(name, major string) string {
	base := versionSuffix.ReplaceAllString(strings.TrimSuffix(path.Base(name), ".so"), "")
	if p, ok := debianPackages[base]; ok {
		return fmt.Sprintf(p, major)
	}
	for _, m := range contribModules {
		if base == m || base == strings.ReplaceAll(m, "-", "_") {
			return fmt.Sprintf("postgresql-%s (contrib, part of the server package)", major)
		}
	}
	return ""
}

// installHint says what installs the extension or library name: its
// Debian package if known, else that the library itself is needed.
func installHint(name, major string) string {
	if p := DebianPackage(name, major); p != "" {
		return "install the Debian package " + p
	}
	return fmt.Sprintf("install the package that provides %s for PostgreSQL %s", name, major)
}
