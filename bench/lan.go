package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/pgporter/pgporter/internal/synth"
)

// LAN is scenario 2: a cold transfer of a dump directory over a 1 Gbit/s
// link between two network namespaces, each side pinned to its own CPUs.
// Tools: pgporter send into a fresh pgporter mover serve (no chunk from an
// earlier run to skip), an rsync daemon with -a, with -a -z (zstd level 1),
// and that with --fsync (pgporter syncs what it receives), and
// tar | zstd -1 | nc into nc | zstd -d | tar -x.
type LAN struct {
	// Data is the directory to send, e.g. a pg_dump -Fd dump. When empty the
	// scenario makes one: a few MB of synthetic rows with Env.Smoke, else a
	// pg_dump -Fd -Z0 of pgbench -s 20 plus the md5/jsonb/words table.
	Data string
	// Pgporter is the pgporter binary to run; required.
	Pgporter string
	// Base, when set, is another pgporter binary (an earlier build), run as
	// the tool "pgporter (base)" beside the others: before/after figures
	// from the same run.
	Base string
	// SendFlags are extra flags of pgporter send, e.g. "--compress fastest".
	SendFlags []string
	Link      LinkOptions // Rate defaults to 1gbit
}

var _ Scenario = (*LAN)(nil)

func (*LAN) Name() string { return "lan" }

func (*LAN) Describe() string {
	return "cold transfer of a dump over a 1 Gbit/s veth link (tc tbf) between two network namespaces"
}

// Ports inside the namespaces, which nothing else uses.
const (
	pgporterPort = 7448
	rsyncPort    = 8730
	ncPort       = 9000
)

func (s *LAN) Prepare(ctx context.Context, env Env) (_ *Setup, err error) {
	if s.Pgporter == "" {
		return nil, errors.New("lan: no pgporter binary")
	}
	if err := RequireLinkTools(); err != nil {
		return nil, err
	}
	f, err := newLANFixture(ctx, env, "lan", s.Data, s.Link)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, f.held.Close())
		}
	}()
	j, rsyncd := f.job, f.rsyncd
	tools := []Tool{
		&pgporterTool{job: j, name: "pgporter", bin: s.Pgporter, flags: s.SendFlags},
	}
	if s.Base != "" {
		tools = append(tools, &pgporterTool{job: j, name: "pgporter (base)", bin: s.Base, flags: s.SendFlags})
	}
	tools = append(tools,
		&rsyncTool{job: j, d: rsyncd, name: "rsync -z", args: []string{"-z", "--compress-choice=zstd", "--compress-level=1"}},
		&rsyncTool{job: j, d: rsyncd, name: "rsync -z --fsync", args: []string{"-z", "--compress-choice=zstd", "--compress-level=1", "--fsync"}},
		&rsyncTool{job: j, d: rsyncd, name: "rsync"},
		&tarTool{job: j},
	)
	notes := f.notes()
	notes["fsync"] = "pgporter and rsync --fsync sync what they receive; the others do not"
	return &Setup{
		Bytes:  j.size,
		Sides:  []string{"sender", "receiver"},
		Notes:  notes,
		Tools:  tools,
		Settle: settle,
		// The sender, on its CPUs, in a fresh rig.
		Profile: func(ctx context.Context, file string) error {
			t := &pgporterTool{job: j, name: "pgporter (perf)", bin: s.Pgporter, flags: s.SendFlags, perf: perfRecord(file, 2000, true)}
			_, err := t.Run(ctx, 0)
			return err
		},
		Close: f.held.Close,
	}, nil
}

// lanFixture is what the scenarios on the LAN's link share: the data
// (read once, so that every tool starts from the page cache), the link
// and an rsync daemon in its receiving namespace.
type lanFixture struct {
	job    *lanJob
	rsyncd *rsyncd
	rate   string
	files  int
	held   closers // the link and the daemon, for the scenario's Close
}

// newLANFixture makes the fixture of scenario name: data is the directory
// to send, or "" to make one under env.Dir (a few MB of synthetic rows with
// env.Smoke, else MakeDump's pgbench -s 20 plus the docs table); lo's Rate
// defaults to 1gbit. On error it removes what it made; otherwise the caller
// calls held.Close.
func newLANFixture(ctx context.Context, env Env, name, data string, lo LinkOptions) (_ *lanFixture, err error) {
	switch {
	case data != "":
	case env.Smoke:
		data = filepath.Join(env.Dir, "data")
		if err := writeSmokeData(data); err != nil {
			return nil, err
		}
	default:
		data = filepath.Join(env.Dir, "dump")
		env.Logf("%s: making the dump (pgbench -s 20 plus 600k rows of md5 text, jsonb and words)", name)
		if err := MakeDump(ctx, DumpOptions{Dir: data, Scale: 20}); err != nil {
			return nil, fmt.Errorf("making the dump: %w", err)
		}
	}
	size, files, err := readTree(data)
	if err != nil {
		return nil, err
	}
	env.Logf("%s: %d bytes in %d files from %s", name, size, files, data)

	if lo.Rate == "" {
		lo.Rate = "1gbit"
	}
	link, err := NewLink(ctx, lo)
	if err != nil {
		return nil, err
	}
	f := &lanFixture{rate: lo.Rate, files: files}
	f.held.add(link.Close)
	defer func() {
		if err != nil {
			err = errors.Join(err, f.held.Close())
		}
	}()
	if f.rsyncd, err = startRsyncd(ctx, link, filepath.Join(env.Dir, "rsync")); err != nil {
		return nil, err
	}
	f.held.add(f.rsyncd.Close)
	f.job = &lanJob{link: link, data: data, size: size, dir: env.Dir, logf: env.Logf, name: name}
	return f, nil
}

// notes describe the link and the data, for the Setup.
func (f *lanFixture) notes() map[string]string {
	return map[string]string{
		"link":          f.rate + " (tc tbf) each way",
		"sender CPUs":   f.job.link.SenderCPUs,
		"receiver CPUs": f.job.link.ReceiverCPUs,
		"files":         strconv.Itoa(f.files),
	}
}

// settle writes every dirty page back (sync(2)): rsync and tar do not sync
// what they receive, and without this the next tool's run paid for their
// writeback (rsync -z measured 0.69 s and 1.7 receiver CPU-s/GB after
// another tool's unsynced 260 MB, rsync -z --fsync 0.56 s and 0.6).
func settle(context.Context) error {
	unix.Sync()
	return nil
}

// lanJob is what the LAN tools share; the WAN scenarios' tools too.
type lanJob struct {
	link *Link
	data string
	size int64
	dir  string
	logf func(string, ...any)
	name string // the scenario's, for log lines; "" is "lan"
}

func (j *lanJob) scenario() string {
	if j.name == "" {
		return "lan"
	}
	return j.name
}

// checkReceived returns an error unless dest holds as many bytes in regular
// files as the data (pgporter's manifest aside), so that a tool that
// silently moved nothing cannot post a fast time.
func (j *lanJob) checkReceived(dest string) error { return checkSize(dest, j.size) }

// checkSize returns an error unless dest holds size bytes in regular files,
// pgporter's manifest aside.
func checkSize(dest string, size int64) error {
	got, _, err := treeSize(dest)
	if err != nil {
		return err
	}
	if got != size {
		return fmt.Errorf("received %d bytes into %s, sent %d", got, dest, size)
	}
	return nil
}

// readTree returns the bytes and count of regular files under dir, reading
// each once so that every tool starts with the data in the page cache.
func readTree(dir string) (size int64, files int, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.Copy(io.Discard, f)
		size += n
		files++
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("reading %s: %w", dir, err)
	}
	if files == 0 {
		return 0, 0, fmt.Errorf("no files in %s", dir)
	}
	return size, files, nil
}

// treeSize is readTree without reading, skipping pgporter's manifest.
func treeSize(dir string) (size int64, files int, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || d.Name() == "pgporter-manifest.json" {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		size += fi.Size()
		files++
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("measuring %s: %w", dir, err)
	}
	return size, files, nil
}

// writeSmokeData writes 8 MB of compressible files shaped like a small
// pg_dump -Fd directory: two tables of pgbench rows, one of md5 text, a toc.
func writeSmokeData(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("making smoke data: %w", err)
	}
	files := map[string][]byte{
		"3001.dat": synth.PgbenchRows(3 << 20),
		"3002.dat": synth.PgbenchRows(2 << 20),
		"3003.dat": synth.MD5Rows(3 << 20),
		"toc.dat":  synth.MD5Rows(4 << 10),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("making smoke data: %w", err)
		}
	}
	return nil
}
