package staging

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

// TestChecksNameWhatTheHostLacks runs the checks on a real instance whose
// catalog names a locale and libraries this host lacks (written into the
// catalog directly: a database cannot be created with a locale the machine
// does not have, nor a C function from a library that is not there).
func TestChecksNameWhatTheHostLacks(t *testing.T) {
	testsupport.RequirePG(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "s3cret"})
	c.CreateDB(t, "shop")
	c.CreateDB(t, "elsewhere")
	c.Exec(t, "postgres", "CREATE DATABASE icu LOCALE_PROVIDER icu ICU_LOCALE 'und' TEMPLATE template0")
	c.Exec(t, "shop", `CREATE TYPE geo;
		CREATE FUNCTION geo_in(cstring) RETURNS geo AS 'textin' LANGUAGE internal IMMUTABLE STRICT;
		CREATE FUNCTION geo_out(geo) RETURNS cstring AS 'textout' LANGUAGE internal IMMUTABLE STRICT;
		CREATE TYPE geo (INPUT = geo_in, OUTPUT = geo_out, LIKE = text);
		CREATE TABLE places(id int, g geo); INSERT INTO places VALUES (1, 'here');
		CREATE FUNCTION schedule() RETURNS int AS 'SELECT 1' LANGUAGE sql;
		UPDATE pg_proc SET prolang = (SELECT oid FROM pg_language WHERE lanname = 'c'), probin = '$libdir/postgis-3' WHERE proname IN ('geo_in', 'geo_out');
		UPDATE pg_proc SET prolang = (SELECT oid FROM pg_language WHERE lanname = 'c'), probin = '$libdir/pg_cron', prosrc = 'cron_schedule' WHERE proname = 'schedule';`)
	// The postgres database too: the checks read the catalog from template1.
	c.Exec(t, "shop", `UPDATE pg_database SET datcollate = 'xx_XX.UTF-8', datctype = 'xx_XX.UTF-8' WHERE datname IN ('elsewhere', 'postgres')`)
	c.Stop(t)
	dataDir, runDir := copyDataDir(t, c.DataDir)
	ctx := context.Background()
	in, err := StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir})
	require.NoError(t, err)
	t.Cleanup(func() { in.Stop(context.Background()) })

	// This host's server has ICU: the database of the ICU provider is a
	// problem only for a server built without it.
	has, known := serverHasICU(in.BinDir)
	require.True(t, has && known, "the packaged server links libicu")
	rep, err := in.Check(ctx, CheckOptions{Databases: []string{"icu"}, User: "postgres", Password: "s3cret"})
	require.NoError(t, err)
	require.NoError(t, rep.Err())
	serverHasICU = func(string) (bool, bool) { return false, true }
	t.Cleanup(func() { serverHasICU = serverHasICUOf })

	rep, err = in.Check(ctx, CheckOptions{Databases: []string{"shop", "elsewhere", "icu"}, User: "postgres", Password: "s3cret"})
	require.NoError(t, err)
	byKind := map[string][]Problem{}
	for _, p := range rep.Problems {
		byKind[p.Kind] = append(byKind[p.Kind], p)
	}
	require.Len(t, byKind["locale"], 1, "%v", rep.Problems)
	require.Equal(t, "elsewhere", byKind["locale"][0].DB)
	require.Contains(t, byKind["locale"][0].Message, `uses locale "xx_XX.UTF-8" (LC_COLLATE and LC_CTYPE)`)
	require.Contains(t, byKind["locale"][0].Message, `"xx_XX.UTF-8 UTF-8" to /etc/locale.gen`)
	require.Len(t, byKind["extension"], 2, "%v", rep.Problems)
	cron, postgis := byKind["extension"][0], byKind["extension"][1] // by library name
	require.False(t, postgis.Warning, "a column has the type of $libdir/postgis-3")
	require.Contains(t, postgis.Message, "$libdir/postgis-3")
	require.Contains(t, postgis.Message, "postgresql-"+in.Version+"-postgis-3")
	require.True(t, cron.Warning, "no column has a type of $libdir/pg_cron")
	require.Contains(t, cron.Message, "postgresql-"+in.Version+"-cron")
	require.Len(t, byKind["icu"], 1, "%v", rep.Problems)
	require.Equal(t, "icu", byKind["icu"][0].DB)
	require.Contains(t, byKind["icu"][0].Message, `uses ICU collations (locale provider icu, locale "und")`)
	require.Empty(t, byKind["privileges"], "a database whose locale is missing is not reported as one the user cannot connect to")
	require.ErrorIs(t, rep.Err(), ErrChecks)

	// Without the catalog (no database but the one asked for takes
	// connections), the connection's error names the locale.
	rep, err = in.Check(ctx, CheckOptions{Databases: []string{"elsewhere"}, User: "postgres", Password: "s3cret"})
	require.NoError(t, err)
	require.Len(t, rep.Problems, 1, "%v", rep.Problems)
	require.Equal(t, "locale", rep.Problems[0].Kind)
}

// TestInstanceRefusesMissingConfLocale: a backup whose postgresql.conf sets
// an lc_* locale this host lacks is refused before the server is started
// (which would fail with "configuration file contains errors"), naming the
// locale and the package.
func TestInstanceRefusesMissingConfLocale(t *testing.T) {
	testsupport.RequirePG(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "s3cret"})
	c.Stop(t)
	dataDir, runDir := copyDataDir(t, c.DataDir)
	f, err := os.OpenFile(filepath.Join(dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("lc_monetary = 'xx_XX.UTF-8'\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	_, err = StartInstance(context.Background(), InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir})
	require.ErrorIs(t, err, ErrHostLacks)
	require.Contains(t, err.Error(), `locale "xx_XX.UTF-8" (lc_monetary in the backup's postgresql.conf) is not installed here`)
	require.Contains(t, err.Error(), "locales-all")
	require.False(t, errors.Is(err, ErrMissingPreload))
}
