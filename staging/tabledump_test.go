package staging

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/stretchr/testify/require"
)

// splitSchema adds to restoreSchema the tables whose data is hardest to
// reproduce outside pg_dump: COPY escapes, floats (extra_float_digits),
// intervals, a generated and a dropped column, row-level security, an
// inheritance child, an unlogged table, a table without columns, and a
// foreign key that parallel restore must order after the data.
const splitSchema = `
CREATE TABLE "Odd ""Tab""" (id int PRIMARY KEY, "Wéird col" text, f float8, r real, iv interval, b bytea,
	j jsonb, ts timestamptz, gone int, twice int GENERATED ALWAYS AS (id * 2) STORED);
INSERT INTO "Odd ""Tab""" (id, "Wéird col", f, r, iv, b, j, ts, gone)
	SELECT g, CASE g % 5 WHEN 0 THEN NULL WHEN 1 THEN E'tab\there\nnewline \\ back' ELSE repeat('x', g % 300) END,
	       1.0 / g, (g / 3.0)::real, g * interval '1 min 3.5 s', decode(md5(g::text), 'hex'),
	       jsonb_build_object('g', g, 's', E'q"\\'), timestamptz '2020-02-29 12:00+03' + g * interval '1 day', g
	FROM generate_series(1, 6000) g;
ALTER TABLE "Odd ""Tab""" DROP COLUMN gone;
DELETE FROM "Odd ""Tab""" WHERE id % 97 = 0;
UPDATE "Odd ""Tab""" SET f = -f WHERE id % 89 = 0;
CREATE TABLE guarded (id int, owner text);
INSERT INTO guarded SELECT g, 'u' || g FROM generate_series(1, 3000) g;
ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
ALTER TABLE guarded FORCE ROW LEVEL SECURITY;
CREATE TABLE parent (id int, note text);
CREATE TABLE child (extra text) INHERITS (parent);
INSERT INTO parent SELECT g, 'p' FROM generate_series(1, 2000) g;
INSERT INTO child SELECT g, 'c', 'x' FROM generate_series(1, 2000) g;
CREATE UNLOGGED TABLE scratch AS SELECT g AS id FROM generate_series(1, 5000) g;
CREATE TABLE nocols ();
INSERT INTO nocols SELECT FROM generate_series(1, 10);
CREATE TABLE empty_one (id int);
CREATE TABLE refs (id int REFERENCES "Odd ""Tab""" (id));
INSERT INTO refs SELECT g FROM generate_series(1, 5000) g WHERE g % 97 <> 0;
`

// TestSplitTables dumps every non-empty table's data in page ranges of a
// few pages and checks the result against pg_dump's own dump of the same
// database: each data file is byte-identical to pg_dump's, each added TOC
// entry equals pg_dump's entry for the table, and pg_restore -j2 restores
// a database equal to the source.
func TestSplitTables(t *testing.T) {
	testsupport.RequirePG(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: "s3cret"})
	c.CreateDB(t, restoreDB)
	c.Exec(t, restoreDB, restoreSchema+splitSchema)
	c.Stop(t)
	dataDir, runDir := copyDataDir(t, c.DataDir)
	c.Start(t)
	ctx := context.Background()
	in, err := StartInstance(ctx, InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir})
	require.NoError(t, err)
	t.Cleanup(func() { in.Stop(context.Background()) })

	ref := filepath.Join(t.TempDir(), "ref")
	_, err = in.Dump(ctx, DumpOptions{DB: restoreDB, User: "postgres", Password: "s3cret", Dir: ref, SplitTableBytes: -1})
	require.NoError(t, err)

	split := filepath.Join(t.TempDir(), "split")
	var mu sync.Mutex
	reported := map[string][]byte{} // each file's content when it was reported
	res, err := in.Dump(ctx, DumpOptions{
		DB: restoreDB, User: "postgres", Password: "s3cret", Dir: split, Jobs: 3,
		SplitTableBytes: 1, rangeBytes: 3 * 8192,
		OnFile: func(name string) {
			b, err := os.ReadFile(filepath.Join(split+".partial", name))
			mu.Lock()
			defer mu.Unlock()
			require.NotContains(t, reported, name, "reported twice")
			if err == nil {
				reported[name] = b
			}
		},
	})
	require.NoError(t, err)
	t.Logf("%s", res.Command)
	for _, want := range []string{`public."Odd ""Tab"""`, "public.guarded", "public.child", "public.scratch", "public.nocols", `"Sales Ünït"."Orders Ωmega"`, "public.measurements_2023"} {
		require.Contains(t, res.Split, want)
	}
	require.NotContains(t, res.Split, "public.empty_one", "an empty table is left to pg_dump")

	// Every file was reported once, with its final content: toc.dat only
	// after pgporter rewrote it.
	ents, err := os.ReadDir(split)
	require.NoError(t, err)
	require.Len(t, reported, len(ents))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(split, e.Name()))
		require.NoError(t, err)
		require.Equal(t, b, reported[e.Name()], e.Name())
	}

	refTOC, splitTOC := readTOC(t, ref), readTOC(t, split)
	require.Len(t, splitTOC.entries, len(refTOC.entries), "one TABLE DATA entry per split table, none lost")
	byOID := func(toc *archiveTOC, desc string) map[string]tocEntry {
		m := map[string]tocEntry{}
		for _, e := range toc.entries {
			if e.desc.s == desc {
				m[e.oid.s] = e
			}
		}
		return m
	}
	refData, splitData := byOID(refTOC, "TABLE DATA"), byOID(splitTOC, "TABLE DATA")
	refTables, splitTables := byOID(refTOC, "TABLE"), byOID(splitTOC, "TABLE")
	require.Equal(t, len(refData), len(splitData))
	tableOf := func(toc map[string]tocEntry, dep tocStr) string {
		for oid, e := range toc {
			if strconv.Itoa(e.dumpID) == dep.s {
				return oid
			}
		}
		return ""
	}
	matched := 0
	for oid, want := range refData {
		got, ok := splitData[oid]
		require.True(t, ok, "no TABLE DATA for %s", want.tag.s)
		if !strings.HasPrefix(got.filename.s, "table-") {
			continue // left to pg_dump
		}
		matched++
		require.Len(t, got.deps, 1)
		require.Equal(t, tableOf(refTables, want.deps[0]), tableOf(splitTables, got.deps[0]), want.tag.s)
		g, w := got, want
		g.dumpID, w.dumpID, g.deps, w.deps, g.filename, w.filename = 0, 0, nil, nil, tocStr{}, tocStr{}
		require.Equal(t, w, g, "the TOC entry of %s", want.tag.s)
		wb, err := os.ReadFile(filepath.Join(ref, want.filename.s))
		require.NoError(t, err)
		gb, err := os.ReadFile(filepath.Join(split, got.filename.s))
		require.NoError(t, err)

		require.True(t, string(wb) == string(gb), "the data of %s differs from pg_dump's (%d and %d bytes)", want.tag.s, len(wb), len(gb))
	}
	require.Equal(t, len(res.Split), matched)

	c.CreateDB(t, "restored")
	out, err := c.ClientCmd(ctx, "restored", "pg_restore", "--exit-on-error", "-j", "2", "-d", c.ConnString("restored"), split).CombinedOutput()
	require.NoError(t, err, string(out))
	require.Empty(t, compareDBs(t, c, restoreDB, "restored"))
}

func readTOC(t *testing.T, dir string) *archiveTOC {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "toc.dat"))
	require.NoError(t, err)
	toc, err := parseTOC(b)
	require.NoError(t, err)
	require.Equal(t, b, toc.bytes(), "toc.dat reads back as written")
	return toc
}

func TestPageRanges(t *testing.T) {
	for _, tc := range []struct{ pages, bytes, size int64 }{
		{0, 0, 100}, {1, 8192, 100}, {10, 81920, 8192}, {10, 81920, 3 * 8192}, {1000, 1 << 40, 1}, {7, 1 << 20, 1 << 30},
	} {
		rs := pageRanges(tc.pages, tc.bytes, tc.size)
		require.NotEmpty(t, rs)
		require.LessOrEqual(t, len(rs), maxRanges)
		require.Zero(t, rs[0][0])
		require.Equal(t, int64(-1), rs[len(rs)-1][1], "the last range is open")
		for i := 1; i < len(rs); i++ {
			require.Equal(t, rs[i-1][1], rs[i][0], "contiguous")
			require.Less(t, rs[i-1][0], rs[i-1][1])
		}
		if tc.pages >= 2 && tc.bytes/tc.size >= 2 {
			require.Greater(t, len(rs), 1, "%+v", tc)
		}
	}
}
