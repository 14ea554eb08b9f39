package staging

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

// restoreDB is a database name with everything that trips up quoting.
const restoreDB = `Réstore "Src" DB`

// restoreSchema has the objects a dump must carry faithfully: contrib
// extensions, a large object, a partitioned table, a materialized view, a
// quoted mixed-case unicode table name, a sequence with a value, an
// identity column, and privileges.
const restoreSchema = `
CREATE EXTENSION hstore;
CREATE EXTENSION pgcrypto;
CREATE ROLE reader NOLOGIN;
CREATE SCHEMA "Sales Ünït";
CREATE TABLE "Sales Ünït"."Orders Ωmega" (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	"Customer Name" text NOT NULL,
	attrs hstore,
	secret bytea,
	placed timestamptz NOT NULL
);
INSERT INTO "Sales Ünït"."Orders Ωmega" ("Customer Name", attrs, secret, placed)
	SELECT 'customer ' || g || ' ☃', hstore(ARRAY['k' || g % 7, 'colour'], ARRAY[g::text, 'needle-' || g]),
	       digest('secret ' || g, 'sha256'), timestamptz '2024-01-01 00:00+00' + g * interval '1 hour'
	FROM generate_series(1, 3000) g;
CREATE INDEX orders_attrs ON "Sales Ünït"."Orders Ωmega" USING gin (attrs);
GRANT USAGE ON SCHEMA "Sales Ünït" TO reader;
GRANT SELECT ON "Sales Ünït"."Orders Ωmega" TO reader;

CREATE TABLE measurements (day date NOT NULL, city text, reading numeric) PARTITION BY RANGE (day);
CREATE TABLE measurements_2023 PARTITION OF measurements FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE measurements_2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measurements_rest PARTITION OF measurements DEFAULT;
INSERT INTO measurements SELECT date '2023-06-01' + g, 'city ' || g % 13, g * 1.5 FROM generate_series(0, 900) g;

CREATE MATERIALIZED VIEW city_totals AS
	SELECT city, count(*) AS n, sum(reading) AS total FROM measurements GROUP BY city;
CREATE UNIQUE INDEX city_totals_city ON city_totals (city);

CREATE SEQUENCE invoice_no START 1000 INCREMENT 7;
SELECT nextval('invoice_no') FROM generate_series(1, 5);
CREATE SEQUENCE untouched;

CREATE TABLE docs (id int PRIMARY KEY, body oid);
INSERT INTO docs VALUES (1, lo_from_bytea(0, convert_to(repeat('large object ünïcödé ', 20000), 'UTF8')));
DO $$ BEGIN EXECUTE format('COMMENT ON LARGE OBJECT %s IS %L', (SELECT body FROM docs), 'a big ☃ document'); END $$;
`

// TestRestoreCompare dumps a database through an Instance on a copy of the
// cluster, restores the dump into a fresh database of the cluster, and
// compares schema and data with the source. A tampered dump must be caught.
func TestRestoreCompare(t *testing.T) {
	testsupport.RequirePG(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "s3cret"})
	c.CreateDB(t, restoreDB)
	c.Exec(t, restoreDB, restoreSchema)
	c.Stop(t)
	dataDir, runDir := copyDataDir(t, c.DataDir)
	c.Start(t)
	ctx := context.Background()
	in, err := StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir})
	require.NoError(t, err)
	t.Cleanup(func() { in.Stop(context.Background()) })

	dump := filepath.Join(t.TempDir(), restoreDB)
	res, err := in.Dump(ctx, DumpOptions{DB: restoreDB, User: "postgres", Password: "s3cret", Dir: dump})
	require.NoError(t, err)
	require.Positive(t, res.Tables)

	t.Run("the restore is identical", func(t *testing.T) {
		// The comparison must cover every kind of object, or it proves little.
		fp := fingerprint(t, c, restoreDB)
		for k, want := range map[string]string{
			`table "Sales Ünït"."Orders Ωmega"`:           "3000 rows",
			`sequence "Sales Ünït"."Orders Ωmega_id_seq"`: "last_value=3000 is_called=t",
			"table public.measurements":                   "901 rows",
			"table public.measurements_2023":              "214 rows",
			"table public.city_totals":                    "13 rows",
			"sequence public.invoice_no":                  "last_value=1028 is_called=t",
			"sequence public.untouched":                   "last_value=1 is_called=f",
			"large objects":                               "1 objects",
		} {
			require.Contains(t, fp[k], want, k)
		}
		restore(t, c, dump, "restored")
		require.Empty(t, compareDBs(t, c, restoreDB, "restored"))
	})

	t.Run("a tampered dump is caught", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad")
		require.NoError(t, os.CopyFS(bad, os.DirFS(dump)))
		// One row of the orders table, and one byte of the large object.
		tamper(t, bad, "needle-42\"", "needle-24\"")
		tamper(t, bad, "ünïcödé large", "ünïcödé LARGE")
		restore(t, c, bad, "tampered")
		c.Exec(t, "tampered", `SELECT setval('invoice_no', 1); DROP INDEX city_totals_city`)
		diffs := compareDBs(t, c, restoreDB, "tampered")
		joined := strings.Join(diffs, "\n")
		require.Contains(t, joined, `table "Sales Ünït"."Orders Ωmega"`)
		require.Contains(t, joined, "large objects")
		require.Contains(t, joined, "sequence public.invoice_no")
		require.Contains(t, joined, "schema-only dump differs")
		require.NotContains(t, joined, "public.measurements", "untouched tables compare equal")
		t.Logf("differences found:\n%s", joined)
	})
}

// restore creates db in the cluster and pg_restores dir into it.
func restore(t *testing.T, c *testsupport.Cluster, dir, db string) {
	t.Helper()
	c.CreateDB(t, db)
	out, err := c.ClientCmd(context.Background(), db, "pg_restore", "--exit-on-error", "-d", c.ConnString(db), dir).CombinedOutput()
	require.NoError(t, err, string(out))
}

// tamper replaces old with new (of the same length) in the one data file
// of a directory-format dump that holds it.
func tamper(t *testing.T, dir, old, new string) {
	t.Helper()
	require.Len(t, new, len(old))
	files, err := filepath.Glob(filepath.Join(dir, "*.dat"))
	require.NoError(t, err)
	hit := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		if i := bytes.Index(b, []byte(old)); i >= 0 {
			copy(b[i:], new)
			require.NoError(t, os.WriteFile(f, b, 0o600))
			hit++
		}
	}
	require.Equal(t, 1, hit, "%q must be in exactly one data file", old)
}

// compareDBs returns every difference between two databases of the
// cluster: the schema-only dumps, every table's and materialized view's
// rows, every sequence's state, and the large objects.
func compareDBs(t *testing.T, c *testsupport.Cluster, a, b string) []string {
	t.Helper()
	var diffs []string
	sa, sb := schemaDump(t, c, a), schemaDump(t, c, b)
	if sa != sb {
		diffs = append(diffs, "schema-only dump differs: "+firstDiff(sa, sb))
	}
	fa, fb := fingerprint(t, c, a), fingerprint(t, c, b)
	require.NotEmpty(t, fa)
	for k, va := range fa {
		if vb, ok := fb[k]; !ok {
			diffs = append(diffs, k+": missing in "+b)
		} else if va != vb {
			diffs = append(diffs, fmt.Sprintf("%s: %s in %s, %s in %s", k, va, a, vb, b))
		}
	}
	for k := range fb {
		if _, ok := fa[k]; !ok {
			diffs = append(diffs, k+": missing in "+a)
		}
	}
	slices.Sort(diffs)
	return diffs
}

func schemaDump(t *testing.T, c *testsupport.Cluster, db string) string {
	t.Helper()
	out, err := c.ClientCmd(context.Background(), db, "pg_dump", "--schema-only", "-d", c.ConnString(db)).Output()
	require.NoError(t, err)
	// Minor releases since August 2025 fence the script with \restrict and
	// \unrestrict and a random key.
	lines := strings.Split(string(out), "\n")
	lines = slices.DeleteFunc(lines, func(l string) bool {
		return strings.HasPrefix(l, `\restrict `) || strings.HasPrefix(l, `\unrestrict `)
	})
	return strings.Join(lines, "\n")
}

func firstDiff(a, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range max(len(la), len(lb)) {
		var x, y string
		if i < len(la) {
			x = la[i]
		}
		if i < len(lb) {
			y = lb[i]
		}
		if x != y {
			return fmt.Sprintf("line %d: %q vs %q", i+1, x, y)
		}
	}
	return ""
}

// fingerprint maps each user relation to a digest of its contents (row
// count and the md5 of its rows in text form, in a total order), each
// sequence to its state, and "large objects" to the OIDs and md5s of every
// large object.
func fingerprint(t *testing.T, c *testsupport.Cluster, db string) map[string]string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.ConnString(db))
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT c.relkind::text, format('%I.%I', n.nspname, c.relname)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r','p','m','S') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'
		ORDER BY 2`)
	require.NoError(t, err)
	type rel struct{ Kind, Name string }
	rels, err := pgx.CollectRows(rows, pgx.RowToStructByPos[rel])
	require.NoError(t, err)
	fp := map[string]string{}
	for _, r := range rels {
		var v string
		switch r.Kind {
		case "S":
			err = conn.QueryRow(ctx, "SELECT format('last_value=%s is_called=%s', last_value, is_called) FROM "+r.Name).Scan(&v)
			fp["sequence "+r.Name] = v
		default:
			err = conn.QueryRow(ctx, "SELECT format('%s rows md5 %s', count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))) FROM "+r.Name+" t").Scan(&v)
			fp["table "+r.Name] = v
		}
		require.NoError(t, err, r.Name)
	}
	var lo string
	require.NoError(t, conn.QueryRow(ctx, `SELECT format('%s objects: %s', count(*), coalesce(string_agg(format('%s=%s (%s)', oid, md5(lo_get(oid)), obj_description(oid, 'pg_largeobject')), ',' ORDER BY oid), ''))
		FROM pg_largeobject_metadata`).Scan(&lo))
	fp["large objects"] = lo
	return fp
}
