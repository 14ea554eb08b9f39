package staging

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"

	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/internal/pgtool"
)

// Problem is one reason an export cannot go ahead (or, with Warning, a
// reason to look twice).
type Problem struct {
	Kind    string // "database", "locale", "icu", "extension", "credentials", "privileges", "space", "rls"
	DB      string
	Message string
	Warning bool
}

func (p Problem) String() string {
	w := ""
	if p.Warning {
		w = "warning: "
	}
	if p.DB != "" {
		return fmt.Sprintf("%s%s: database %q: %s", w, p.Kind, p.DB, p.Message)
	}
	return fmt.Sprintf("%s%s: %s", w, p.Kind, p.Message)
}

// CheckOptions describe the export to check.
type CheckOptions struct {
	Databases []string
	User      string
	Password  string
	DumpDir   string // staging directory the dumps go to
	// TargetFree, if set, reports the free bytes at the target (its mover
	// answers SpaceQuery).
	TargetFree func(ctx context.Context) (int64, error)
	// Margin multiplies the estimated dump size; default 1.2.
	Margin float64
	// SizeOf, if set, gives the size of a file of the instance's data
	// directory (a path relative to it) without asking the file system,
	// as Mounted.FileSize does: the estimate then costs one query, not
	// four file lookups per table through the mount (0.6 s for 5,000
	// tables). Relations it does not know are sized by PostgreSQL.
	SizeOf func(rel string) (int64, bool)
	// Filter, if set, is checked in each database: every --table and
	// --schema pattern must match something.
	Filter *DumpFilter
}

// CheckReport is everything Check found, and the size estimate it used.
type CheckReport struct {
	Problems []Problem
	Estimate map[string]int64 // estimated dump bytes per database
}

// Failed reports whether any problem (not a warning) was found.
func (r *CheckReport) Failed() bool {
	return slices.ContainsFunc(r.Problems, func(p Problem) bool { return !p.Warning })
}

// ErrChecks is matched by the error Check returns when problems were found.
var ErrChecks = errors.New("staging: pre-checks failed")

// Err is nil when nothing failed, else an error listing every problem.
func (r *CheckReport) Err() error {
	if !r.Failed() {
		return nil
	}
	var lines []string
	for _, p := range r.Problems {
		lines = append(lines, "  - "+p.String())
	}
	return fmt.Errorf("%w:\n%s", ErrChecks, strings.Join(lines, "\n"))
}

func (in *Instance) connect(ctx context.Context, db, user, password string) (*pgx.Conn, error) {
	return pgx.Connect(ctx, in.ConnString(db, user)+" password="+pgtool.Quote(password))
}

// Check runs every pre-check against the running instance and returns all
// the problems found, not just the first: databases exist (names matched
// exactly), this host has their locales, ICU if they use it and the
// libraries of their C functions, the user's password is right, the user
// can read everything pg_dump will read, and the dumps fit on the staging
// host and the target.
func (in *Instance) Check(ctx context.Context, o CheckOptions) (*CheckReport, error) {
	if o.Margin <= 0 {
		o.Margin = 1.2
	}
	rep := &CheckReport{Estimate: map[string]int64{}}
	add := func(p Problem) { rep.Problems = append(rep.Problems, p) }

	c, err := in.catalogConn(ctx, o)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && (pe.Code == "28P01" || pe.Code == "28000") {
			add(Problem{Kind: "credentials", Message: fmt.Sprintf("PostgreSQL user %q cannot log in with the given password (as of the backup): %s", o.User, pe.Message)})
			return rep, nil
		}
		return nil, fmt.Errorf("connecting to the instance: %w", err)
	}
	if c != nil {
		defer c.Close(ctx)
	}
	var names []string
	blocked := map[string]bool{} // databases no connection can be made to
	if c != nil {
		rows, err := c.Query(ctx, "SELECT datname FROM pg_database WHERE datallowconn")
		if err != nil {
			return nil, err
		}
		names, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, err
		}
		probs, err := in.checkLocales(ctx, c, o.Databases)
		if err != nil {
			return nil, err
		}
		for _, p := range probs {
			add(p)
			blocked[p.DB] = true
		}
	}
	libdir := pkgLibDir(in.BinDir)
	var total int64
	for _, db := range o.Databases {
		if c != nil && !slices.Contains(names, db) {
			msg := "not in this restore point"
			if i := slices.IndexFunc(names, func(n string) bool { return strings.EqualFold(n, db) }); i >= 0 {
				msg += fmt.Sprintf(" (names are matched exactly; did you mean %q?)", names[i])
			}
			add(Problem{Kind: "database", DB: db, Message: msg})
			continue
		}
		if blocked[db] {
			continue
		}
		est, probs, err := in.checkDB(ctx, db, libdir, o)
		if err != nil {
			return nil, err
		}
		rep.Problems = append(rep.Problems, probs...)
		rep.Estimate[db] = est
		total += est
	}
	need := int64(float64(total) * o.Margin)
	if o.DumpDir != "" {
		if free, err := freeBytes(o.DumpDir); err == nil && free < need {
			add(Problem{Kind: "space", Message: fmt.Sprintf("the dumps need about %s (estimate × %.1f) in %s, which has %s free", bytesize.Format(need), o.Margin, o.DumpDir, bytesize.Format(free))})
		}
	}
	if o.TargetFree != nil {
		free, err := o.TargetFree(ctx)
		if err != nil {
			return nil, fmt.Errorf("asking the target for its free space: %w", err)
		}
		if free < need {
			add(Problem{Kind: "space", Message: fmt.Sprintf("the dumps need about %s (estimate × %.1f) at the target, which has %s free", bytesize.Format(need), o.Margin, bytesize.Format(free))})
		}
	}
	return rep, nil
}

// checkDB checks one database and estimates its dump size: the size of the
// table data pg_dump writes (heap and TOAST of tables and materialized
// views, not indexes), which a COPY text dump matches within a small factor.
// It counts the main fork of each table and of its TOAST table only:
// pg_table_size would also look up the free space map, visibility map and
// init forks and the TOAST index, about 15 file lookups per table through
// the staging mount instead of 4, which a database of thousands of small
// tables pays in seconds (issue 16), for no data pg_dump writes.
func (in *Instance) checkDB(ctx context.Context, db, libdir string, o CheckOptions) (int64, []Problem, error) {
	var probs []Problem
	c, err := in.connect(ctx, db, o.User, o.Password)
	if err != nil {
		if p, ok := connLocaleProblem(err, db, in.Version); ok {
			return 0, []Problem{p}, nil
		}
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return 0, []Problem{{Kind: "privileges", DB: db, Message: "cannot connect: " + pe.Message}}, nil
		}
		return 0, nil, err
	}
	defer c.Close(ctx)
	var super, readAll, bypass bool
	err = c.QueryRow(ctx, `SELECT r.rolsuper, pg_has_role(current_user, 'pg_read_all_data', 'USAGE'), r.rolbypassrls
		FROM pg_roles r WHERE r.rolname = current_user`).Scan(&super, &readAll, &bypass)
	if err != nil {
		return 0, nil, err
	}
	est, err := tableDataBytes(ctx, c, o.SizeOf)
	if err != nil {
		return 0, nil, err
	}
	libProbs, err := in.checkLibraries(ctx, c, db, libdir)
	if err != nil {
		return 0, nil, err
	}
	probs = append(probs, libProbs...)
	filterProbs, err := in.checkFilter(ctx, c, db, o.Filter, o.User, o.Password)
	if err != nil {
		return 0, nil, err
	}
	probs = append(probs, filterProbs...)
	if !super && !readAll {
		rows, err := c.Query(ctx, `
			SELECT format('schema %I', n.nspname) FROM pg_namespace n
			 WHERE n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
			   AND NOT has_schema_privilege(n.oid, 'USAGE')
			UNION ALL
			SELECT format('%s %I.%I', CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' ELSE 'table' END, n.nspname, c.relname)
			  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			 WHERE c.relkind IN ('r','p','v','m','S','f') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'
			   AND NOT has_table_privilege(c.oid, 'SELECT')
			 ORDER BY 1 LIMIT 6`)
		if err != nil {
			return 0, nil, err
		}
		missing, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return 0, nil, err
		}
		if len(missing) > 0 {
			more := ""
			if len(missing) > 5 {
				missing, more = missing[:5], ", and more"
			}
			probs = append(probs, Problem{Kind: "privileges", DB: db, Message: fmt.Sprintf("user %q cannot read %s%s (grant SELECT/USAGE, or pg_read_all_data)", o.User, strings.Join(missing, ", "), more)})
		}
	}
	if !super && !bypass {
		rows, err := c.Query(ctx, `SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE c.relrowsecurity AND NOT pg_has_role(c.relowner, 'USAGE') ORDER BY 1 LIMIT 5`)
		if err != nil {
			return 0, nil, err
		}
		rls, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return 0, nil, err
		}
		if len(rls) > 0 {
			probs = append(probs, Problem{Kind: "rls", DB: db, Warning: true, Message: fmt.Sprintf("row-level security on %s would hide rows from user %q, who lacks BYPASSRLS (pg_dump then refuses unless told --enable-row-security)", strings.Join(rls, ", "), o.User)})
		}
	}
	return est, probs, nil
}

// dumpedTables selects the tables and materialized views whose data
// pg_dump writes (c is pg_class).
const dumpedTables = `FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	WHERE c.relkind IN ('r','m') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'`

// tableDataBytes sums the main forks of the dumped tables and of their
// TOAST tables. With sizeOf, PostgreSQL only names their files
// (pg_relation_filepath reads no file) and sizeOf sizes them, segment by
// segment; a relation whose first segment sizeOf does not know (in a
// tablespace: a symbolic link) is sized by PostgreSQL.
func tableDataBytes(ctx context.Context, c *pgx.Conn, sizeOf func(string) (int64, bool)) (int64, error) {
	var est int64
	if sizeOf == nil {
		err := c.QueryRow(ctx, `SELECT coalesce(sum(pg_relation_size(c.oid) + CASE WHEN c.reltoastrelid <> 0 THEN pg_relation_size(c.reltoastrelid) ELSE 0 END), 0)::bigint `+dumpedTables).Scan(&est)
		return est, err
	}
	rows, err := c.Query(ctx, `SELECT r.oid, pg_relation_filepath(r.oid) FROM (SELECT c.oid, c.reltoastrelid `+dumpedTables+`) t
		CROSS JOIN LATERAL (VALUES (t.oid), (nullif(t.reltoastrelid, 0))) r(oid) WHERE r.oid IS NOT NULL`)
	if err != nil {
		return 0, err
	}
	var unknown []uint32
	var oid uint32
	var path *string
	_, err = pgx.ForEachRow(rows, []any{&oid, &path}, func() error {
		if path == nil { // no storage
			return nil
		}
		for seg := 0; ; seg++ {
			name := *path
			if seg > 0 {
				name += "." + strconv.Itoa(seg)
			}
			n, ok := sizeOf(name)
			if !ok {
				if seg == 0 {
					unknown = append(unknown, oid)
				}
				return nil
			}
			est += n
		}
	})
	if err != nil || len(unknown) == 0 {
		return est, err
	}
	var rest int64
	err = c.QueryRow(ctx, `SELECT coalesce(sum(pg_relation_size(o)), 0)::bigint FROM unnest($1::oid[]) o`, unknown).Scan(&rest)
	return est + rest, err
}

func freeBytes(dir string) (int64, error) {
	for d := dir; ; {
		var st unix.Statfs_t
		if err := unix.Statfs(d, &st); err == nil {
			return int64(st.Bavail) * int64(st.Bsize), nil
		}
		parent := d[:max(strings.LastIndex(d, "/"), 1)]
		if parent == d {
			return 0, fmt.Errorf("statfs %s: no existing parent", dir)
		}
		d = parent
	}
}
