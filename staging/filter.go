package staging

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// DumpFilter narrows a dump to some tables or schemas, with pg_dump's own
// options and pattern rules (psql's: * and ? wildcards, a dot between
// schema and name, double quotes for exact case).
type DumpFilter struct {
	Tables        []string `json:"tables,omitempty"`         // --table
	Schemas       []string `json:"schemas,omitempty"`        // --schema
	ExcludeTables []string `json:"exclude_tables,omitempty"` // --exclude-table
	DataOnly      bool     `json:"data_only,omitempty"`      // --data-only
	SchemaOnly    bool     `json:"schema_only,omitempty"`    // --schema-only
}

// IsZero reports whether f dumps everything.
func (f *DumpFilter) IsZero() bool {
	return f == nil || (len(f.Tables) == 0 && len(f.Schemas) == 0 && len(f.ExcludeTables) == 0 && !f.DataOnly && !f.SchemaOnly)
}

// Validate refuses what pg_dump would refuse, before anything runs.
func (f *DumpFilter) Validate() error {
	if f == nil {
		return nil
	}
	if f.DataOnly && f.SchemaOnly {
		return fmt.Errorf("staging: --data-only and --schema-only exclude each other")
	}
	for _, p := range slices.Concat(f.Tables, f.Schemas, f.ExcludeTables) {
		if strings.TrimSpace(p) == "" || strings.ContainsRune(p, 0) {
			return fmt.Errorf("staging: empty or NUL-holding pattern %q", p)
		}
	}
	return nil
}

// args are pg_dump's options for f. Include patterns must each match
// something (--strict-names), so that a typo is an error, not a dump of
// nothing.
func (f *DumpFilter) args() []string {
	if f == nil {
		return nil
	}
	var a []string
	for _, p := range f.Tables {
		a = append(a, "--table="+p)
	}
	for _, p := range f.Schemas {
		a = append(a, "--schema="+p)
	}
	for _, p := range f.ExcludeTables {
		a = append(a, "--exclude-table="+p)
	}
	if f.DataOnly {
		a = append(a, "--data-only")
	}
	if f.SchemaOnly {
		a = append(a, "--schema-only")
	}
	if len(f.Tables)+len(f.Schemas) > 0 {
		a = append(a, "--strict-names")
	}
	return a
}

// noMatch is pg_dump's error for an include pattern that matches nothing.
var noMatch = regexp.MustCompile(`no matching (tables|schemas) were found for pattern "((?:[^"]|"")*)"`)

// checkFilter runs pg_dump on db for the schema of what f's include
// patterns name, which is cheap and applies pg_dump's own pattern rules: a
// pattern that matches nothing is a problem naming the closest names.
func (in *Instance) checkFilter(ctx context.Context, c *pgx.Conn, db string, f *DumpFilter, user, password string) ([]Problem, error) {
	if f == nil || len(f.Tables)+len(f.Schemas) == 0 {
		return nil, nil
	}
	inc := &DumpFilter{Tables: f.Tables, Schemas: f.Schemas}
	args := append([]string{"--schema-only", "-f", "/dev/null"}, inc.args()...)
	cmd := exec.CommandContext(ctx, filepath.Join(in.BinDir, "pg_dump"), append(args, "-d", in.ConnString(db, user))...)
	env, done, err := clientEnv(password)
	if err != nil {
		return nil, err
	}
	defer done()
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err == nil {
		return nil, nil
	}
	m := noMatch.FindStringSubmatch(stderr.String())
	if m == nil {
		return nil, fmt.Errorf("checking the --table and --schema patterns in %q with pg_dump: %s", db, strings.TrimSpace(stderr.String()))
	}
	kind, pattern := m[1], strings.ReplaceAll(m[2], `""`, `"`)
	flag, q := "--table", `SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r','p','v','m','S','f') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg\_toast%'`
	if kind == "schemas" {
		flag, q = "--schema", `SELECT format('%I', nspname) FROM pg_namespace WHERE nspname NOT IN ('pg_catalog','information_schema') AND nspname NOT LIKE 'pg\_%'`
	}
	rows, err := c.Query(ctx, q)
	if err != nil {
		return nil, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	msg := fmt.Sprintf("%s %q matches nothing in this restore point", flag, pattern)
	if near := nearNames(pattern, names, 3); len(near) > 0 {
		msg += "; the closest names are " + strings.Join(near, ", ")
	}
	return []Problem{{Kind: "filter", DB: db, Message: msg}}, nil
}

// nearNames returns up to n of names closest to pattern (compared without
// quotes and wildcards, case-insensitively, with and without the schema),
// closest first, within a distance of a third of the pattern's length.
func nearNames(pattern string, names []string, n int) []string {
	p := strings.ToLower(strings.NewReplacer(`"`, "", "*", "", "?", "").Replace(pattern))
	type scored struct {
		name string
		d    int
	}
	var out []scored
	for _, name := range names {
		full := strings.ToLower(strings.ReplaceAll(name, `"`, ""))
		d := levenshtein(p, full)
		if _, short, ok := strings.Cut(full, "."); ok && !strings.Contains(p, ".") {
			d = min(d, levenshtein(p, short))
		}
		if d <= max(2, len(p)/3) {
			out = append(out, scored{name, d})
		}
	}
	slices.SortStableFunc(out, func(a, b scored) int { return a.d - b.d })
	var res []string
	for _, s := range out[:min(n, len(out))] {
		res = append(res, s.name)
	}
	return res
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
