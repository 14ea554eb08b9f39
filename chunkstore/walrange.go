package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"
)

// WALRange is the WAL an online backup spans: recovery must replay from
// Start to End before the copy is consistent, and can go on from End with
// archived WAL.
type WALRange struct {
	Timeline    uint32    `json:"timeline"`
	Start       string    `json:"start_lsn"`
	End         string    `json:"end_lsn,omitempty"` // empty before PostgreSQL 13 (no manifest)
	SegmentSize int64     `json:"segment_size"`
	EndTime     time.Time `json:"end_time"` // when the backup finished
}

// ParseLSN reads a WAL location as PostgreSQL prints it ("0/3000148").
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if !ok || err1 != nil || err2 != nil || hi == "" || lo == "" {
		return 0, fmt.Errorf("chunkstore: %q is not a WAL location (like 0/3000148)", s)
	}
	return h<<32 | l, nil
}

// FormatLSN writes a WAL location as PostgreSQL prints it ("0/3000148").
func FormatLSN(lsn uint64) string { return fmt.Sprintf("%X/%X", lsn>>32, uint32(lsn)) }

// segmentName is the file name of WAL segment segno on timeline tl.
func segmentName(tl uint32, segno uint64, segSize int64) string {
	perLog := uint64(0x100000000) / uint64(segSize)
	return fmt.Sprintf("%08X%08X%08X", tl, segno/perLog, segno%perLog)
}

// Coverage is how far a restore point can be recovered with the archived
// WAL.
type Coverage struct {
	// To is when the last segment of the unbroken run of archived
	// segments from the backup's end was pushed: recovery can reach at
	// least the transactions committed before the backup's end, and at
	// most those committed before To. Zero when the archive does not hold
	// the segment the backup ends in.
	To time.Time `json:"to,omitzero"`
	// LastSegment is the last segment of that run.
	LastSegment string `json:"last_segment,omitempty"`
	// GapAfter is set when the archive holds later segments past a missing
	// one: LastSegment's successor is missing.
	GapAfter string `json:"gap_after,omitempty"`
	// Timeline is the timeline recovery ends on: the backup's own, or a
	// later one that branched from it (a failover) and that the recovery
	// follows through the archived timeline history files.
	Timeline uint32 `json:"timeline,omitempty"`
	// Problem says why recovery cannot follow the chosen timeline from the
	// backup, when it cannot: To is then zero.
	Problem string `json:"problem,omitempty"`
}

// TimelineLatest asks WALCoverage for the newest timeline in the archive, as
// PostgreSQL's recovery_target_timeline=latest does.
const TimelineLatest uint32 = 0

// timelineStep is one timeline of a recovery's path: it holds the WAL from
// Begin (its parent's switch point; 0 for the first) on.
type timelineStep struct {
	TLI   uint32
	Begin uint64
}

// WALCoverage reads, from the WAL archive of the repository in dir (a
// directory or a URL), how far rp can be recovered when recovery follows
// timeline target (TimelineLatest, or a timeline ID; rp's own for
// recovery_target_timeline=current). Like PostgreSQL, it reads each segment
// from the newest timeline of the path that holds it. It creates nothing
// (but a cache, for a URL). For several points, OpenWALArchive once.
func WALCoverage(ctx context.Context, dir string, rp *RestorePoint, target uint32) (*Coverage, error) {
	if rp.WAL == nil || rp.WAL.End == "" || rp.WAL.SegmentSize <= 0 {
		return nil, nil
	}
	a, err := OpenWALArchive(ctx, dir)
	if err != nil {
		return nil, err
	}
	return a.Coverage(ctx, rp, target)
}

// WALArchive reads the WAL archive of a repository without opening it: its
// listing is taken once, at the first Coverage.
type WALArchive struct {
	r          *Repo // walNames and readWAL only
	held       map[string]bool
	histories  map[uint32]bool
	listedOnce bool
}

// OpenWALArchive opens the WAL archive of the repository dir (a directory
// or a URL) for reading.
func OpenWALArchive(ctx context.Context, dir string) (*WALArchive, error) {
	f := repoFiles{dir: dir}
	if IsRepoURL(dir) {
		b, err := openRepoBackend(ctx, dir, slog.Default())
		if err != nil {
			return nil, err
		}
		f.remote = b
	}
	key, _, err := f.repoKey(ctx)
	if err != nil {
		return nil, err
	}
	return &WALArchive{r: &Repo{dir: dir, remote: f.remote, key: key}}, nil
}

// Coverage is WALCoverage on a.
func (a *WALArchive) Coverage(ctx context.Context, rp *RestorePoint, target uint32) (*Coverage, error) {
	w := rp.WAL
	if w == nil || w.End == "" || w.SegmentSize <= 0 {
		return nil, nil
	}
	if !a.listedOnce {
		var err error
		if a.held, a.histories, err = listWAL(ctx, a.r); err != nil {
			return nil, err
		}
		a.listedOnce = true
	}
	held, histories := a.held, a.histories
	end, err := ParseLSN(w.End)
	if err != nil {
		return nil, err
	}
	if end > 0 {
		end-- // End is just past the last record
	}
	segSize := uint64(w.SegmentSize)
	if target == TimelineLatest {
		// recovery_target_timeline=latest: the highest timeline with a
		// history file in an unbroken run from the backup's.
		target = w.Timeline
		for histories[target+1] {
			target++
		}
	}
	c := &Coverage{Timeline: target}
	path, err := timelinePath(ctx, a.r, target, histories)
	if err != nil {
		return nil, err
	}
	// The path must pass through the backup's timeline, and leave it after
	// the backup's end.
	i := slices.IndexFunc(path, func(s timelineStep) bool { return s.TLI == w.Timeline })
	switch {
	case i < 0:
		c.Problem = fmt.Sprintf("timeline %d does not descend from the backup's timeline %d", target, w.Timeline)
		return c, nil
	case i+1 < len(path) && path[i+1].Begin <= end:
		c.Problem = fmt.Sprintf("timeline %d branched from the backup's timeline %d at %s, before the backup's end %s",
			path[i+1].TLI, w.Timeline, FormatLSN(path[i+1].Begin), w.End)
		return c, nil
	}
	path = path[i:]
	// segmentOn returns the name of segment seg in the archive, read from
	// the newest timeline of the path that begins at or before it.
	segmentOn := func(seg uint64) (string, bool) {
		for j := len(path) - 1; j >= 0; j-- {
			if path[j].Begin/segSize > seg || j+1 < len(path) && path[j+1].Begin/segSize < seg {
				continue // before it began, or past where it ended
			}
			if name := segmentName(path[j].TLI, seg, w.SegmentSize); held[name] {
				return name, true
			}
		}
		return "", false
	}
	seg := end / segSize
	for {
		name, ok := segmentOn(seg)
		if !ok {
			break
		}
		c.LastSegment = name
		seg++
	}
	if c.LastSegment == "" {
		return c, nil
	}
	c.Timeline = segmentTimeline(c.LastSegment)
	// A gap: a later segment of a timeline of the path.
	for name := range held {
		tli := segmentTimeline(name)
		if slices.ContainsFunc(path, func(s timelineStep) bool { return s.TLI == tli }) && segmentNumber(name, w.SegmentSize) >= seg {
			c.GapAfter = c.LastSegment
			break
		}
	}
	rec, err := a.r.readWAL(ctx, c.LastSegment)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil // pruned meanwhile
	}
	if err != nil {
		return nil, err
	}
	c.To = rec.Pushed
	return c, nil
}

// listWAL lists the archive of r: the segment names it holds, and the
// timelines it holds a history file of.
func listWAL(ctx context.Context, r *Repo) (segments map[string]bool, histories map[uint32]bool, err error) {
	names, err := r.walNames(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("chunkstore: reading the WAL archive: %w", err)
	}
	segments, histories = map[string]bool{}, map[uint32]bool{}
	for _, name := range names {
		if len(name) == 24 {
			segments[name] = true
		} else if tli, ok := strings.CutSuffix(name, ".history"); ok {
			n, _ := strconv.ParseUint(tli, 16, 32)
			histories[uint32(n)] = true
		}
	}
	return segments, histories, nil
}

// timelinePath returns the timelines that lead to tli, oldest first, from
// its archived history file (tli alone when it has none: the first
// timeline, or one whose history was never archived).
func timelinePath(ctx context.Context, r *Repo, tli uint32, histories map[uint32]bool) ([]timelineStep, error) {
	if !histories[tli] {
		return []timelineStep{{TLI: tli}}, nil
	}
	name := fmt.Sprintf("%08X.history", tli)
	rec, err := r.readWAL(ctx, name)
	if err != nil {
		return nil, err
	}
	if rec.History == "" {
		// Pushed by a build that did not keep history files' text.
		return nil, fmt.Errorf("chunkstore: the archived %s does not carry its text; push it again with this version", name)
	}
	// Its text must be the content its record names.
	w, err := walContent(ctx, strings.NewReader(rec.History), name, nil)
	if err != nil {
		return nil, err
	}
	if w.Hash != rec.Hash {
		return nil, fmt.Errorf("chunkstore: the archived %s: its text does not match its chunks", name)
	}
	switches, err := parseTimelineHistory(rec.History, tli)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: the archived %s: %w", name, err)
	}
	var path []timelineStep
	var begin uint64
	for _, sw := range switches {
		path = append(path, timelineStep{TLI: sw.parent, Begin: begin})
		begin = sw.at
	}
	return append(path, timelineStep{TLI: tli, Begin: begin}), nil
}

type timelineSwitch struct {
	parent uint32 // the timeline left
	at     uint64 // where the next one began
}

// parseTimelineHistory reads the text of timeline tli's history file: one
// line per ancestor, oldest first, "parent<TAB>switch LSN<TAB>reason";
// blank lines and lines starting with # are comments.
func parseTimelineHistory(text string, tli uint32) ([]timelineSwitch, error) {
	var out []timelineSwitch
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		parent, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		at, err := ParseLSN(f[1])
		if err != nil {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		if n := len(out); n > 0 && (uint32(parent) <= out[n-1].parent || at < out[n-1].at) {
			return nil, fmt.Errorf("line %q goes back in time", line)
		}
		out = append(out, timelineSwitch{parent: uint32(parent), at: at})
	}
	if n := len(out); n == 0 || out[n-1].parent >= tli {
		return nil, fmt.Errorf("no ancestor before timeline %d", tli)
	}
	return out, nil
}

// segmentTimeline is the timeline of a segment's name.
func segmentTimeline(name string) uint32 {
	n, _ := strconv.ParseUint(name[:8], 16, 32)
	return uint32(n)
}

// segmentNumber is the number of a segment of segSize bytes from its name.
func segmentNumber(name string, segSize int64) uint64 {
	log, _ := strconv.ParseUint(name[8:16], 16, 32)
	seg, _ := strconv.ParseUint(name[16:24], 16, 32)
	return log*(uint64(0x100000000)/uint64(segSize)) + seg
}
