package chunkstore

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/internal/pgtool"
)

// BackupOptions configure Repo.Backup. The zero value is ready to use.
type BackupOptions struct {
	// Params cut the files; zero means DefaultParams. Backups that share
	// chunks must use the same Params.
	Params chunk.Params
	// SourceHost is recorded in the restore point; empty means os.Hostname.
	SourceHost string
	// Progress, if set, is called with plain bytes read so far and the
	// total, never concurrently with itself. The total may change while a
	// backup runs (a server's estimate arrives late) but is never below
	// done.
	Progress func(done, total int64)
	// Workers chunk files in parallel; 0 means min(GOMAXPROCS, 4).
	Workers int
}

// withDefaults fills the zero fields of o and checks its Params.
func (o BackupOptions) withDefaults() (BackupOptions, error) {
	o.Params = o.Params.WithDefaults()
	if err := o.Params.Validate(); err != nil {
		return o, err
	}
	if o.Workers <= 0 {
		o.Workers = min(runtime.GOMAXPROCS(0), 4)
	}
	if o.SourceHost == "" {
		o.SourceHost, _ = os.Hostname()
	}
	return o, nil
}

// DataDirVersion returns the PostgreSQL major version of the data directory
// pgdata (its PG_VERSION), or an error if pgdata is not one: a caller checks
// it before it creates a repository for nothing.
func DataDirVersion(pgdata string) (string, error) {
	ver, err := os.ReadFile(filepath.Join(pgdata, "PG_VERSION"))
	if err != nil {
		return "", fmt.Errorf("%s is not a PostgreSQL data directory: %w", pgdata, err)
	}
	return strings.TrimSpace(string(ver)), nil
}

// Backup ingests the PostgreSQL data directory pgdata (of a stopped cluster,
// or a crash-consistent copy) and records it as a new restore point.
//
// It walks pgdata without following symlinks (pg_tblspc entries are stored
// as symlinks, so tablespaces outside pgdata are not part of the backup),
// keeps every directory, regular file and symlink as it is, and skips
// sockets, pipes and devices. Files are cut with o.Params; chunks the store
// already holds are not stored again, so a later backup stores only what
// changed. If ctx is cancelled no restore point appears; the chunks already
// flushed are reused by the next run.
func (r *Repo) Backup(ctx context.Context, pgdata string, o BackupOptions) (*RestorePoint, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	ver, err := DataDirVersion(pgdata)
	if err != nil {
		return nil, err
	}
	rp := newPoint(start, o)
	rp.PGVersion = ver
	if rp.SystemID, err = systemID(ctx, pgdata, rp.PGVersion); err != nil {
		return nil, err
	}
	nodes, total, err := walkDataDir(pgdata)
	if err != nil {
		return nil, err
	}
	stored0 := r.packBytes()

	prog := newProgress(o.Progress, total)
	g, gctx := errgroup.WithContext(ctx)
	files := make(chan int)
	g.Go(func() error {
		defer close(files)
		for i := range nodes {
			if nodes[i].Type != NodeFile {
				continue
			}
			select {
			case files <- i:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	// Readers cut and hash files; storers compress and store the chunks.
	// A file is read by one goroutine, and the largest (a 1 GB relation
	// segment) would otherwise keep one core busy alone at the end.
	put, closeStorers := r.startStorers(gctx, g, o)
	var readers sync.WaitGroup
	var vanishedMu sync.Mutex // guards vanished
	vanished := map[int]bool{}
	for range o.Workers {
		readers.Add(1)
		g.Go(func() error {
			defer readers.Done()
			ch, err := chunk.NewChunker(nil, o.Params)
			if err != nil {
				return err
			}
			for i := range files {
				err := backupFile(gctx, ch, filepath.Join(pgdata, filepath.FromSlash(nodes[i].Path)), &nodes[i], put, prog.add)
				if errors.Is(err, fs.ErrNotExist) {
					// Removed since the walk (a copy of a live directory):
					// PostgreSQL recreates or does not need what it dropped.
					r.log.Warn("file vanished during backup", "path", nodes[i].Path)
					vanishedMu.Lock()
					vanished[i] = true
					vanishedMu.Unlock()
					continue
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		readers.Wait()
		closeStorers()
		return nil
	})
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("backing up %s: %w", pgdata, err)
	}
	if len(vanished) > 0 {
		kept := nodes[:0]
		for i, n := range nodes {
			if !vanished[i] {
				kept = append(kept, n)
			}
		}
		nodes = kept
	}
	rp.Databases = databases(nodes)
	if err := r.finishPoint(ctx, rp, nodes, stored0); err != nil {
		return nil, err
	}
	r.log.Info("backup complete", "restore_point", rp.ID, "files", rp.Files, "bytes", rp.Size,
		"stored", rp.StoredSize, "seconds", time.Since(start).Seconds())
	return rp, nil
}

// newPoint starts the restore point of a backup begun at start.
func newPoint(start time.Time, o BackupOptions) *RestorePoint {
	return &RestorePoint{
		ID:         newPointID(start),
		Time:       start.UTC(),
		SourceHost: o.SourceHost,
		Params:     o.Params,
		Format:     pointFormat,
	}
}

// finishPoint counts nodes into rp, stores their tree, flushes the store and
// only then makes rp visible: every source of a backup ends here, so a
// listed restore point never names a chunk that is not durable. stored0 is
// packBytes before the backup stored anything.
func (r *Repo) finishPoint(ctx context.Context, rp *RestorePoint, nodes []Node, stored0 int64) error {
	rp.Files, rp.Size = 0, 0
	for _, n := range nodes {
		if n.Type == NodeFile {
			rp.Files++
			rp.Size += n.Size
		}
	}
	var err error
	if rp.Tree, err = PutTree(ctx, r.store, nodes, rp.Params); err != nil {
		return err
	}
	if err := r.store.Flush(ctx); err != nil {
		return fmt.Errorf("flushing the store: %w", err)
	}
	rp.StoredSize = max(r.packBytes()-stored0, 0)
	if err := ctx.Err(); err != nil {
		return err
	}
	return r.writePoint(ctx, rp)
}

// progress serialises BackupOptions.Progress and keeps its promise that
// done never exceeds total, whatever the source estimated.
type progress struct {
	fn          func(done, total int64)
	mu          sync.Mutex // guards done, total and calls of fn
	done, total int64
}

func newProgress(fn func(done, total int64), total int64) *progress {
	p := &progress{fn: fn, total: total}
	p.add(0)
	return p
}

// add counts n more bytes read.
func (p *progress) add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	p.call()
}

// setTotal replaces the estimate of the bytes to read.
func (p *progress) setTotal(total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total = total
	p.call()
}

func (p *progress) call() {
	p.total = max(p.total, p.done)
	if p.fn != nil {
		p.fn(p.done, p.total)
	}
}

// putFunc stores one chunk: Store.Put, or a hand-off to workers that call
// it. It must not retain data after it returns.
type putFunc func(ctx context.Context, id chunk.ID, data []byte) error

// startStorers starts o.Workers goroutines in g that store the chunks
// handed to the returned put, which copies them (so the caller's buffer is
// free when it returns) and blocks while the storers are busy. closeStorers
// is called once no put is in progress nor will be: the storers then finish
// what they hold and return. A storer's failure cancels gctx, which ends
// puts waiting for room.
func (r *Repo) startStorers(gctx context.Context, g *errgroup.Group, o BackupOptions) (put putFunc, closeStorers func()) {
	jobs := make(chan chunkJob, 2*o.Workers)
	bufs := sync.Pool{New: func() any { b := make([]byte, 0, o.Params.Max); return &b }}
	put = func(ctx context.Context, id chunk.ID, data []byte) error {
		b := bufs.Get().(*[]byte)
		*b = append((*b)[:0], data...)
		select {
		case jobs <- chunkJob{id: id, buf: b}:
			return nil
		case <-ctx.Done():
			bufs.Put(b)
			return ctx.Err()
		}
	}
	for range o.Workers {
		g.Go(func() error {
			for j := range jobs {
				// The reader computed j.id from these bytes.
				err := r.store.putSummed(gctx, j.id, *j.buf)
				bufs.Put(j.buf)
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	return put, func() { close(jobs) }
}

// backupFile chunks one file into put and sets n's Size and Chunks to what
// was read (a file of a live copy may have changed since the walk).
func backupFile(ctx context.Context, ch *chunk.Chunker, name string, n *Node, put putFunc, report func(int64)) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return ingestFile(ctx, ch, f, n, put, report)
}

// ingestFile cuts the content of one file, read from src, with ch, hands
// each chunk to put, and sets n's Size and Chunks to what was read. Both
// sources of a backup, a data directory and a pg_basebackup stream, store
// their files through it, so both cut and record files the same way.
func ingestFile(ctx context.Context, ch *chunk.Chunker, src io.Reader, n *Node, put putFunc, report func(int64)) error {
	ch.Reset(src)
	n.Chunks = n.Chunks[:0]
	var size int64
	for {
		c, err := ch.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", n.Path, err)
		}
		id := chunk.Sum(c.Data)
		if err := put(ctx, id, c.Data); err != nil {
			return err
		}
		n.Chunks = append(n.Chunks, ChunkRef{ID: id, Len: uint32(len(c.Data))})
		size += int64(len(c.Data))
		report(int64(len(c.Data)))
	}
	n.Size = size
	return nil
}

// walkDataDir lists pgdata as tree nodes, sorted by path, with the total
// size of its regular files.
func walkDataDir(pgdata string) ([]Node, int64, error) {
	var (
		nodes []Node
		total int64
	)
	err := filepath.WalkDir(pgdata, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(pgdata, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		n := Node{Path: filepath.ToSlash(rel), Mode: uint32(fi.Mode().Perm()), MTime: fi.ModTime().UnixNano()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n.UID, n.GID = st.Uid, st.Gid
		}
		switch {
		case fi.IsDir():
			n.Type = NodeDir
		case fi.Mode().IsRegular():
			n.Type, n.Size = NodeFile, fi.Size()
			total += fi.Size()
		case fi.Mode()&fs.ModeSymlink != 0:
			if n.Target, err = os.Readlink(p); err != nil {
				return err
			}
			n.Type, n.Size = NodeSymlink, int64(len(n.Target))
		default:
			return nil // socket, pipe, device: nothing PostgreSQL needs back
		}
		nodes = append(nodes, n)
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("walking %s: %w", pgdata, err)
	}
	// WalkDir visits in lexical order of each directory's names, which is
	// not byte order of full paths ("a/b" before "a-b"): sort.
	sortNodes(nodes)
	return nodes, total, nil
}

func sortNodes(nodes []Node) {
	slices.SortFunc(nodes, func(a, b Node) int { return strings.Compare(a.Path, b.Path) })
}

// databases sums the file sizes of each database: under base/<oid>, and
// under a tablespace's pg_tblspc/<tablespace>/<version dir>/<oid>.
func databases(nodes []Node) []DBInfo {
	var dbs []DBInfo
	idx := map[string]int{}
	for _, n := range nodes {
		rest, ok := strings.CutPrefix(n.Path, "base/")
		if !ok {
			// A database's files in a tablespace:
			// pg_tblspc/<tablespace>/<version dir>/<database>/...
			parts := strings.SplitN(n.Path, "/", 5)
			if len(parts) < 4 || parts[0] != "pg_tblspc" {
				continue
			}
			rest = strings.Join(parts[3:], "/")
		}
		dir, _, _ := strings.Cut(rest, "/")
		oid, err := strconv.ParseUint(dir, 10, 32)
		if err != nil {
			continue
		}
		i, ok := idx[dir]
		if !ok {
			i = len(dbs)
			idx[dir] = i
			dbs = append(dbs, DBInfo{OID: uint32(oid)})
		}
		if n.Type == NodeFile {
			dbs[i].Size += n.Size
		}
	}
	return dbs
}

// systemID returns the database system identifier of pgdata: from
// pg_controldata when it is installed, else from the first 8 bytes of
// global/pg_control (ControlFileData.system_identifier, in host byte order,
// little-endian on every platform we build for).
func systemID(ctx context.Context, pgdata, version string) (string, error) {
	major, _, _ := strings.Cut(version, ".")
	if bin := pgtool.VersionTool("pg_controldata", major); bin != "" {
		cmd := exec.CommandContext(ctx, bin, "-D", pgdata)
		cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
		if out, err := cmd.Output(); err == nil {
			sc := bufio.NewScanner(strings.NewReader(string(out)))
			for sc.Scan() {
				if v, ok := strings.CutPrefix(sc.Text(), "Database system identifier:"); ok {
					return strings.TrimSpace(v), nil
				}
			}
		}
	}
	b := make([]byte, 8)
	f, err := os.Open(filepath.Join(pgdata, "global", "pg_control"))
	if err != nil {
		return "", fmt.Errorf("reading the system identifier: %w", err)
	}
	defer f.Close()
	if _, err := io.ReadFull(f, b); err != nil {
		return "", fmt.Errorf("reading the system identifier: %w", err)
	}
	return strconv.FormatUint(binary.LittleEndian.Uint64(b), 10), nil
}
