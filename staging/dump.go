package staging

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// DumpOptions say what to dump and where.
type DumpOptions struct {
	DB       string // database name, matched exactly
	User     string
	Password string
	Dir      string // the dump's final directory; DIR.partial while it runs
	Jobs     int    // pg_dump -j; default 2
	// Progress, if set, is called with tables dumped so far and in total.
	Progress func(done, total int)
	// Started, if set, is called with the directory pg_dump writes into
	// (Dir.partial, renamed to Dir when the dump succeeds) before it runs,
	// and OnFile with the name of each file in it once pg_dump has closed
	// it for good; after a successful dump every file has been reported.
	// Together they let the dump be sent while it is being written.
	Started func(partialDir string)
	OnFile  func(name string)
	// SplitTableBytes is the size from which a table's data is dumped by
	// pgporter in parallel page ranges rather than by one COPY of pg_dump
	// (see tabledump.go); 0 or negative: never (pg_dump dumps everything).
	SplitTableBytes int64
	rangeBytes      int64 // the share of a split table per COPY; tests make it small
	// Filter narrows the dump (pg_dump's --table, --schema, ...); with it,
	// no table is split.
	Filter *DumpFilter
}

// DumpResult describes a finished dump.
type DumpResult struct {
	Dir     string
	Bytes   int64
	Tables  int
	Reused  bool // the dump was complete already (a retry)
	Command string
	// Split names the tables whose data was dumped in parallel ranges.
	Split []string
}

// Dump runs pg_dump -Fd -Z0 --no-sync for one database of the instance
// into o.Dir.partial and renames it to o.Dir when pg_dump succeeds, so that
// o.Dir existing means the dump is complete. A complete dump is not redone;
// an incomplete one is removed and redone. pg_dump's stderr is kept for the
// error message.
func (in *Instance) Dump(ctx context.Context, o DumpOptions) (*DumpResult, error) {
	if o.Jobs <= 0 {
		o.Jobs = 2
	}
	if fi, err := os.Stat(o.Dir); err == nil && fi.IsDir() {
		if _, err := os.Stat(filepath.Join(o.Dir, "toc.dat")); err == nil {
			n, _ := dirBytes(o.Dir)
			return &DumpResult{Dir: o.Dir, Bytes: n, Reused: true}, nil
		}
		return nil, fmt.Errorf("%s exists but is not a finished dump; remove it", o.Dir)
	}
	partial := o.Dir + ".partial"
	if err := os.RemoveAll(partial); err != nil {
		return nil, fmt.Errorf("removing an incomplete dump: %w", err)
	}
	if err := os.MkdirAll(partial, 0o700); err != nil { // pg_dump takes an empty directory
		return nil, err
	}
	split, err := in.planSplit(ctx, o)
	if err != nil {
		return nil, err
	}
	defer split.close()
	var watch *closeWatcher
	if o.OnFile != nil {
		var skip []string
		if split != nil { // pgporter rewrites pg_dump's toc.dat at the end
			skip = []string{"toc.dat", "toc.dat.tmp"}
		}
		if watch, err = watchCloses(partial, o.OnFile, skip...); err != nil {
			return nil, err
		}
		defer func() { _ = watch.finish(false) }() // idempotent stop on error paths
	}
	if o.Started != nil {
		o.Started(partial)
	}
	total := 0
	if o.Progress != nil {
		total = in.countTables(ctx, o)
	}
	var mu sync.Mutex // guards done, for pg_dump's lines and the split tables
	done := 0
	tableDone := func() {
		mu.Lock()
		done++
		n := done
		mu.Unlock()
		if o.Progress != nil {
			o.Progress(n, max(total, n))
		}
	}

	args := []string{"-Fd", "-Z0", "--no-sync", "-j", strconv.Itoa(o.Jobs), "-v"}
	if split != nil {
		args = append(args, split.pgDumpArgs()...)
	}
	args = append(args, o.Filter.args()...)
	args = append(args, "-f", partial, "-d", in.ConnString(o.DB, o.User))
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(dctx, filepath.Join(in.BinDir, "pg_dump"), args...)
	env, donePass, err := clientEnv(o.Password)
	if err != nil {
		return nil, err
	}
	defer donePass()
	cmd.Env = env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting pg_dump: %w", err)
	}
	// pg_dump checks that its directory is empty before it says anything:
	// the split tables' files are written after its first line.
	started := make(chan struct{})
	splitErr := make(chan error, 1)
	if split != nil {
		go func() {
			err := split.dump(dctx, in, o, partial, started, func(*splitTable) { tableDone() })
			if err != nil {
				cancel() // pg_dump too
			}
			splitErr <- err
		}()
	}
	var errTail bytes.Buffer // what pg_dump says of errors, for the message
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	first := true
	for sc.Scan() {
		if first {
			close(started)
			first = false
		}
		line := sc.Text()
		switch {
		case strings.Contains(line, "dumping contents of table"):
			tableDone()
		case strings.Contains(line, "error:"), strings.Contains(line, "warning:"), strings.Contains(line, "DETAIL:"), strings.Contains(line, "HINT:"):
			errTail.WriteString(line + "\n")
		}
	}
	if first {
		close(started)
	}
	_, _ = io.Copy(io.Discard, stderr)
	waitErr := cmd.Wait()
	if waitErr != nil {
		cancel() // the range COPYs
	}
	if split != nil {
		if err := <-splitErr; err != nil && ctx.Err() == nil && (waitErr == nil || !errors.Is(err, context.Canceled)) {
			if errors.Is(err, syscall.ENOSPC) {
				return nil, noSpace(o, err.Error())
			}
			return nil, fmt.Errorf("dumping the data of %q's big tables: %w", o.DB, err)
		}
	}
	if waitErr != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if strings.Contains(errTail.String(), "No space left on device") {
			return nil, noSpace(o, strings.TrimSpace(errTail.String()))
		}
		return nil, fmt.Errorf("pg_dump of %q failed (%v): %s", o.DB, waitErr, strings.TrimSpace(errTail.String()))
	}
	var splitNames []string
	if split != nil {
		if err := split.addEntries(partial); err != nil {
			return nil, fmt.Errorf("adding the big tables to %q's toc.dat: %w", o.DB, err)
		}
		for _, t := range split.tables {
			splitNames = append(splitNames, t.qualified)
		}
	}
	if watch != nil {
		if err := watch.finish(true); err != nil {
			return nil, err
		}
	}
	if err := os.Rename(partial, o.Dir); err != nil {
		return nil, fmt.Errorf("marking the dump complete: %w", err)
	}
	n, err := dirBytes(o.Dir)
	if err != nil {
		return nil, err
	}
	command := "pg_dump " + strings.Join(args[:len(args)-1], " ") + " <conninfo>"
	if split != nil {
		command += fmt.Sprintf("; the data of %s by range COPYs on %d connections", strings.Join(splitNames, ", "), o.Jobs)
	}
	return &DumpResult{Dir: o.Dir, Bytes: n, Tables: done, Command: command, Split: splitNames}, nil
}

// noSpace names the directory that is full, which pg_dump does not say.
func noSpace(o DumpOptions, detail string) error {
	return fmt.Errorf("no space left on %s for the dump of %q (%w); free space there and retry: %s",
		filepath.Dir(o.Dir), o.DB, syscall.ENOSPC, detail)
}

func (in *Instance) countTables(ctx context.Context, o DumpOptions) int {
	c, err := in.connect(ctx, o.DB, o.User, o.Password)
	if err != nil {
		return 0
	}
	defer c.Close(ctx)
	var n int
	_ = c.QueryRow(ctx, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r','m') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'`).Scan(&n)
	return n
}

func dirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	return n, err
}
