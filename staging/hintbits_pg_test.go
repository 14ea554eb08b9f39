package staging

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/testsupport"
)

// TestDropHintWritesOnMount runs a throwaway instance on a backup whose
// table was never read since its load, so that reading it sets hint bits on
// every page, once with DropHintWrites and once without, and once as a hot
// standby (InstanceOptions.Standby, as an export runs it): all read and
// dump what the source holds; with the option the CoW layer holds a
// fraction of what it holds without, and the standby sends no hinted page
// to the mount at all. It guards against dropping a write that matters
// (the results, the dump restored) and against either doing nothing.
func TestDropHintWritesOnMount(t *testing.T) {
	testsupport.RequireFUSE(t)
	ctx := context.Background()
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{
		Auth: "scram-sha-256", SuperPassword: "pw",
		Settings: map[string]string{"autovacuum": "off"},
	})
	// About 10 MB, written without hint bits and never read before the
	// backup: no VACUUM, no autovacuum, no query.
	c.Exec(t, "postgres", "CREATE TABLE loaded AS SELECT g AS id, md5(g::text) AS a, md5((g * 7)::text) AS b FROM generate_series(1, 100000) g")
	c.Stop(t)
	tree, store := treeFromDir(t, c.DataDir)

	const query = "SELECT count(*) || ' ' || sum(id) || ' ' || md5(string_agg(a || b, ',' ORDER BY id)) FROM loaded"
	type outcome struct {
		results []string
		dump    string
		cow     int64 // disk space of the CoW layer
		stats   MountStats
	}
	run := func(t *testing.T, drop, standby bool) outcome {
		var out outcome
		cowDir := filepath.Join(t.TempDir(), "cow")
		m, in, conn := throwawayOnMount(t, c, tree, store, MountOptions{CowDir: cowDir, DropHintWrites: drop}, standby)
		var inRecovery bool
		require.NoError(t, conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery))
		require.Equal(t, standby, inRecovery)
		out.dump = filepath.Join(t.TempDir(), "loaded.dump")
		for i := range 2 {
			var r string
			require.NoError(t, conn.QueryRow(ctx, query).Scan(&r))
			out.results = append(out.results, r)
			f := out.dump + strconv.Itoa(i)
			cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, "pg_dump"), "-Fc", "-t", "loaded", "-f", f, "-d", in.ConnString("postgres", "postgres"))
			cmd.Env = append(os.Environ(), "PGPASSWORD=pw")
			b, err := cmd.CombinedOutput()
			require.NoError(t, err, string(b))
		}
		out.dump += "1"
		// What the reads dirtied reaches the mount now, not at some
		// bgwriter round: the throwaway instance's stop writes nothing.
		// (On the standby, a restartpoint.)
		_, err := conn.Exec(ctx, "CHECKPOINT")
		require.NoError(t, err)
		require.NoError(t, in.Stop(ctx))
		out.stats = m.Stats()
		require.NoError(t, m.ReadErr())
		out.cow = diskUsage(t, cowDir)
		return out
	}
	keep := run(t, false, false)
	drop := run(t, true, false)
	standby := run(t, true, true)
	t.Logf("CoW layer: %d bytes without DropHintWrites, %d with, %d on the standby; %+v", keep.cow, drop.cow, standby.cow, drop.stats)

	c.Start(t)
	want := c.Query(t, "postgres", query)
	require.Equal(t, []string{want, want}, keep.results)
	require.Equal(t, []string{want, want}, drop.results)
	require.Equal(t, []string{want, want}, standby.results)

	require.Zero(t, keep.stats.HintWritesDropped)
	require.Positive(t, drop.stats.HintWritesDropped)
	require.Greater(t, drop.stats.HintBytesDropped, int64(7<<20), "the table's pages are dropped")
	require.Greater(t, keep.cow, int64(7<<20), "without the option the table's pages are copied into the CoW layer")
	require.Less(t, drop.cow*4, keep.cow, "with the option most of them are not")
	require.Less(t, standby.stats.HintBytesDropped, int64(1<<20), "the standby does not write its hinted pages back")
	require.Less(t, standby.cow*4, keep.cow)

	for i, dump := range []string{keep.dump, drop.dump, standby.dump} {
		db := "restored" + strconv.Itoa(i)
		c.CreateDB(t, db)
		cmd := c.ClientCmd(ctx, db, "pg_restore", "--no-owner", "-d", db, dump)
		b, err := cmd.CombinedOutput()
		require.NoError(t, err, string(b))
		require.Equal(t, want, c.Query(t, db, query))
	}
}

// TestStandbyFromMinimalWAL: a backup of a server that ran with
// wal_level=minimal, which pg_control records, still opens as a standby
// (archive recovery refuses to replay WAL of wal_level=minimal; the
// instance's standby has none left to replay), read-only and with the
// source's rows.
func TestStandbyFromMinimalWAL(t *testing.T) {
	testsupport.RequireFUSE(t)
	ctx := context.Background()
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{
		Auth: "scram-sha-256", SuperPassword: "pw",
		Settings: map[string]string{"wal_level": "minimal", "max_wal_senders": "0", "archive_mode": "off"},
	})
	c.Exec(t, "postgres", "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
	c.Stop(t)
	cd, err := exec.Command(filepath.Join(c.BinDir, "pg_controldata"), c.DataDir).Output()
	require.NoError(t, err)
	require.Regexp(t, `wal_level setting: +minimal`, string(cd), "the source ran with wal_level=minimal")
	tree, store := treeFromDir(t, c.DataDir)
	_, _, conn := throwawayOnMount(t, c, tree, store, MountOptions{CowDir: filepath.Join(t.TempDir(), "cow")}, true)
	var inRecovery bool
	var sum int64
	require.NoError(t, conn.QueryRow(ctx, "SELECT pg_is_in_recovery(), (SELECT sum(id) FROM t)").Scan(&inRecovery, &sum))
	require.True(t, inRecovery)
	require.Equal(t, int64(500500), sum)
	_, err = conn.Exec(ctx, "CREATE TABLE u (x int)")
	require.ErrorContains(t, err, "read-only transaction", "a standby takes no writes")
}

// throwawayOnMount mounts tree with o and starts a throwaway instance of c's
// binaries on it (a standby if standby), connected as postgres/pw. The
// instance stops before the unmount, the connection closes before both.
func throwawayOnMount(t *testing.T, c *testsupport.Cluster, tree []chunkstore.Node, store ChunkReader, o MountOptions, standby bool) (*Mounted, *Instance, *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	m, mnt := mountTree(t, tree, store, o)
	for _, d := range []string{filepath.Dir(mnt), filepath.Dir(filepath.Dir(mnt))} {
		require.NoError(t, os.Chmod(d, 0o755))
	}
	base, err := os.MkdirTemp("/var/tmp", "pgporter-instance-test-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	require.NoError(t, os.Chmod(base, 0o755))
	in, err := StartInstance(ctx, InstanceOptions{DataDir: mnt, RunDir: filepath.Join(base, "run"), BinDir: c.BinDir, Throwaway: true, Standby: standby})
	require.NoError(t, err)
	t.Cleanup(func() { _ = in.Stop(ctx) }) // before the unmount: cleanups run last first
	conn, err := in.connect(ctx, "postgres", "postgres", "pw")
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(ctx) })
	return m, in, conn
}

// TestReadWriteInstanceEnv: PGPORTER_READ_WRITE_INSTANCE=1 turns Standby off.
func TestReadWriteInstanceEnv(t *testing.T) {
	require.True(t, InstanceOptions{Standby: true}.standby())
	require.False(t, InstanceOptions{}.standby())
	t.Setenv(ReadWriteInstanceEnv, "1")
	require.False(t, InstanceOptions{Standby: true}.standby())
}

// TestKeepHintWritesEnv: PGPORTER_KEEP_HINT_WRITES=1 turns the option off.
func TestKeepHintWritesEnv(t *testing.T) {
	require.True(t, MountOptions{DropHintWrites: true}.withDefaults().DropHintWrites)
	t.Setenv(KeepHintWritesEnv, "1")
	require.False(t, MountOptions{DropHintWrites: true}.withDefaults().DropHintWrites)
}

// diskUsage is the disk space of the files under dir, as du counts it.
func diskUsage(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	require.NoError(t, filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	}))
	return n
}
