package chunkstore

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/pgcatalog"
	"github.com/pgporter/pgporter/internal/streamfs"
)

// ServerBackupOptions configure Repo.BackupFromServer.
type ServerBackupOptions struct {
	BackupOptions
	// PGBaseBackup returns the path of the pg_basebackup program for the
	// server's major version ("15"). Required: chunkstore does not know
	// where PostgreSQL is installed.
	PGBaseBackup func(major string) (string, error)
	// SpreadCheckpoint lets the server spread the backup's starting
	// checkpoint over checkpoint_completion_target (pg_basebackup -c
	// spread) instead of doing it at once: gentler on a busy server, but the
	// backup may wait minutes before the first byte.
	SpreadCheckpoint bool
}

// ErrNoBaseBackup is matched by the error of BackupFromServer when no
// pg_basebackup program was given.
var ErrNoBaseBackup = errors.New("chunkstore: no pg_basebackup program")

// serverInfo is what BackupFromServer learns from the server before it
// streams the backup.
type serverInfo struct {
	Major     string // "15"
	Version   string // server_version, "15.8 (Debian 15.8-1)"
	Databases []DBInfo
	Host      string // host of the connection; empty for a Unix socket
	// SegmentSize is wal_segment_size in bytes.
	SegmentSize int64
	// Tablespaces outside the data directory.
	Tablespaces []Tablespace
}

// queryServer connects to the server of connString (a libpq keyword/value
// string or URI; libpq's PG* environment variables apply) and reads its
// version and databases: name, OID and pg_database_size, which is 0 for a
// database that refuses connections or that the user may not connect to.
func queryServer(ctx context.Context, connString string) (*serverInfo, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parsing the connection string: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to the server: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	info := &serverInfo{Version: conn.PgConn().ParameterStatus("server_version")}
	if !strings.HasPrefix(cfg.Host, "/") {
		info.Host = cfg.Host
	}
	var num int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&num); err != nil {
		return nil, fmt.Errorf("reading the server version: %w", err)
	}
	if num < 100000 {
		return nil, fmt.Errorf("PostgreSQL %s is not supported: backups from a server need version 10 or later", info.Version)
	}
	info.Major = strconv.Itoa(num / 10000)
	if err := conn.QueryRow(ctx, "SELECT pg_size_bytes(current_setting('wal_segment_size'))").Scan(&info.SegmentSize); err != nil {
		return nil, fmt.Errorf("reading the WAL segment size: %w", err)
	}
	provider, icu := `'c'`, `''`
	if num >= 170000 {
		provider, icu = "datlocprovider::text", "coalesce(datlocale, '')"
	} else if num >= 150000 {
		provider, icu = "datlocprovider::text", "coalesce(daticulocale, '')"
	}
	rows, err := conn.Query(ctx, `SELECT oid, datname,
		CASE WHEN datallowconn AND has_database_privilege(oid, 'CONNECT') THEN pg_database_size(oid) ELSE 0 END,
		datcollate, datctype, `+provider+`, `+icu+`
		FROM pg_database ORDER BY oid`)
	if err != nil {
		return nil, fmt.Errorf("listing databases: %w", err)
	}
	for rows.Next() {
		var db DBInfo
		if err := rows.Scan(&db.OID, &db.Name, &db.Size, &db.Collate, &db.Ctype, &db.Provider, &db.ICULocale); err != nil {
			return nil, fmt.Errorf("listing databases: %w", err)
		}
		info.Databases = append(info.Databases, db)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing databases: %w", err)
	}
	// Each database's C libraries, where a connection to it is allowed.
	for i, db := range info.Databases {
		if db.Size > 0 { // connectable, with CONNECT (above)
			info.Databases[i].Libraries = databaseLibraries(ctx, cfg, db.Name)
		}
	}
	// In-place tablespaces (a directory in pg_tblspc) are part of the data
	// directory's archive; the others have an absolute location.
	rows, err = conn.Query(ctx, `SELECT oid, spcname, pg_tablespace_location(oid) FROM pg_tablespace
		WHERE pg_tablespace_location(oid) LIKE '/%' ORDER BY oid`)
	if err != nil {
		return nil, fmt.Errorf("listing tablespaces: %w", err)
	}
	for rows.Next() {
		var ts Tablespace
		if err := rows.Scan(&ts.OID, &ts.Name, &ts.Location); err != nil {
			return nil, fmt.Errorf("listing tablespaces: %w", err)
		}
		info.Tablespaces = append(info.Tablespaces, ts)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing tablespaces: %w", err)
	}
	return info, nil
}

// databaseLibraries lists database db's C libraries (pgcatalog.CLibraries)
// over a connection like cfg's; nil if it cannot.
func databaseLibraries(ctx context.Context, cfg *pgx.ConnConfig, db string) []pgcatalog.CLibrary {
	c := cfg.Copy()
	c.Database = db
	conn, err := pgx.ConnectConfig(ctx, c)
	if err != nil {
		return nil
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, pgcatalog.CLibraries)
	if err != nil {
		return nil
	}
	libs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[pgcatalog.CLibrary])
	if err != nil {
		return nil
	}
	if libs == nil {
		libs = []pgcatalog.CLibrary{}
	}
	return libs
}

// BackupFromServer takes an online, consistent backup of the running server
// of connString and records it as a new restore point.
//
// It streams `pg_basebackup -D - -Ft -X fetch` (a tar of the data
// directory with the WAL from the backup's start to its end, which recovery
// needs to reach a consistent state, included under pg_wal) and ingests each
// tar entry as Backup ingests a file: the same tree, cut with the same
// chunker and Params, so backups from either source share chunks. The point
// records the server's database names and the tree's size of each; the
// system identifier comes from the streamed global/pg_control. The server
// must allow a replication connection for the user (pg_hba.conf
// "replication" entry, max_wal_senders > 0).
//
// A server with tablespaces outside its data directory sends a tar per
// tablespace, which pg_basebackup cannot write to stdout: it then writes
// them into a FUSE stream directory (package streamfs) whose files arrive
// here as it writes them. Each tablespace's content goes into the tree as
// the directory pg_tblspc/<OID> in place of the server's link to it, and
// tablespace_map is left out (recovery would turn the directories back
// into links); the instance then starts with allow_in_place_tablespaces.
//
// Progress totals are pg_basebackup's estimate once it has one, the sum of
// the database sizes before. If ctx is cancelled pg_basebackup is killed
// and no restore point appears.
func (r *Repo) BackupFromServer(ctx context.Context, connString string, o ServerBackupOptions) (*RestorePoint, error) {
	if o.PGBaseBackup == nil {
		return nil, ErrNoBaseBackup
	}
	bo, err := o.BackupOptions.withDefaults()
	if err != nil {
		return nil, err
	}
	info, err := queryServer(ctx, connString)
	if err != nil {
		return nil, err
	}
	bin, err := o.PGBaseBackup(info.Major)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if o.SourceHost == "" && info.Host != "" && !isLoopback(info.Host) {
		bo.SourceHost = info.Host
	}
	rp := newPoint(start, bo)
	var dbTotal int64
	server := map[uint32]DBInfo{}
	for _, db := range info.Databases {
		dbTotal += db.Size
		server[db.OID] = db
	}
	prog := newProgress(bo.Progress, dbTotal)
	stored0 := r.packBytes()

	checkpoint := "fast"
	if o.SpreadCheckpoint {
		checkpoint = "spread"
	}
	bbctx, kill := context.WithCancel(ctx)
	defer kill()
	argConn, password := hidePassword(connString)
	args := []string{"-d", argConn, "-Ft", "-X", "fetch", "-P", "-c", checkpoint, "-l", "pgporter " + rp.ID}
	var sink *streamfs.Mount
	if len(info.Tablespaces) > 0 {
		// pg_basebackup writes a tar per tablespace, which it cannot do
		// to stdout: it writes them into a stream directory instead.
		if sink, err = mountSink(); err != nil {
			return nil, fmt.Errorf("backing up a server with tablespaces: %w", err)
		}
		defer unmountSink(sink, r.log)
		args = append(args, "-D", sink.Dir(), "--no-sync")
	} else {
		args = append(args, "-D", "-")
	}
	cmd := exec.CommandContext(bbctx, bin, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C") // progress lines are parsed
	if password != "" {
		cmd.Env = append(cmd.Env, "PGPASSWORD="+password)
	}
	var stdout io.Reader
	if sink == nil {
		if stdout, err = cmd.StdoutPipe(); err != nil {
			return nil, err
		}
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting pg_basebackup: %w", err)
	}
	r.log.Info("backup from server started", "restore_point", rp.ID, "server_version", info.Version, "pg_basebackup", bin,
		"tablespaces", len(info.Tablespaces))
	msgs := &tailLines{max: 20}
	stderrDone := make(chan struct{})
	go func() {
		defer close(stderrDone)
		readBaseBackupStderr(stderr, msgs, prog)
	}()

	st := &tarIngest{r: r, o: bo, prog: prog, index: map[string]int{}, tablespaces: map[string]bool{}}
	for _, ts := range info.Tablespaces {
		st.tablespaces[strconv.FormatUint(uint64(ts.OID), 10)] = true
	}
	archives := func(yield func(name string, r io.Reader) error) error { return yield("base.tar", stdout) }
	if sink != nil {
		archives = func(yield func(name string, r io.Reader) error) error {
			return sinkArchives(bbctx, sink, stderrDone, yield)
		}
	}
	ierr := st.run(bbctx, archives, kill)
	if ierr != nil && !errors.Is(ierr, io.ErrUnexpectedEOF) {
		// pg_basebackup may be blocked writing what we no longer read. (A
		// stream that broke off was closed by pg_basebackup, which is
		// exiting: its status tells why.)
		kill()
	}
	<-stderrDone
	werr := cmd.Wait()
	switch {
	case ctx.Err() != nil:
		return nil, fmt.Errorf("backing up from the server: %w", ctx.Err())
	case ierr != nil && (werr == nil || !errors.Is(ierr, io.ErrUnexpectedEOF)):
		// Our failure, and pg_basebackup's exit is our kill; unless the
		// stream broke off, which pg_basebackup's failure explains.
		return nil, fmt.Errorf("backing up from the server: %w", ierr)
	case werr != nil:
		return nil, fmt.Errorf("pg_basebackup failed (%v): %s", werr, msgs.String())
	case st.version == "":
		return nil, fmt.Errorf("pg_basebackup sent no PG_VERSION file: %s", msgs.String())
	}
	rp.PGVersion, rp.SystemID = st.version, st.systemID
	if rp.WAL, err = st.walRange(info.SegmentSize); err != nil {
		return nil, err
	}
	rp.WAL.EndTime = time.Now().UTC()
	rp.Tablespaces = info.Tablespaces
	nodes := st.tree()
	rp.Databases = databases(nodes)
	for i, db := range rp.Databases {
		if s, ok := server[db.OID]; ok {
			s.Size = db.Size // the tree's
			rp.Databases[i] = s
		}
	}
	if err := r.finishPoint(ctx, rp, nodes, stored0); err != nil {
		return nil, err
	}
	r.log.Info("backup complete", "restore_point", rp.ID, "files", rp.Files, "bytes", rp.Size,
		"stored", rp.StoredSize, "seconds", time.Since(start).Seconds())
	return rp, nil
}

// hidePassword returns connString without the password it holds, and that
// password, for pg_basebackup to take from PGPASSWORD: its command line is
// visible to every local user (ps), its environment only to its owner. A
// string it cannot take apart is returned whole.
func hidePassword(connString string) (conn, password string) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return connString, ""
		}
		if u.User != nil {
			if pw, ok := u.User.Password(); ok {
				password = pw
				u.User = url.User(u.User.Username())
			}
		}
		q := u.Query()
		if q.Has("password") {
			password = q.Get("password")
			q.Del("password")
			u.RawQuery = q.Encode()
		}
		if password == "" {
			return connString, ""
		}
		return u.String(), password
	}
	kvs, ok := parseConnKV(connString)
	if !ok {
		return connString, ""
	}
	var b strings.Builder
	for _, kv := range kvs {
		if kv[0] == "password" {
			password = kv[1]
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(kv[0] + "='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(kv[1]) + "'")
	}
	if password == "" {
		return connString, ""
	}
	return b.String(), password
}

// parseConnKV splits a libpq keyword/value connection string: "key = value"
// pairs separated by whitespace, a value bare or single-quoted, with
// backslash escaping the next character in either.
func parseConnKV(s string) (kvs [][2]string, ok bool) {
	i := 0
	skip := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
			i++
		}
	}
	for {
		skip()
		if i == len(s) {
			return kvs, true
		}
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ' ' && s[i] != '\t' {
			i++
		}
		key := s[start:i]
		skip()
		if key == "" || i == len(s) || s[i] != '=' {
			return nil, false
		}
		i++
		skip()
		var v strings.Builder
		quoted := i < len(s) && s[i] == '\''
		if quoted {
			i++
		}
		for {
			if i == len(s) {
				if quoted {
					return nil, false
				}
				break
			}
			c := s[i]
			if !quoted && (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
				break
			}
			if quoted && c == '\'' {
				i++
				break
			}
			if c == '\\' && i+1 < len(s) {
				i++
				c = s[i]
			}
			v.WriteByte(c)
			i++
		}
		kvs = append(kvs, [2]string{key, v.String()})
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// progressLine matches pg_basebackup -P's report, "1234/5678 kB (21%), ...".
var progressLine = regexp.MustCompile(`^\s*(\d+)/(\d+) kB`)

// readBaseBackupStderr reads pg_basebackup's stderr to its end: progress
// reports update prog's total, anything else is kept in msgs for the error
// message. -P ends its reports with \r on a terminal, \n elsewhere.
func readBaseBackupStderr(rd io.Reader, msgs *tailLines, prog *progress) {
	sc := bufio.NewScanner(rd)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	var last int64
	for sc.Scan() {
		line := sc.Text()
		if m := progressLine.FindStringSubmatch(line); m != nil {
			if kb, err := strconv.ParseInt(m[2], 10, 64); err == nil && kb<<10 != last {
				last = kb << 10
				prog.setTotal(last)
			}
			continue
		}
		if strings.TrimSpace(line) != "" {
			msgs.add(line)
		}
	}
	// A line longer than the scanner's buffer stops it: keep reading, or
	// pg_basebackup would block writing to a full pipe.
	_, _ = io.Copy(io.Discard, rd)
}

// tailLines keeps the last max lines added.
type tailLines struct {
	max   int
	mu    sync.Mutex // guards lines
	lines []string
}

func (t *tailLines) add(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == t.max {
		t.lines = t.lines[1:]
	}
	t.lines = append(t.lines, s)
}

func (t *tailLines) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return "(no message)"
	}
	return strings.Join(t.lines, "; ")
}

// tarIngest turns a pg_basebackup tar stream into tree nodes, storing file
// contents as it goes.
type tarIngest struct {
	r    *Repo
	o    BackupOptions
	prog *progress

	nodes    []Node
	index    map[string]int // path → position in nodes
	version  string         // content of PG_VERSION
	systemID string         // from global/pg_control
	label    []byte         // backup_label
	manifest []byte         // backup_manifest

	// tablespaces are the OIDs (as text) of the tablespaces with a tar of
	// their own.
	tablespaces map[string]bool

	mu       sync.Mutex // guards the fields above it and below: archives are read at once
	uid, gid uint32     // the owner of PG_VERSION
}

// chunkJob is a chunk on its way from the stream's reader to a worker.
type chunkJob struct {
	id  chunk.ID
	buf *[]byte // from chunkBufs; the worker returns it
}

// run reads the archives to their ends: each one that archives yields, by
// its file name as pg_basebackup writes it (base.tar, <OID>.tar of a
// tablespace, backup_manifest). One goroutine per archive reads and cuts
// it (usually one at a time) while o.Workers goroutines store the chunks
// (compressing and indexing them is most of a backup's CPU). abort is
// called when a worker fails, to end the stream's producer.
func (t *tarIngest) run(ctx context.Context, archives func(yield func(name string, r io.Reader) error) error, abort func()) error {
	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan chunkJob, 2*t.o.Workers)
	bufs := sync.Pool{New: func() any { b := make([]byte, 0, t.o.Params.Max); return &b }}
	put := func(ctx context.Context, id chunk.ID, data []byte) error {
		b := bufs.Get().(*[]byte)
		*b = append((*b)[:0], data...)
		select {
		case jobs <- chunkJob{id: id, buf: b}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	g.Go(func() error {
		defer close(jobs)
		return archives(func(name string, r io.Reader) error { return t.archive(gctx, name, r, put) })
	})
	for range t.o.Workers {
		g.Go(func() error {
			for j := range jobs {
				// ingestFile computed j.id from these bytes.
				err := t.r.store.putSummed(gctx, j.id, *j.buf)
				bufs.Put(j.buf)
				if err != nil {
					// The reader may be blocked reading the stream. Not
					// when another goroutine failed first (a stream that
					// broke off): pg_basebackup's own exit must say why.
					if gctx.Err() == nil {
						abort()
					}
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// archive ingests one of pg_basebackup's files: the data directory's tar,
// a tablespace's (its entries go under pg_tblspc/<OID>), or the manifest.
// Several may run at once.
func (t *tarIngest) archive(ctx context.Context, name string, r io.Reader, put putFunc) error {
	ch, err := chunk.NewChunker(nil, t.o.Params)
	if err != nil {
		return err
	}
	if name == "backup_manifest" || name == "backup_manifest.tmp" {
		b, err := io.ReadAll(io.LimitReader(r, controlFiles["backup_manifest"]))
		if err != nil {
			return fmt.Errorf("reading backup_manifest: %w", err)
		}
		t.control("backup_manifest", b)
		// Owned as PG_VERSION, once its archive is read (tree).
		n := Node{Path: "backup_manifest", Type: NodeFile, Mode: 0o600, MTime: time.Now().UnixNano()}
		if err := ingestFile(ctx, ch, bytes.NewReader(b), &n, put, t.prog.add); err != nil {
			return err
		}
		t.add(n)
		return nil
	}
	oid, ok := strings.CutSuffix(name, ".tar")
	if ok && oid == "base" {
		return t.read(ctx, ch, r, "", put)
	}
	if !ok || !t.tablespaces[oid] {
		return fmt.Errorf("pg_basebackup wrote %q, which is neither the data directory's tar nor a tablespace's", name)
	}
	return t.read(ctx, ch, r, "pg_tblspc/"+oid, put)
}

func (t *tarIngest) add(n Node) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n.Path == "PG_VERSION" {
		t.uid, t.gid = n.UID, n.GID
	}
	if i, ok := t.index[n.Path]; ok {
		t.nodes[i] = n // the last entry of a name wins, as in tar
	} else {
		t.index[n.Path] = len(t.nodes)
		t.nodes = append(t.nodes, n)
	}
}

// read walks a tar stream, handing file contents to put. Entries go under
// dir (a tablespace's directory) unless it is empty.
func (t *tarIngest) read(ctx context.Context, ch *chunk.Chunker, stream io.Reader, dir string, put putFunc) error {
	tr := tar.NewReader(stream)
	dirAdded := dir == ""
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading pg_basebackup's tar stream: %w", err)
		}
		// pg_basebackup names entries "base/1", "global/" and, for some,
		// "./pg_wal/archive_status/".
		name := path.Clean(hdr.Name)
		if dir != "" {
			if !dirAdded {
				// The tablespace's directory, where the server has a
				// symbolic link.
				t.add(Node{Path: dir, Type: NodeDir, Mode: 0o700, UID: uint32(hdr.Uid), GID: uint32(hdr.Gid), MTime: hdr.ModTime.UnixNano()})
				dirAdded = true
			}
			if name == "." {
				continue
			}
			name = dir + "/" + name
		}
		if !ValidPath(name) {
			return fmt.Errorf("pg_basebackup's tar stream holds a bad path %q", hdr.Name)
		}
		if oid, ok := strings.CutPrefix(name, "pg_tblspc/"); ok && hdr.Typeflag == tar.TypeSymlink && t.tablespaces[oid] {
			continue // the link to a tablespace whose own tar is its directory
		}
		if name == "tablespace_map" && len(t.tablespaces) > 0 {
			// Recovery would replace each tablespace's directory with a
			// link to where the server kept it.
			continue
		}
		n := Node{Path: name, Mode: uint32(hdr.Mode) & 0o777, UID: uint32(hdr.Uid), GID: uint32(hdr.Gid), MTime: hdr.ModTime.UnixNano()}
		switch hdr.Typeflag {
		case tar.TypeDir:
			n.Type = NodeDir
		case tar.TypeSymlink:
			n.Type, n.Target, n.Size = NodeSymlink, hdr.Linkname, int64(len(hdr.Linkname))
		case tar.TypeReg:
			n.Type = NodeFile
			var src io.Reader = tr
			if limit, ok := controlFiles[name]; ok {
				b, err := io.ReadAll(io.LimitReader(tr, limit))
				if err != nil {
					return fmt.Errorf("reading %s: %w", name, err)
				}
				t.control(name, b)
				src = bytes.NewReader(b)
			}
			if err := ingestFile(ctx, ch, src, &n, put, t.prog.add); err != nil {
				return err
			}
		default:
			t.r.log.Warn("skipping tar entry of an unexpected type", "path", name, "type", string(hdr.Typeflag))
			continue
		}
		t.add(n)
	}
	// Read to the end: pg_basebackup pads the archive after its end marker
	// and would block, or fail, on a closed pipe.
	if _, err := io.Copy(io.Discard, stream); err != nil {
		return fmt.Errorf("reading pg_basebackup's tar stream: %w", err)
	}
	return nil
}

// controlFiles are the files of the stream that the restore point reads,
// with the most of each that is read.
var controlFiles = map[string]int64{"PG_VERSION": 1 << 20, "global/pg_control": 1 << 20, "backup_label": 1 << 20, "backup_manifest": 1 << 30}

// control records what the restore point needs from PG_VERSION,
// global/pg_control (the system identifier: its first 8 bytes, as
// systemID reads them from a data directory), backup_label and
// backup_manifest.
func (t *tarIngest) control(name string, b []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch name {
	case "PG_VERSION":
		t.version = strings.TrimSpace(string(b))
	case "global/pg_control":
		if len(b) >= 8 {
			t.systemID = strconv.FormatUint(binary.LittleEndian.Uint64(b), 10)
		}
	case "backup_label":
		t.label = b
	case "backup_manifest":
		t.manifest = b
	}
}

var (
	labelStart    = regexp.MustCompile(`(?m)^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) `)
	labelTimeline = regexp.MustCompile(`(?m)^START TIMELINE: ([0-9]+)$`)
)

// walRange reads the WAL the backup needs: its start and timeline from
// backup_label, its end from backup_manifest's WAL-Ranges (PostgreSQL 13
// and later send one).
func (t *tarIngest) walRange(segSize int64) (*WALRange, error) {
	m := labelStart.FindSubmatch(t.label)
	tl := labelTimeline.FindSubmatch(t.label)
	if m == nil || tl == nil {
		return nil, fmt.Errorf("pg_basebackup sent no backup_label with a start location and timeline")
	}
	timeline, err := strconv.ParseUint(string(tl[1]), 10, 32)
	if err != nil {
		return nil, fmt.Errorf("backup_label's timeline: %w", err)
	}
	w := &WALRange{Timeline: uint32(timeline), Start: string(m[1]), SegmentSize: segSize}
	var man struct {
		WALRanges []struct {
			Timeline uint32 `json:"Timeline"`
			End      string `json:"End-LSN"`
		} `json:"WAL-Ranges"`
	}
	if len(t.manifest) > 0 {
		if err := json.Unmarshal(t.manifest, &man); err != nil {
			return nil, fmt.Errorf("reading backup_manifest: %w", err)
		}
	}
	if n := len(man.WALRanges); n > 0 {
		w.Timeline, w.End = man.WALRanges[n-1].Timeline, man.WALRanges[n-1].End
	}
	if _, err := ParseLSN(w.Start); err != nil {
		return nil, err
	}
	if w.End != "" {
		if _, err := ParseLSN(w.End); err != nil {
			return nil, err
		}
	}
	if segSize <= 0 || segSize&(segSize-1) != 0 {
		return nil, fmt.Errorf("WAL segment size %d is not a power of two", segSize)
	}
	return w, nil
}

// tree returns the nodes sorted by path, with a directory for every parent
// the stream named only implicitly (tar allows that; pg_basebackup sends
// them, but the tree must hold them whatever the producer).
func (t *tarIngest) tree() []Node {
	if i, ok := t.index["backup_manifest"]; ok && t.nodes[i].UID == 0 && t.nodes[i].GID == 0 {
		t.nodes[i].UID, t.nodes[i].GID = t.uid, t.gid // a manifest written beside the tars
	}
	nodes := t.nodes
	for _, n := range t.nodes {
		for dir := path.Dir(n.Path); dir != "."; dir = path.Dir(dir) {
			if _, ok := t.index[dir]; ok {
				break
			}
			t.index[dir] = len(nodes)
			nodes = append(nodes, Node{Path: dir, Type: NodeDir, Mode: 0o700, UID: n.UID, GID: n.GID, MTime: n.MTime})
		}
	}
	sortNodes(nodes)
	return nodes
}

// mountSink mounts a stream directory for pg_basebackup -D.
func mountSink() (*streamfs.Mount, error) {
	dir, err := os.MkdirTemp("", "pgporter-basebackup-")
	if err != nil {
		return nil, err
	}
	m, err := streamfs.MountAt(dir)
	if err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("%w (a backup of a server with tablespaces outside its data directory needs FUSE)", err)
	}
	return m, nil
}

func unmountSink(m *streamfs.Mount, log *slog.Logger) {
	if err := m.Unmount(); err != nil {
		log.Warn("unmounting pg_basebackup's stream directory", "dir", m.Dir(), "err", err)
		return
	}
	os.Remove(m.Dir())
}

// sinkArchives yields each file pg_basebackup writes into sink, each in
// its own goroutine as soon as it is created: pg_basebackup may keep one
// open while it writes the next. It returns once pg_basebackup has exited
// (its stderr ended, stderrDone) and every file is read: a file's creation
// waits for Next, so by then every file it made has been taken.
func sinkArchives(ctx context.Context, sink *streamfs.Mount, stderrDone <-chan struct{}, yield func(name string, r io.Reader) error) error {
	g, gctx := errgroup.WithContext(ctx)
	nctx, cancel := context.WithCancel(gctx)
	defer cancel()
	go func() {
		select {
		case <-stderrDone:
			cancel()
		case <-nctx.Done():
		}
	}()
	for {
		f, err := sink.Next(nctx)
		if err != nil {
			break // pg_basebackup is done (its status says how), or a file failed
		}
		g.Go(func() error {
			defer f.Close()
			if err := yield(f.Name, f); err != nil {
				return err
			}
			// Read to the end: pg_basebackup pads a tar after its end
			// marker, and would fail on a file closed under it.
			_, err := io.Copy(io.Discard, f)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}
