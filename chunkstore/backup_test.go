package chunkstore_test

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// TestBackupPostgres backs up a real, stopped PostgreSQL cluster, checks the
// tree and every byte against the data directory, then backs it up again
// after a small change and checks that only the change was stored.
func TestBackupPostgres(t *testing.T) {
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{})
	c.PgBench(t, "postgres", 1)
	c.Stop(t)
	ctx := context.Background()
	r := openRepo(t, filepath.Join(t.TempDir(), "repo"))

	var calls, over int // Progress is never called concurrently
	rp, err := r.Backup(ctx, c.DataDir, chunkstore.BackupOptions{Progress: func(done, total int64) {
		calls++
		if done > total {
			over++
		}
	}})
	require.NoError(t, err)
	require.Positive(t, calls)
	require.Zero(t, over, "progress past the total")
	t.Logf("first backup: %d files, %d bytes, stored %d", rp.Files, rp.Size, rp.StoredSize)

	ver, err := os.ReadFile(filepath.Join(c.DataDir, "PG_VERSION"))
	require.NoError(t, err)
	require.Equal(t, string(ver[:len(ver)-1]), rp.PGVersion)
	ctl, err := os.ReadFile(filepath.Join(c.DataDir, "global", "pg_control"))
	require.NoError(t, err)
	require.Equal(t, strconv.FormatUint(binary.LittleEndian.Uint64(ctl), 10), rp.SystemID)

	var postgresDB *chunkstore.DBInfo
	for i, db := range rp.Databases {
		if db.OID == 5 { // the postgres database in PostgreSQL 15
			postgresDB = &rp.Databases[i]
		}
	}
	require.NotNil(t, postgresDB, "databases: %+v", rp.Databases)
	require.Greater(t, postgresDB.Size, int64(13<<20), "pgbench scale 1 holds 13 MB of accounts")
	require.GreaterOrEqual(t, len(rp.Databases), 3)

	nodes := checkRestorePoint(t, r, rp, c.DataDir)
	byPath := map[string]chunkstore.Node{}
	for _, n := range nodes {
		byPath[n.Path] = n
	}
	require.Equal(t, chunkstore.NodeFile, byPath["PG_VERSION"].Type)
	require.Equal(t, chunkstore.NodeDir, byPath["base"].Type)
	require.Equal(t, chunkstore.NodeDir, byPath["pg_tblspc"].Type)
	require.Equal(t, int64(8192), byPath["global/pg_control"].Size)
	require.Equal(t, uint32(0o600), byPath["global/pg_control"].Mode)

	latest, err := r.Resolve("latest")
	require.NoError(t, err)
	require.Equal(t, rp.ID, latest.ID)
	_, err = r.Resolve("rp-nope")
	require.ErrorIs(t, err, chunkstore.ErrNoRestorePoint)

	// 100 updated rows and 1% more rows. The updated rows are adjacent:
	// 100 rows scattered over the table's 1640 pages would touch ~40% of
	// its 64 KiB chunks, which is what content-defined chunking of a heap
	// costs, not what this test is about.
	c.Start(t)
	c.Exec(t, "postgres", "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 100")
	c.Exec(t, "postgres", "INSERT INTO pgbench_accounts SELECT aid + 100000, 1, 0, '' FROM generate_series(1, 1000) aid")
	c.Stop(t)
	rp2, err := r.Backup(ctx, c.DataDir, chunkstore.BackupOptions{})
	require.NoError(t, err)
	t.Logf("second backup: %d files, %d bytes, stored %d (%.1f%% of the first)", rp2.Files, rp2.Size, rp2.StoredSize,
		100*float64(rp2.StoredSize)/float64(rp.StoredSize))
	require.LessOrEqual(t, rp2.StoredSize, rp.StoredSize/10)
	checkRestorePoint(t, r, rp2, c.DataDir)

	list, err := r.List()
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, []string{rp.ID, rp2.ID}, []string{list[0].ID, list[1].ID})
}

// Guards against a cancelled backup leaving a restore point behind, and
// checks that the rerun reuses the chunks the cancelled run stored.
func TestBackupPostgresCancel(t *testing.T) {
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{})
	c.PgBench(t, "postgres", 1)
	c.Stop(t)

	fresh := openRepo(t, filepath.Join(t.TempDir(), "fresh"))
	full, err := fresh.Backup(context.Background(), c.DataDir, chunkstore.BackupOptions{})
	require.NoError(t, err)

	r := openRepo(t, filepath.Join(t.TempDir(), "repo"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err = r.Backup(ctx, c.DataDir, chunkstore.BackupOptions{Progress: func(done, total int64) {
		if done > total/2 {
			cancel()
		}
	}})
	require.ErrorIs(t, err, context.Canceled)
	list, err := r.List()
	require.NoError(t, err)
	require.Empty(t, list)

	rp, err := r.Backup(context.Background(), c.DataDir, chunkstore.BackupOptions{})
	require.NoError(t, err)
	t.Logf("full backup stored %d; rerun after cancel stored %d", full.StoredSize, rp.StoredSize)
	require.Less(t, rp.StoredSize, full.StoredSize*3/4)
	list, err = r.List()
	require.NoError(t, err)
	require.Len(t, list, 1)
	checkRestorePoint(t, r, rp, c.DataDir)
}
