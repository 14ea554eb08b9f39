package staging

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// One COPY of a whole table is one backend on one core: on a database with a
// few big tables, pg_dump -j cannot use the cores it is given. So the data
// of big tables is dumped by pgporter itself, as COPYs of ranges of their
// pages (TID range scans, PostgreSQL 14 and later) run on several
// connections in one snapshot, written in order into one data file per
// table. The file holds exactly what pg_dump's COPY would have written
// (rows in physical order, pg_dump's session settings); pg_dump dumps
// everything else in the same snapshot (--snapshot, --exclude-table-data)
// and pgporter adds the tables' TABLE DATA entries to its toc.dat, so the
// result is an ordinary directory archive for pg_restore.

const (
	defaultRangeBytes = 32 << 20 // a range's share of a table, main fork and TOAST
	maxRanges         = 4096
)

// splitTable is a table whose data pgporter dumps in ranges.
type splitTable struct {
	oid          uint32
	schema, name string
	owner        string
	qualified    string // quoted, as pg_dump writes it
	columns      string // quoted, comma separated; "" for a table without columns
	pages, bytes int64
	file         string
	ranges       [][2]int64 // [start, end) pages; end < 0: to the end
}

// tableSplit is the plan and the state of one dump's split tables: the
// connection holding the exported snapshot lives as long as the dump.
type tableSplit struct {
	hold     *pgx.Conn
	snapshot string
	tables   []*splitTable
}

// copyStmt is the statement pg_restore runs for the table's data, as
// pg_dump writes it.
func (t *splitTable) copyStmt() string {
	cols := ""
	if t.columns != "" {
		cols = "(" + t.columns + ")"
	}
	return "COPY " + t.qualified + " " + cols + " FROM stdin;\n" // two spaces without columns, as pg_dump writes it
}

func (t *splitTable) rangeSQL(r [2]int64) string {
	cols := t.columns
	if cols == "" {
		cols = "*" // a table without columns still has rows; COPY writes empty lines
	}
	where := fmt.Sprintf("ctid >= '(%d,0)'::tid", r[0])
	if r[1] >= 0 {
		where += fmt.Sprintf(" AND ctid < '(%d,0)'::tid", r[1])
	}
	return "COPY (SELECT " + cols + " FROM ONLY " + t.qualified + " WHERE " + where + ") TO STDOUT"
}

// excludePattern names the table for pg_dump's --exclude-table-data: each
// part double-quoted, so that no character is a wildcard.
func (t *splitTable) excludePattern() string {
	q := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
	return q(t.schema) + "." + q(t.name)
}

// sessionSetup is what pg_dump sets on its connections and what changes
// COPY's output (setup_connection in pg_dump.c).
const sessionSetup = `SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits TO 3;
SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0;
SET row_security = off; SET synchronize_seqscans TO off`

// planSplit picks the tables to dump in ranges and exports the snapshot
// both pg_dump and the range COPYs read. It returns nil, nil when the
// database or the server does not allow it (then pg_dump does everything).
func (in *Instance) planSplit(ctx context.Context, o DumpOptions) (_ *tableSplit, err error) {
	if o.SplitTableBytes <= 0 || !o.Filter.IsZero() {
		return nil, nil // pg_dump alone applies a filter's patterns
	}
	c, err := in.connect(ctx, o.DB, o.User, o.Password)
	if err != nil {
		return nil, fmt.Errorf("connecting to %q: %w", o.DB, err)
	}
	defer func() {
		if err != nil {
			c.Close(context.Background())
		}
	}()
	var version int
	var encoding string
	if err := c.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()`).Scan(&version, &encoding); err != nil {
		return nil, fmt.Errorf("reading the server version: %w", err)
	}
	// TID range scans came in 14; archive formats pgporter knows end at 17's.
	// The connection's client encoding is UTF8, which must be the dump's.
	if version < 140000 || version >= 180000 || encoding != "UTF8" {
		return nil, nil
	}
	if _, err := c.Exec(ctx, sessionSetup+"; BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"); err != nil {
		return nil, fmt.Errorf("starting the snapshot: %w", err)
	}
	rows, err := c.Query(ctx, `
SELECT c.oid, n.nspname, c.relname, pg_get_userbyid(c.relowner),
       quote_ident(n.nspname) || '.' || quote_ident(c.relname),
       coalesce((SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), ''),
       pg_relation_size(c.oid) / current_setting('block_size')::int8, pg_table_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence IN ('p', 'u')
  AND n.nspname <> ALL (ARRAY['pg_catalog', 'information_schema'])
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.deptype = 'e' AND
       ((d.classid = 'pg_class'::regclass AND d.objid = c.oid) OR (d.classid = 'pg_namespace'::regclass AND d.objid = n.oid)))
  AND pg_table_size(c.oid) >= $1
  AND current_setting('block_size')::int = 8192
ORDER BY pg_table_size(c.oid) DESC`, o.SplitTableBytes)
	if err != nil {
		return nil, fmt.Errorf("listing big tables: %w", err)
	}
	var tables []*splitTable
	for rows.Next() {
		t := &splitTable{}
		if err := rows.Scan(&t.oid, &t.schema, &t.name, &t.owner, &t.qualified, &t.columns, &t.pages, &t.bytes); err != nil {
			rows.Close()
			return nil, fmt.Errorf("listing big tables: %w", err)
		}
		tables = append(tables, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing big tables: %w", err)
	}
	if len(tables) == 0 {
		c.Close(ctx)
		return nil, nil
	}
	for _, t := range tables {
		if _, err := c.Exec(ctx, "LOCK TABLE ONLY "+t.qualified+" IN ACCESS SHARE MODE"); err != nil {
			return nil, fmt.Errorf("locking %s: %w", t.qualified, err)
		}
		t.file = "table-" + strconv.FormatUint(uint64(t.oid), 10) + ".dat"
		t.ranges = pageRanges(t.pages, t.bytes, cmp.Or(o.rangeBytes, defaultRangeBytes))
	}
	var snap string
	if err := c.QueryRow(ctx, "SELECT pg_export_snapshot()").Scan(&snap); err != nil {
		return nil, fmt.Errorf("exporting the snapshot: %w", err)
	}
	return &tableSplit{hold: c, snapshot: snap, tables: tables}, nil
}

// pageRanges cuts a table of pages main-fork pages and bytes in all into
// ranges of about size bytes; the last one is open, so rows on pages added
// since the size was read (invisible to the snapshot anyway) cannot be
// missed.
func pageRanges(pages, bytes, size int64) [][2]int64 {
	n := min(max(bytes/size, 1), maxRanges, max(pages, 1))
	step := (pages + n - 1) / n
	var rs [][2]int64
	for start := int64(0); ; start += step {
		if start+step >= pages || step == 0 {
			return append(rs, [2]int64{start, -1})
		}
		rs = append(rs, [2]int64{start, start + step})
	}
}

func (s *tableSplit) close() {
	if s != nil && s.hold != nil {
		s.hold.Close(context.Background())
	}
}

// pgDumpArgs are the arguments that make pg_dump leave the split tables'
// data to pgporter and read the same snapshot.
func (s *tableSplit) pgDumpArgs() []string {
	args := []string{"--snapshot=" + s.snapshot}
	for _, t := range s.tables {
		args = append(args, "--exclude-table-data="+t.excludePattern())
	}
	return args
}

// copyEnd ends the data of each table in pg_dump's files (dumpTableData_copy
// in pg_dump.c).
const copyEnd = "\\.\n\n\n"

// rangeJob is one range's output, handed from a COPY connection to the
// writer of its table.
type rangeJob struct {
	t   *splitTable
	r   [2]int64
	out chan *bytes.Buffer
}

// dump writes each split table's data file into dir with jobs connections.
// Ranges are copied in parallel and written in order; at most 2*jobs of
// them are in memory at once. ready is closed once dir may be written to
// (pg_dump refuses a directory that is not empty when it starts); done is
// called with each table's file once it is complete.
func (s *tableSplit) dump(ctx context.Context, in *Instance, o DumpOptions, dir string, ready <-chan struct{}, done func(*splitTable)) error {
	g, ctx := errgroup.WithContext(ctx)
	var all []*rangeJob
	for _, t := range s.tables {
		for _, r := range t.ranges {
			all = append(all, &rangeJob{t: t, r: r, out: make(chan *bytes.Buffer, 1)})
		}
	}
	// A fixed set of buffers, reused: a range is copied only into a free
	// one, taken before the range, so the range the writer waits for always
	// has one. Fresh buffers for every range cost more in page faults and
	// zeroing than the COPY itself.
	free := make(chan *bytes.Buffer, 2*o.Jobs)
	for range cap(free) {
		free <- new(bytes.Buffer)
	}
	work := make(chan *rangeJob)

	g.Go(func() error { // dispatch, in order
		defer close(work)
		for _, j := range all {
			select {
			case work <- j:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	for i := 0; i < o.Jobs; i++ {
		g.Go(func() error {
			c, err := in.connect(ctx, o.DB, o.User, o.Password)
			if err != nil {
				return fmt.Errorf("connecting for table data: %w", err)
			}
			defer c.Close(context.Background())
			if _, err := c.Exec(ctx, sessionSetup+"; BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"); err != nil {
				return fmt.Errorf("setting up a table data connection: %w", err)
			}
			if _, err := c.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+s.snapshot+"'"); err != nil {
				return fmt.Errorf("importing the dump's snapshot: %w", err)
			}
			for {
				var b *bytes.Buffer
				select {
				case b = <-free:
				case <-ctx.Done():
					return ctx.Err()
				}
				j, ok := <-work
				if !ok {
					return nil
				}
				b.Reset()
				if _, err := c.PgConn().CopyTo(ctx, b, j.t.rangeSQL(j.r)); err != nil {
					return fmt.Errorf("copying pages %d to %d of %s: %w", j.r[0], j.r[1], j.t.qualified, err)
				}
				j.out <- b
			}
		})
	}
	g.Go(func() error { // write, in order
		select {
		case <-ready:
		case <-ctx.Done():
			return ctx.Err()
		}
		var f *os.File
		defer func() {
			if f != nil {
				f.Close()
			}
		}()
		for i, j := range all {
			if f == nil {
				var err error
				if f, err = os.OpenFile(filepath.Join(dir, j.t.file), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
					return fmt.Errorf("creating the data file of %s: %w", j.t.qualified, err)
				}
			}
			var b *bytes.Buffer
			select {
			case b = <-j.out:
			case <-ctx.Done():
				return ctx.Err()
			}
			if _, err := f.Write(b.Bytes()); err != nil {
				return fmt.Errorf("writing the data of %s: %w", j.t.qualified, err)
			}
			free <- b
			if i == len(all)-1 || all[i+1].t != j.t {
				_, err := f.WriteString(copyEnd)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				f = nil
				if err != nil {
					return fmt.Errorf("writing the data of %s: %w", j.t.qualified, err)
				}
				done(j.t)
			}
		}
		return nil
	})
	return g.Wait()
}

// addEntries adds a TABLE DATA entry per split table to the toc.dat that
// pg_dump wrote in dir, as pg_dump writes its own, and replaces the file
// atomically.
func (s *tableSplit) addEntries(dir string) error {
	name := filepath.Join(dir, "toc.dat")
	b, err := os.ReadFile(name)
	if err != nil {
		return err
	}
	toc, err := parseTOC(b)
	if err != nil {
		return err
	}
	if !bytes.Equal(toc.bytes(), b) { // pgporter must not rewrite what it does not understand
		return fmt.Errorf("%w: it does not read back as written", errTOC)
	}
	next := toc.maxDumpID() + 1
	for _, t := range s.tables {
		table := toc.tableDumpID(t.oid)
		if table == 0 {
			return fmt.Errorf("%w: no TABLE entry for %s", errTOC, t.qualified)
		}
		toc.addData(tocEntry{
			dumpID: next, hadDumper: 1,
			tableOID: str("0"), oid: str(strconv.FormatUint(uint64(t.oid), 10)),
			tag: str(t.name), desc: str("TABLE DATA"), section: sectionData,
			copy:      str(t.copyStmt()),
			namespace: str(t.schema), relkind: 'r',
			owner: str(t.owner), withOids: str("false"),
			deps:     []tocStr{str(strconv.Itoa(table))},
			filename: str(t.file),
		})
		next++
	}
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, toc.bytes(), 0o600); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing toc.dat: %w", err)
	}
	if err := os.Rename(tmp, name); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing toc.dat: %w", err)
	}
	return nil
}
