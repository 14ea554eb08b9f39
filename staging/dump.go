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
}

// DumpResult describes a finished dump.
type DumpResult struct {
	Dir     string
	Bytes   int64
	Tables  int
	Reused  bool // the dump was complete already (a retry)
	Command string
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
	var watch *closeWatcher
	if o.OnFile != nil {
		var err error
		if watch, err = watchCloses(partial, o.OnFile); err != nil {
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
	args := []string{"-Fd", "-Z0", "--no-sync", "-j", strconv.Itoa(o.Jobs), "-v", "-f", partial, "-d", in.ConnString(o.DB, o.User)}
	cmd := exec.CommandContext(ctx, filepath.Join(in.BinDir, "pg_dump"), args...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+o.Password, "PGCONNECT_TIMEOUT=30")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting pg_dump: %w", err)
	}
	var errTail bytes.Buffer // what pg_dump says of errors, for the message
	done := 0
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, "dumping contents of table"):
			done++
			if o.Progress != nil {
				o.Progress(done, max(total, done))
			}
		case strings.Contains(line, "error:"), strings.Contains(line, "warning:"), strings.Contains(line, "DETAIL:"), strings.Contains(line, "HINT:"):
			errTail.WriteString(line + "\n")
		}
	}
	_, _ = io.Copy(io.Discard, stderr)
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("pg_dump of %q failed (%v): %s", o.DB, err, strings.TrimSpace(errTail.String()))
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
	return &DumpResult{Dir: o.Dir, Bytes: n, Tables: done, Command: "pg_dump " + strings.Join(args[:len(args)-1], " ") + " <conninfo>"}, nil
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
