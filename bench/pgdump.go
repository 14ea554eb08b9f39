package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"strconv"
	"strings"

	"github.com/pgporter/pgporter/internal/pgtool"
)

// DumpOptions configures MakeDump.
type DumpOptions struct {
	Dir     string // where the dump goes; must not exist
	Scale   int    // pgbench scale; 0 means 20
	Docs    int    // rows of the docs table; 0 means 600,000
	Scratch string // parent of the throwaway cluster, which the postgres user must be able to enter; "" means /var/tmp
	BinDir  string // PostgreSQL's bin directory; "" means the newest under /usr/lib/postgresql
	// Updated, when set, is where a second dump goes, made after 100
	// scattered rows of pgbench_accounts were updated (the delta scenario's
	// "same database, dumped again").
	Updated string
}

// UpdatedRows is how many scattered rows MakeDump updates between its two
// dumps, as scripts/bench-transfer does for its delta figure.
const UpdatedRows = 100

// updateSQL (a format: %d is the number of accounts, %d the rows to update)
// updates that many distinct accounts picked at random and returns the
// count.
const updateSQL = `WITH ids AS (SELECT DISTINCT (1 + floor(random() * %d))::int AS aid FROM generate_series(1, 1000) LIMIT %d),
	u AS (UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid IN (SELECT aid FROM ids) RETURNING 1)
	SELECT count(*) FROM u`

// docsTable (a format: %d is the row count) is the table beside pgbench's of the LAN dump: md5 text, jsonb
// and repeated words, which compress about 3x where pgbench's padding
// compresses 90x.
const docsTable = `CREATE TABLE docs AS SELECT g AS id, md5(g::text) AS h,
	jsonb_build_object('k', g %% 1000, 'w', (ARRAY['alpha','beta','gamma','delta','epsilon'])[g %% 5 + 1]) AS j,
	repeat((ARRAY['lorem ','ipsum ','dolor ','sit '])[g %% 4 + 1], 8) AS words FROM generate_series(1, %d) g`

// MakeDump writes a pg_dump -Fd -Z0 of pgbench -i -s Scale plus the docs
// table into o.Dir, from a throwaway cluster it creates and removes; and,
// with o.Updated, the dump after UpdatedRows scattered updates.
func MakeDump(ctx context.Context, o DumpOptions) (err error) {
	if o.Scale <= 0 {
		o.Scale = 20
	}
	if o.Docs <= 0 {
		o.Docs = 600_000
	}
	c, err := newPGCluster(ctx, o.Scratch, o.BinDir, nil)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.remove()) }()
	if err := c.start(ctx); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.stop()) }()
	if err := fillBench(ctx, c, o.Scale, o.Docs); err != nil {
		return err
	}
	if _, err := c.client(ctx, "bench", "pg_dump", "-Fd", "-Z0", "--no-sync", "-f", o.Dir, "bench"); err != nil {
		return err
	}
	if o.Updated == "" {
		return nil
	}
	if err := updateRows(ctx, c, o.Scale); err != nil {
		return err
	}
	_, err = c.client(ctx, "bench", "pg_dump", "-Fd", "-Z0", "--no-sync", "-f", o.Updated, "bench")
	return err
}

// newBenchCluster makes a throwaway cluster holding fillBench's database
// at scale with docs rows, and stops it (cleanly: a checkpoint), for the
// scenarios that back up or send its data directory. The caller removes
// it.
func newBenchCluster(ctx context.Context, scale, docs int) (_ *pgCluster, err error) {
	c, err := newPGCluster(ctx, "", "", nil)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.remove())
		}
	}()
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	err = fillBench(ctx, c, scale, docs)
	return c, errors.Join(err, c.stop())
}

// benchTables are the tables of fillBench's database, sorted.
var benchTables = []string{"docs", "pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers"}

// fillBench makes database bench: pgbench -i -s scale plus docs rows of
// docsTable.
func fillBench(ctx context.Context, c *pgCluster, scale, docs int) error {
	steps := [][]string{
		{"createdb", "bench"},
		{"pgbench", "-i", "-s", strconv.Itoa(scale), "-q", "bench"},
		{"psql", "-q", "-v", "ON_ERROR_STOP=1", "-c", fmt.Sprintf(docsTable, docs)},
	}
	for _, s := range steps {
		if _, err := c.client(ctx, "bench", s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// updateRows updates UpdatedRows scattered rows of fillBench's
// pgbench_accounts (scale is fillBench's).
func updateRows(ctx context.Context, c *pgCluster, scale int) error {
	out, err := c.client(ctx, "bench", "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", fmt.Sprintf(updateSQL, scale*100_000, UpdatedRows))
	if err != nil {
		return err
	}
	if n := strings.TrimSpace(out); n != strconv.Itoa(UpdatedRows) {
		return fmt.Errorf("updated %s rows, want %d", n, UpdatedRows)
	}
	return nil
}

// pgCluster is a throwaway PostgreSQL cluster of the harness (a
// pgtool.Cluster, as the tests' and the demo's are), listening on a Unix
// socket only, trust authentication.
type pgCluster struct{ *pgtool.Cluster }

// newPGCluster runs initdb in a new directory under scratch ("" means
// /var/tmp), which the postgres user must be able to enter. settings are
// given to the server beside fsync=off. The caller removes it with remove.
func newPGCluster(ctx context.Context, scratch, bin string, settings map[string]string) (_ *pgCluster, err error) {
	if scratch == "" {
		scratch = "/var/tmp"
	}
	base, err := os.MkdirTemp(scratch, "pgporter-bench-pg-")
	if err != nil {
		return nil, fmt.Errorf("making the cluster's directory: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, os.RemoveAll(base))
		}
	}()
	set := map[string]string{"fsync": "off"}
	maps.Copy(set, settings)
	c, err := pgtool.NewCluster(pgtool.ClusterOptions{BinDir: bin, Base: base, Settings: set})
	if err != nil {
		return nil, err
	}
	if err := c.Initdb(ctx, c.DataDir); err != nil {
		return nil, err
	}
	return &pgCluster{c}, nil
}

func (c *pgCluster) start(ctx context.Context) error { return c.Start(ctx) }

// stop stops the server (fast shutdown, a checkpoint: the data directory is
// then consistent, to be backed up), whatever the run's context.
func (c *pgCluster) stop() error { return c.Stop() }

func (c *pgCluster) remove() error { return os.RemoveAll(c.Base) }

// client runs a client program of the cluster's bin directory against
// database db and returns its standard output.
func (c *pgCluster) client(ctx context.Context, db, name string, args ...string) (string, error) {
	cmd := c.ClientCmd(ctx, db, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", name, err, tail(stderr.String()))
	}
	return string(out), nil
}
