package chunkstore_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/pgcatalog"
	"github.com/pgporter/pgporter/internal/pgtool"
	"github.com/pgporter/pgporter/internal/testsupport"
	"github.com/pgporter/pgporter/staging"
)

// serverPassword has what connection strings must quote.
const serverPassword = `b4 'ck\up`

// replicaSettings are what pg_basebackup needs of the server. They are
// PostgreSQL 15's defaults, written out so the tests do not depend on them;
// initdb's pg_hba.conf has "local replication all" lines.
var replicaSettings = map[string]string{"wal_level": "replica", "max_wal_senders": "4"}

// baseBackupIn returns the pg_basebackup of c's installation.
func baseBackupIn(c *testsupport.Cluster) func(string) (string, error) {
	return func(string) (string, error) { return filepath.Join(c.BinDir, "pg_basebackup"), nil }
}

// recordingBaseBackup returns a PGBaseBackup that runs c's pg_basebackup
// through a script writing its command line to the returned file.
func recordingBaseBackup(t *testing.T, c *testsupport.Cluster) (func(string) (string, error), string) {
	dir := t.TempDir()
	args, script := filepath.Join(dir, "args"), filepath.Join(dir, "pg_basebackup")
	sh := "#!/bin/sh\nprintf '%s\\n' \"$@\" >> " + args + "\nexec " + filepath.Join(c.BinDir, "pg_basebackup") + " \"$@\"\n"
	require.NoError(t, os.WriteFile(script, []byte(sh), 0o755))
	return func(string) (string, error) { return script, nil }, args
}

// writer commits transactions into c until ctx ends: each one inserts a
// ledger row and adds its delta to a pgbench account, so a consistent image
// has sum(abalance) = sum(delta) and ledger ids 1..count without a gap.
type writer struct {
	committed atomic.Int64
	notify    chan struct{} // signalled (without blocking) after each commit
	done      chan error
}

func startWriter(ctx context.Context, t *testing.T, c *testsupport.Cluster) *writer {
	t.Helper()
	c.PgBench(t, "postgres", 1)
	c.Exec(t, "postgres", "CREATE TABLE ledger (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, aid int NOT NULL, delta int NOT NULL)")
	conn, err := pgx.Connect(context.Background(), c.ConnString("postgres"))
	require.NoError(t, err)
	w := &writer{notify: make(chan struct{}, 1), done: make(chan error, 1)}
	go func() {
		defer conn.Close(context.Background())
		for i := 1; ctx.Err() == nil; i++ {
			aid, delta := 1+i*7919%100000, i%17-8
			err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "INSERT INTO ledger (aid, delta) VALUES ($1, $2)", aid, delta); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, "UPDATE pgbench_accounts SET abalance = abalance + $2 WHERE aid = $1", aid, delta)
				return err
			})
			if ctx.Err() != nil {
				break
			}
			if err != nil {
				w.done <- err
				return
			}
			w.committed.Add(1)
			select {
			case w.notify <- struct{}{}:
			default:
			}
		}
		w.done <- nil
	}()
	return w
}

// waitFor blocks until the writer has committed n transactions.
func (w *writer) waitFor(t *testing.T, n int64) {
	timeout := time.NewTimer(time.Minute)
	defer timeout.Stop()
	for w.committed.Load() < n {
		select {
		case <-w.notify:
		case err := <-w.done:
			w.done <- err
			t.Errorf("writer stopped: %v", err)
			return
		case <-timeout.C:
			t.Error("the writer committed nothing for a minute")
			return
		}
	}
}

// materialize writes rp's tree, read back from the repository, to a new
// directory the postgres OS user can reach: owners, modes and mtimes as
// recorded.
func materialize(t *testing.T, r *chunkstore.Repo, rp *chunkstore.RestorePoint) (dataDir, runDir string) {
	t.Helper()
	ctx := context.Background()
	base, err := os.MkdirTemp("/var/tmp", "pgporter-basebackup-test-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	require.NoError(t, os.Chmod(base, 0o755))
	dataDir, runDir = filepath.Join(base, "data"), filepath.Join(base, "run")
	require.NoError(t, os.Mkdir(dataDir, 0o700))
	require.NoError(t, os.Mkdir(runDir, 0o700))
	nodes, err := r.Tree(ctx, rp)
	require.NoError(t, err)
	var buf []byte
	for _, n := range nodes {
		p := filepath.Join(dataDir, filepath.FromSlash(n.Path))
		switch n.Type {
		case chunkstore.NodeDir:
			require.NoError(t, os.Mkdir(p, os.FileMode(n.Mode)))
		case chunkstore.NodeSymlink:
			require.NoError(t, os.Symlink(n.Target, p))
		case chunkstore.NodeFile:
			buf = buf[:0]
			for _, c := range n.Chunks {
				buf, err = r.Store().Get(ctx, c.ID, buf)
				require.NoError(t, err)
			}
			require.NoError(t, os.WriteFile(p, buf, os.FileMode(n.Mode)))
		}
		require.NoError(t, os.Lchown(p, int(n.UID), int(n.GID)))
		if n.Type != chunkstore.NodeSymlink {
			require.NoError(t, os.Chmod(p, os.FileMode(n.Mode)))
		}
		if n.Path == "PG_VERSION" {
			require.NoError(t, os.Chown(dataDir, int(n.UID), int(n.GID)))
		}
	}
	// Directories' mtimes last: creating their entries changed them.
	for i := len(nodes) - 1; i >= 0; i-- {
		n := nodes[i]
		if n.Type != chunkstore.NodeSymlink {
			mt := time.Unix(0, n.MTime)
			require.NoError(t, os.Chtimes(filepath.Join(dataDir, filepath.FromSlash(n.Path)), mt, mt))
		}
	}
	return dataDir, runDir
}

// TestBackupFromServer backs up a server while a writer commits into it,
// restores the point to a directory, checks every file against the backup
// manifest pg_basebackup wrote (pg_verifybackup, which also parses the WAL
// included), starts PostgreSQL on it and checks that it is consistent and
// holds every transaction committed before the backup started. A second
// backup stores only a small fraction of the first.
func TestBackupFromServer(t *testing.T) {
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{
		Auth: "scram-sha-256", SuperPassword: serverPassword, Settings: replicaSettings,
	})
	wctx, stopWriter := context.WithCancel(context.Background())
	defer stopWriter()
	w := startWriter(wctx, t, c)
	ctx := context.Background()
	r := openRepo(t, filepath.Join(t.TempDir(), "repo"))

	w.waitFor(t, 100)
	before := w.committed.Load()
	var calls, over int
	var overlapped bool
	recording, argsFile := recordingBaseBackup(t, c)
	rp, err := r.BackupFromServer(ctx, c.ConnString("postgres"), chunkstore.ServerBackupOptions{
		PGBaseBackup: recording,
		BackupOptions: chunkstore.BackupOptions{Progress: func(done, total int64) {
			calls++
			if done > total {
				over++
			}
			if done > 0 && !overlapped {
				// The stream is held until more transactions commit:
				// the backup runs concurrently with writes.
				overlapped = true
				w.waitFor(t, w.committed.Load()+50)
			}
		}},
	})
	require.NoError(t, err)
	stopWriter()
	require.NoError(t, <-w.done)
	after := w.committed.Load()
	t.Logf("backup: %d files, %d bytes, stored %d; %d transactions committed before it, %d by its end",
		rp.Files, rp.Size, rp.StoredSize, before, after)
	require.Positive(t, calls)
	require.Zero(t, over, "progress past the total")
	require.Greater(t, after, before+49, "the writer ran during the backup")

	require.Equal(t, "15", rp.PGVersion[:2])
	require.Equal(t, c.Query(t, "postgres", "SELECT system_identifier::text FROM pg_control_system()"), rp.SystemID)
	// The WAL the backup spans, as the server's LSNs compare.
	require.NotNil(t, rp.WAL)
	require.Equal(t, uint32(1), rp.WAL.Timeline)
	require.Equal(t, int64(16<<20), rp.WAL.SegmentSize)
	require.Equal(t, "t", c.Query(t, "postgres", "SELECT '"+rp.WAL.Start+"'::pg_lsn < '"+rp.WAL.End+"'::pg_lsn AND '"+rp.WAL.End+"'::pg_lsn <= pg_current_wal_lsn()"),
		"start %s, end %s", rp.WAL.Start, rp.WAL.End)
	host, _ := os.Hostname()
	require.Equal(t, host, rp.SourceHost)
	names := map[string]chunkstore.DBInfo{}
	for _, db := range rp.Databases {
		names[db.Name] = db
	}
	require.Contains(t, names, "template0")
	require.Contains(t, names, "template1")
	require.Equal(t, uint32(5), names["postgres"].OID)
	require.Greater(t, names["postgres"].Size, int64(13<<20), "pgbench scale 1 holds 13 MB of accounts")

	nodes, err := r.Tree(ctx, rp)
	require.NoError(t, err)
	byPath := map[string]chunkstore.Node{}
	for _, n := range nodes {
		byPath[n.Path] = n
	}
	for _, p := range []string{"backup_label", "backup_manifest", "global/pg_control", "pg_wal/archive_status"} {
		require.Contains(t, byPath, p)
	}
	require.Equal(t, uint32(0o600), byPath["global/pg_control"].Mode)
	require.NotContains(t, byPath, "postmaster.pid")

	dataDir, runDir := materialize(t, r, rp)
	out, err := exec.Command(filepath.Join(c.BinDir, "pg_verifybackup"), dataDir).CombinedOutput()
	require.NoError(t, err, "pg_verifybackup: %s", out)

	in, err := staging.StartInstance(ctx, staging.InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir})
	require.NoError(t, err)
	defer in.Stop(ctx)
	conn, err := pgx.Connect(ctx, in.ConnString("postgres", "postgres")+" password="+pgtool.Quote(serverPassword))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var rows, maxID, sumDelta, sumBalance int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*), coalesce(max(id), 0), coalesce(sum(delta), 0),
		(SELECT sum(abalance) FROM pgbench_accounts) FROM ledger`).Scan(&rows, &maxID, &sumDelta, &sumBalance))
	t.Logf("restored: %d ledger rows", rows)
	require.GreaterOrEqual(t, rows, before, "a transaction committed before the backup is missing")
	require.LessOrEqual(t, rows, after)
	require.Equal(t, rows, maxID, "ledger ids have a gap")
	require.Equal(t, sumDelta, sumBalance, "ledger and accounts disagree")
	var inRecovery bool
	require.NoError(t, conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery))
	require.False(t, inRecovery)
	conn.Close(ctx)
	require.NoError(t, in.Stop(ctx))

	// The writer's updates, scattered over pgbench_accounts, changed most of
	// its chunks since the first backup's checkpoint; a second backup takes
	// them. Then 100 updated rows and 1% more rows: the third stores little.
	rp2, err := r.BackupFromServer(ctx, c.ConnString("postgres"), chunkstore.ServerBackupOptions{PGBaseBackup: baseBackupIn(c)})
	require.NoError(t, err)
	c.Exec(t, "postgres", "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 100")
	c.Exec(t, "postgres", "INSERT INTO pgbench_accounts SELECT aid + 100000, 1, 0, '' FROM generate_series(1, 1000) aid")
	uri := "postgresql://postgres:" + url.PathEscape(serverPassword) + "@/postgres?host=" + url.QueryEscape(c.SocketDir) +
		"&port=" + strconv.Itoa(c.Port)
	rp3, err := r.BackupFromServer(ctx, uri, chunkstore.ServerBackupOptions{PGBaseBackup: recording})
	require.NoError(t, err)
	// Guards against the password reaching pg_basebackup's command line,
	// which every local user can read; it went through PGPASSWORD.
	args, err := os.ReadFile(argsFile)
	require.NoError(t, err)
	require.Contains(t, string(args), "user=")
	require.Contains(t, string(args), "postgresql://postgres@")
	for _, leak := range []string{"b4 ", "b4%20", "b4+", "'ck"} { // not "b4" alone: it can occur in a restore point ID
		require.NotContains(t, string(args), leak)
	}
	t.Logf("second backup: stored %d; third, after a small change: %d files, %d bytes, stored %d (%.1f%% of the first)",
		rp2.StoredSize, rp3.Files, rp3.Size, rp3.StoredSize, 100*float64(rp3.StoredSize)/float64(rp.StoredSize))
	require.LessOrEqual(t, rp3.StoredSize, rp.StoredSize/10)
	require.Equal(t, rp.SystemID, rp3.SystemID)
}

// TestBaseBackupMatchesDataDir checks that a backup from a server and one of
// its data directory, once stopped, record the same files the same way:
// what the two sources share is what makes their chunks shared.
func TestBaseBackupMatchesDataDir(t *testing.T) {
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Settings: replicaSettings})
	c.PgBench(t, "postgres", 1)
	ctx := context.Background()
	r := openRepo(t, filepath.Join(t.TempDir(), "repo"))
	rp, err := r.BackupFromServer(ctx, c.ConnString("postgres"), chunkstore.ServerBackupOptions{PGBaseBackup: baseBackupIn(c)})
	require.NoError(t, err)
	c.Stop(t)
	rp2, err := r.Backup(ctx, c.DataDir, chunkstore.BackupOptions{})
	require.NoError(t, err)
	t.Logf("from the server: %d bytes, stored %d; then the data directory: %d bytes, stored %d",
		rp.Size, rp.StoredSize, rp2.Size, rp2.StoredSize)
	require.Equal(t, rp.SystemID, rp2.SystemID)
	require.Equal(t, rp.PGVersion, rp2.PGVersion)

	fromServer, err := r.Tree(ctx, rp)
	require.NoError(t, err)
	fromDir, err := r.Tree(ctx, rp2)
	require.NoError(t, err)
	dir := map[string]chunkstore.Node{}
	for _, n := range fromDir {
		dir[n.Path] = n
	}
	// Relation files that nothing wrote since the backup's checkpoint are
	// the same bytes in both; base/1 (template1) is one such directory.
	var same int
	for _, n := range fromServer {
		d, ok := dir[n.Path]
		if !ok || n.Type != chunkstore.NodeFile || filepath.Dir(n.Path) != "base/1" {
			continue
		}
		require.Equal(t, d.Mode, n.Mode, n.Path)
		require.Equal(t, d.UID, n.UID, n.Path)
		require.Equal(t, d.GID, n.GID, n.Path)
		require.Equal(t, d.MTime/1e9, n.MTime/1e9, n.Path) // tar keeps seconds
		require.Equal(t, d.Chunks, n.Chunks, n.Path)
		same++
	}
	require.Greater(t, same, 200)

	// Outside pg_wal (whose segments differ: the server went on writing
	// WAL), nearly every byte of the data directory is in chunks the server
	// backup stored.
	held := map[chunk.ID]bool{}
	for _, n := range fromServer {
		for _, c := range n.Chunks {
			held[c.ID] = true
		}
	}
	var total, shared int64
	for _, n := range fromDir {
		if strings.HasPrefix(n.Path, "pg_wal/") {
			continue
		}
		for _, c := range n.Chunks {
			total += int64(c.Len)
			if held[c.ID] {
				shared += int64(c.Len)
			}
		}
	}
	t.Logf("outside pg_wal, %d of the data directory's %d bytes were in the server backup's chunks", shared, total)
	require.Greater(t, shared, total*9/10)
}

// Guards against a cancelled backup from a server leaving a restore point,
// or a pg_basebackup process, behind.
func TestBackupFromServerCancel(t *testing.T) {
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Settings: replicaSettings})
	c.PgBench(t, "postgres", 1)
	r := openRepo(t, filepath.Join(t.TempDir(), "repo"))
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := r.BackupFromServer(ctx, c.ConnString("postgres"), chunkstore.ServerBackupOptions{
		PGBaseBackup: baseBackupIn(c),
		BackupOptions: chunkstore.BackupOptions{Progress: func(done, total int64) {
			if done > 4<<20 {
				cancel()
			}
		}},
	})
	require.ErrorIs(t, err, context.Canceled)
	list, err := r.List()
	require.NoError(t, err)
	require.Empty(t, list)

	rp, err := r.BackupFromServer(context.Background(), c.ConnString("postgres"), chunkstore.ServerBackupOptions{PGBaseBackup: baseBackupIn(c)})
	require.NoError(t, err)
	list, err = r.List()
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, rp.ID, list[0].ID)
}

func TestBackupFromServerErrors(t *testing.T) {
	testsupport.RequirePG(t)
	ctx := context.Background()
	r := openRepo(t, filepath.Join(t.TempDir(), "repo"))
	noServer := "host=" + t.TempDir() + " port=1 user=postgres connect_timeout=5"
	bin := func(string) (string, error) { return "/nonexistent/pg_basebackup", nil }

	_, err := r.BackupFromServer(ctx, noServer, chunkstore.ServerBackupOptions{})
	require.ErrorIs(t, err, chunkstore.ErrNoBaseBackup)
	_, err = r.BackupFromServer(ctx, noServer, chunkstore.ServerBackupOptions{PGBaseBackup: bin})
	require.ErrorContains(t, err, "connecting to the server")
	_, err = r.BackupFromServer(ctx, "host='unterminated", chunkstore.ServerBackupOptions{PGBaseBackup: bin})
	require.ErrorContains(t, err, "parsing the connection string")

	// The server answers queries but refuses replication: pg_basebackup's
	// own message reaches the caller.
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Settings: map[string]string{"max_wal_senders": "0"}})
	_, err = r.BackupFromServer(ctx, c.ConnString("postgres"), chunkstore.ServerBackupOptions{PGBaseBackup: baseBackupIn(c)})
	require.ErrorContains(t, err, "pg_basebackup failed")
	require.ErrorContains(t, err, "max_wal_senders")
	notFound := errors.New("no such major")
	_, err = r.BackupFromServer(ctx, c.ConnString("postgres"), chunkstore.ServerBackupOptions{
		PGBaseBackup: func(major string) (string, error) {
			_, err := strconv.Atoi(major)
			require.NoError(t, err)
			return "", notFound
		},
	})
	require.ErrorIs(t, err, notFound)

	list, err := r.List()
	require.NoError(t, err)
	require.Empty(t, list)
}

// fakeBaseBackup returns a PGBaseBackup whose program writes the tar
// entries to stdout (only the first cut bytes, if cut > 0), then exits with
// code.
func fakeBaseBackup(t *testing.T, code, cut int, entries ...tarEntry) func(string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o600, Uid: 101, Gid: 102, ModTime: time.Unix(1700000000, 0),
			Linkname: e.link, Size: int64(len(e.data))}
		if e.typ == tar.TypeDir {
			h.Mode = 0o700
		}
		require.NoError(t, tw.WriteHeader(h))
		_, err := tw.Write(e.data)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	b.Write(make([]byte, 10240)) // what pg_basebackup pads with
	out := filepath.Join(dir, "stream.tar")
	if cut > 0 {
		b.Truncate(cut)
	}
	require.NoError(t, os.WriteFile(out, b.Bytes(), 0o644))
	script := filepath.Join(dir, "pg_basebackup")
	sh := fmt.Sprintf("#!/bin/sh\ncat %s\necho 'pg_basebackup: error: fake failure' >&2\nexit %d\n", out, code)
	require.NoError(t, os.WriteFile(script, []byte(sh), 0o755))
	return func(string) (string, error) { return script, nil }
}

type tarEntry struct {
	name string
	typ  byte
	data []byte
	link string
}

// Guards the tree invariants against what a tar stream may hold that a
// directory walk never gives: "./" prefixes, parents never named, a name
// repeated, entry types a data directory does not have, paths escaping it.
func TestBaseBackupTarStream(t *testing.T) {
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{})
	ctx := context.Background()
	r := openRepo(t, filepath.Join(t.TempDir(), "repo"))
	ctl := make([]byte, 8192)
	binary.LittleEndian.PutUint64(ctl, 7311111111111111111)
	rel := bytes.Repeat([]byte("relation"), 100000)
	good := []tarEntry{
		{name: "PG_VERSION", typ: tar.TypeReg, data: []byte("15\n")},
		{name: "./global/", typ: tar.TypeDir},
		{name: "global/pg_control", typ: tar.TypeReg, data: ctl},
		{name: "base/5/16384", typ: tar.TypeReg, data: rel},
		{name: "./pg_tblspc/16400", typ: tar.TypeSymlink, link: "/srv/ts"},
		{name: "twice", typ: tar.TypeReg, data: []byte("first")},
		{name: "base/5/hard", typ: tar.TypeLink, link: "base/5/16384"},
		{name: "twice", typ: tar.TypeReg, data: []byte("second")},
		{name: "backup_label", typ: tar.TypeReg, data: []byte("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n")},
	}
	rp, err := r.BackupFromServer(ctx, c.ConnString("postgres"), chunkstore.ServerBackupOptions{PGBaseBackup: fakeBaseBackup(t, 0, 0, good...)})
	require.NoError(t, err)
	require.Equal(t, "15", rp.PGVersion)
	require.Equal(t, "7311111111111111111", rp.SystemID)
	// The name and locale from the server, the size from the tree.
	collate := c.Query(t, "postgres", "SELECT datcollate FROM pg_database WHERE oid = 5")
	require.Len(t, rp.Databases, 1)
	libs := rp.Databases[0].Libraries
	require.Contains(t, libs, pgcatalog.CLibrary{Probin: "$libdir/plpgsql", Extensions: "plpgsql"}, "the C libraries of its functions")
	rp.Databases[0].Libraries = nil
	require.Equal(t, []chunkstore.DBInfo{{Name: "postgres", OID: 5, Size: int64(len(rel)), Collate: collate,
		Ctype: c.Query(t, "postgres", "SELECT datctype FROM pg_database WHERE oid = 5"), Provider: "c"}}, rp.Databases)
	require.Equal(t, 5, rp.Files)
	nodes, err := r.Tree(ctx, rp)
	require.NoError(t, err)
	var paths []string
	byPath := map[string]chunkstore.Node{}
	for _, n := range nodes {
		paths = append(paths, n.Path)
		byPath[n.Path] = n
	}
	require.Equal(t, []string{"PG_VERSION", "backup_label", "base", "base/5", "base/5/16384", "global", "global/pg_control",
		"pg_tblspc", "pg_tblspc/16400", "twice"}, paths)
	require.Equal(t, &chunkstore.WALRange{Timeline: 1, Start: "0/2000028", SegmentSize: 16 << 20, EndTime: rp.WAL.EndTime}, rp.WAL, "no manifest: no end")
	require.Equal(t, chunkstore.NodeDir, byPath["base/5"].Type)
	require.Equal(t, uint32(0o700), byPath["base/5"].Mode)
	require.Equal(t, "/srv/ts", byPath["pg_tblspc/16400"].Target)
	n := byPath["twice"]
	require.Equal(t, int64(len("second")), n.Size)
	got, err := r.Store().Get(ctx, n.Chunks[0].ID, nil)
	require.NoError(t, err)
	require.Equal(t, "second", string(got))
	require.Equal(t, uint32(101), n.UID)
	require.Equal(t, uint32(102), n.GID)
	require.Equal(t, int64(1700000000)*1e9, n.MTime)

	// Each of these leaves no restore point.
	for _, tc := range []struct {
		name      string
		code, cut int
		entries   []tarEntry
		err       string
	}{
		{"escaping path", 0, 0, append(good[:1:1], tarEntry{name: "../etc/passwd", typ: tar.TypeReg, data: []byte("x")}), `bad path "../etc/passwd"`},
		{"absolute path", 0, 0, append(good[:1:1], tarEntry{name: "/etc/passwd", typ: tar.TypeReg}), `bad path "/etc/passwd"`},
		{"failed exit", 1, 0, good, "pg_basebackup failed (exit status 1): pg_basebackup: error: fake failure"},
		// The stream breaks off inside base/5/16384: pg_basebackup's
		// message, not the tar reader's, says why.
		{"broken off", 1, 100000, good, "pg_basebackup failed (exit status 1): pg_basebackup: error: fake failure"},
		{"broken off, exit 0", 0, 100000, good, "unexpected EOF"},
		{"no PG_VERSION", 0, 0, good[1:], "sent no PG_VERSION"},
		{"no backup_label", 0, 0, good[:len(good)-1], "sent no backup_label"},
		{"file as parent", 0, 0, append(slices.Clone(good), tarEntry{name: "twice/x", typ: tar.TypeReg}), "no parent directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.BackupFromServer(ctx, c.ConnString("postgres"), chunkstore.ServerBackupOptions{PGBaseBackup: fakeBaseBackup(t, tc.code, tc.cut, tc.entries...)})
			require.ErrorContains(t, err, tc.err)
		})
	}
	list, err := r.List()
	require.NoError(t, err)
	require.Len(t, list, 1)
}

// TestBackupFromServerTablespaces backs up a server with a tablespace
// outside its data directory: the tablespace's content is in the tree as
// the directory pg_tblspc/<OID>, where the server had a link, and the
// restore point names it. The restored copy passes pg_verifybackup and a
// server started on it reads the table kept in the tablespace.
func TestBackupFromServerTablespaces(t *testing.T) {
	testsupport.RequireFUSE(t)
	c := testsupport.NewCluster(t, testsupport.ClusterOptions{Auth: "scram-sha-256", SuperPassword: serverPassword, Settings: replicaSettings})
	tsDir := filepath.Join(c.Base, "ts")
	require.NoError(t, os.Mkdir(tsDir, 0o700))
	require.NoError(t, c.Chown(tsDir))
	c.Exec(t, "postgres", "CREATE TABLESPACE ts LOCATION '"+tsDir+"'")
	c.Exec(t, "postgres", "CREATE TABLE far(id int, v text) TABLESPACE ts; INSERT INTO far SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
	oid := c.Query(t, "postgres", "SELECT oid FROM pg_tablespace WHERE spcname = 'ts'")

	ctx := context.Background()
	r := openRepo(t, filepath.Join(t.TempDir(), "repo"))
	rp, err := r.BackupFromServer(ctx, c.ConnString("postgres"), chunkstore.ServerBackupOptions{PGBaseBackup: baseBackupIn(c)})
	require.NoError(t, err)
	require.Len(t, rp.Tablespaces, 1)
	require.Equal(t, "ts", rp.Tablespaces[0].Name)
	require.Equal(t, tsDir, rp.Tablespaces[0].Location)
	require.Equal(t, oid, strconv.FormatUint(uint64(rp.Tablespaces[0].OID), 10))
	require.NotNil(t, rp.WAL)
	require.NotEmpty(t, rp.WAL.End, "the manifest, written beside the tars, was read")

	nodes, err := r.Tree(ctx, rp)
	require.NoError(t, err)
	byPath := map[string]chunkstore.Node{}
	var inTablespace int64
	for _, n := range nodes {
		byPath[n.Path] = n
		if strings.HasPrefix(n.Path, "pg_tblspc/"+oid+"/") {
			inTablespace += n.Size
		}
	}
	require.Equal(t, chunkstore.NodeDir, byPath["pg_tblspc/"+oid].Type, "the tablespace is a directory in place of the link")
	require.Greater(t, inTablespace, int64(2<<20), "the table's pages are in the tablespace's directory")
	require.Contains(t, byPath, "backup_manifest")

	require.NotContains(t, byPath, "tablespace_map", "recovery would make the tablespace a link again")

	dataDir, runDir := materialize(t, r, rp)
	out, err := exec.Command(filepath.Join(c.BinDir, "pg_verifybackup"), "-i", "tablespace_map", dataDir).CombinedOutput()
	require.NoError(t, err, "pg_verifybackup: %s", out)
	in, err := staging.StartInstance(ctx, staging.InstanceOptions{DataDir: dataDir, RunDir: runDir, BinDir: c.BinDir})
	require.NoError(t, err)
	defer in.Stop(ctx)
	conn, err := pgx.Connect(ctx, in.ConnString("postgres", "postgres")+" password="+pgtool.Quote(serverPassword))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	var sum string
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM far").Scan(&n, &sum))
	require.Equal(t, 50000, n)
	require.Equal(t, c.Query(t, "postgres", "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM far"), sum)
}
