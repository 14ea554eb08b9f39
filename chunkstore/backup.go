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
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// BackupOptions configure Repo.Backup. The zero value is ready to use.
type BackupOptions struct {
	// Params cut the files; zero means DefaultParams. Backups that share
	// chunks must use the same Params.
	Params Params
	// SourceHost is recorded in the restore point; empty means os.Hostname.
	SourceHost string
	// Progress, if set, is called with plain bytes read so far and the
	// total, never concurrently with itself.
	Progress func(done, total int64)
	// Workers chunk files in parallel; 0 means min(GOMAXPROCS, 4).
	Workers int
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
	p := o.Params.withDefaults()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	workers := o.Workers
	if workers <= 0 {
		workers = min(runtime.GOMAXPROCS(0), 4)
	}
	start := time.Now()
	ver, err := os.ReadFile(filepath.Join(pgdata, "PG_VERSION"))
	if err != nil {
		return nil, fmt.Errorf("%s is not a PostgreSQL data directory: %w", pgdata, err)
	}
	rp := &RestorePoint{
		ID:         newPointID(start),
		Time:       start.UTC(),
		PGVersion:  strings.TrimSpace(string(ver)),
		SourceHost: o.SourceHost,
		Params:     p,
		Format:     pointFormat,
	}
	if rp.SourceHost == "" {
		rp.SourceHost, _ = os.Hostname()
	}
	if rp.SystemID, err = systemID(ctx, pgdata, rp.PGVersion); err != nil {
		return nil, err
	}
	nodes, total, err := walkDataDir(pgdata)
	if err != nil {
		return nil, err
	}
	stored0 := r.packBytes()

	var (
		done   atomic.Int64
		progMu sync.Mutex // serialises o.Progress
	)
	report := func(n int64) {
		d := done.Add(n)
		if o.Progress != nil {
			progMu.Lock()
			o.Progress(d, total)
			progMu.Unlock()
		}
	}
	report(0)
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
	var vanishedMu sync.Mutex // guards vanished
	vanished := map[int]bool{}
	for range workers {
		g.Go(func() error {
			ch, err := NewChunker(nil, p)
			if err != nil {
				return err
			}
			for i := range files {
				err := r.backupFile(gctx, ch, filepath.Join(pgdata, filepath.FromSlash(nodes[i].Path)), &nodes[i], report)
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
	for _, n := range nodes {
		if n.Type == NodeFile {
			rp.Files++
			rp.Size += n.Size
		}
	}
	rp.Databases = databases(nodes)
	if rp.Tree, err = PutTree(ctx, r.store, nodes, p); err != nil {
		return nil, err
	}
	if err := r.store.Flush(ctx); err != nil {
		return nil, fmt.Errorf("flushing the store: %w", err)
	}
	rp.StoredSize = max(r.packBytes()-stored0, 0)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := r.writePoint(rp); err != nil {
		return nil, err
	}
	r.log.Info("backup complete", "restore_point", rp.ID, "files", rp.Files, "bytes", rp.Size,
		"stored", rp.StoredSize, "seconds", time.Since(start).Seconds())
	return rp, nil
}

// backupFile chunks one file into the store and sets n's Size and Chunks to
// what was read (a file of a live copy may have changed since the walk).
func (r *Repo) backupFile(ctx context.Context, ch *Chunker, name string, n *Node, report func(int64)) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	ch.Reset(f)
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
		id := Sum(c.Data)
		if err := r.store.Put(ctx, id, c.Data); err != nil {
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

// databases sums the file sizes under each base/<oid> directory.
func databases(nodes []Node) []DBInfo {
	var dbs []DBInfo
	idx := map[string]int{}
	for _, n := range nodes {
		rest, ok := strings.CutPrefix(n.Path, "base/")
		if !ok {
			continue
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
	if bin := findControlData(version); bin != "" {
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

func findControlData(version string) string {
	if p, err := exec.LookPath("pg_controldata"); err == nil {
		return p
	}
	major, _, _ := strings.Cut(version, ".")
	for _, p := range []string{
		filepath.Join("/usr/lib/postgresql", major, "bin", "pg_controldata"),
		filepath.Join("/usr/pgsql-"+major, "bin", "pg_controldata"),
	} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}
