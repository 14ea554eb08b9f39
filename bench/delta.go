package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Delta is scenario 5: the same database after UpdatedRows scattered row
// updates, dumped again, sent through the WAN path (ProfileWAN) to a target
// that holds the previous dump. Only the second send is measured.
//   - pgporter: each run has fresh homes; the first dump is sent, untimed,
//     over the same path, then the second to a new DEST on the same
//     receiver, which keeps its home and state from the first
//     (scripts/bench-transfer's delta figure).
//   - rsync -z and rsync: the run's directory in the daemon's module is a
//     copy (cp -a, untimed) of the first dump, what an earlier rsync -a
//     would have left; rsync then sends the second dump into it with its
//     delta algorithm (the default between hosts).
type Delta struct {
	Profile   EmuProfile
	Pgporter  string
	SendFlags []string
	Link      LinkOptions
	data      *wanData
}

var _ Scenario = (*Delta)(nil)

func (*Delta) Name() string { return "delta" }

func (s *Delta) Describe() string {
	return fmt.Sprintf("the dump after %d scattered row updates, sent through the wan path to a target holding the previous dump: the second send only", UpdatedRows)
}

func (s *Delta) Prepare(ctx context.Context, env Env) (_ *Setup, err error) {
	if s.Pgporter == "" {
		return nil, errors.New("delta: no pgporter binary")
	}
	if err := RequireLinkTools(); err != nil {
		return nil, err
	}
	a, b, err := s.data.get(ctx, env)
	if err != nil {
		return nil, err
	}
	if _, _, err := readTree(a); err != nil {
		return nil, err
	}
	size, files, err := readTree(b)
	if err != nil {
		return nil, err
	}
	changed, err := changedBytes(a, b)
	if err != nil {
		return nil, err
	}
	link, rsyncd, held, err := wanRig(ctx, s.Link, s.Profile, env.Dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, held.Close())
		}
	}()
	j := &lanJob{link: link.Link, data: b, size: size, dir: env.Dir, logf: env.Logf, name: "delta"}
	tools := []Tool{
		&deltaPgporter{t: &pgporterTool{job: j, name: "pgporter", bin: s.Pgporter, flags: s.SendFlags}, prev: a},
		&deltaRsync{job: j, d: rsyncd, name: "rsync -z", args: []string{"-z", "--compress-choice=zstd", "--compress-level=1"}, prev: a},
		&deltaRsync{job: j, d: rsyncd, name: "rsync", prev: a},
	}
	notes := wanNotes(link, files, s.data.describe(env)+fmt.Sprintf(", then the same after %d scattered updates of pgbench_accounts, dumped again", UpdatedRows))
	notes["delta"] = fmt.Sprintf("input is the second dump; %d bytes of its files differ from the first (by position, file by file); wire_pct is wire MB over the input", changed)
	return &Setup{
		Bytes:   size,
		Sides:   []string{"sender", "receiver"},
		Notes:   notes,
		Tools:   emuLogged(link, env, "delta", tools),
		Settle:  settle,
		SpeedUp: &SpeedUp{Of: "pgporter", Over: "rsync -z"},
		Close:   held.Close,
	}, nil
}

// changedBytes returns how many bytes of the files of b differ from the
// file of the same name in a, position by position, a longer or missing
// file's extra bytes counting as changed: a rough size of the change, for
// the notes.
func changedBytes(a, b string) (int64, error) {
	ents, err := os.ReadDir(b)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		nb, err := os.ReadFile(filepath.Join(b, e.Name()))
		if err != nil {
			return 0, err
		}
		na, err := os.ReadFile(filepath.Join(a, e.Name()))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, err
		}
		n += diffBytes(na, nb)
	}
	return n, nil
}

// diffBytes counts the positions at which a and b differ, the longer one's
// extra bytes included.
func diffBytes(a, b []byte) int64 {
	n := int64(max(len(a), len(b)) - min(len(a), len(b)))
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// wirePct adds wire_pct, the link's bytes over the input's, to m.
func wirePct(m *Measure, size int64) {
	if m.Extra == nil {
		m.Extra = map[string]float64{}
	}
	m.Extra["wire_pct"] = 100 * float64(m.WireBytes) / float64(size)
}

// ---- pgporter ----

type deltaPgporter struct {
	t    *pgporterTool
	prev string // the first dump
}

func (d *deltaPgporter) Name() string { return d.t.name }

func (d *deltaPgporter) Run(ctx context.Context, rep int) (_ Measure, err error) {
	j := d.t.job
	rig, err := d.t.newRig(ctx, filepath.Join(j.dir, fmt.Sprintf("delta-pgporter-%d", rep)))
	if err != nil {
		return Measure{}, err
	}
	defer func() { err = errors.Join(err, rig.close()) }()
	if _, _, _, err := rig.send(ctx, d.prev, filepath.Join(rig.root, "d1")); err != nil {
		return Measure{}, fmt.Errorf("sending the first dump: %w", err)
	}
	dest := filepath.Join(rig.root, "d2")
	m, err := rig.measure(ctx, j.data, dest, j.size)
	if err != nil {
		return Measure{}, err
	}
	if err := sameTree(j.data, dest); err != nil {
		return Measure{}, err
	}
	wirePct(&m, j.size)
	return m, nil
}

// ---- rsync ----

type deltaRsync struct {
	job  *lanJob
	d    *rsyncd
	name string
	args []string
	prev string // the first dump
}

func (d *deltaRsync) Name() string { return d.name }

func (d *deltaRsync) Run(ctx context.Context, rep int) (Measure, error) {
	j := d.job
	sub := fmt.Sprintf("delta-%s-%d", benchLabel(d.name), rep)
	dest := filepath.Join(d.d.root, sub)
	defer os.RemoveAll(dest)
	if err := os.RemoveAll(dest); err != nil {
		return Measure{}, err
	}
	if out, err := exec.CommandContext(ctx, "cp", "-a", d.prev, dest).CombinedOutput(); err != nil {
		return Measure{}, fmt.Errorf("copying the first dump: %w: %s", err, tail(string(out)))
	}
	m, err := j.rsyncTo(ctx, d.d, d.args, sub, dest)
	if err != nil {
		return Measure{}, err
	}
	if err := sameTree(j.data, dest); err != nil {
		return Measure{}, err
	}
	wirePct(&m, j.size)
	return m, nil
}

// sameTree returns an error unless every regular file of a has the same
// bytes in b: a delta tool that left the old file in place would pass a
// size check, since updates keep the dump's size.
func sameTree(a, b string) error {
	ents, err := os.ReadDir(a)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		x, err := os.ReadFile(filepath.Join(a, e.Name()))
		if err != nil {
			return err
		}
		y, err := os.ReadFile(filepath.Join(b, e.Name()))
		if err != nil {
			return err
		}
		if !bytes.Equal(x, y) {
			return fmt.Errorf("%s differs from what was sent", filepath.Join(b, e.Name()))
		}
	}
	return nil
}
