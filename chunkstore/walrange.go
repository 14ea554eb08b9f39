package chunkstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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
	// GapAfter is set when the archive holds later segments of the
	// timeline past a missing one: LastSegment's successor is missing.
	GapAfter string `json:"gap_after,omitempty"`
}

// WALCoverage reads, from the WAL archive of the repository in dir, how far
// rp can be recovered on its timeline. It creates nothing.
func WALCoverage(dir string, rp *RestorePoint) (*Coverage, error) {
	w := rp.WAL
	if w == nil || w.End == "" || w.SegmentSize <= 0 {
		return nil, nil
	}
	end, err := ParseLSN(w.End)
	if err != nil {
		return nil, err
	}
	if end > 0 {
		end-- // End is just past the last record
	}
	seg := end / uint64(w.SegmentSize)
	shards, err := filepath.Glob(filepath.Join(dir, "wal", fmt.Sprintf("%08X", w.Timeline)+"*"))
	if err != nil {
		return nil, err
	}
	held := map[string]bool{}
	var last string // the greatest segment name of the timeline
	for _, sh := range shards {
		ents, err := os.ReadDir(sh)
		if err != nil {
			return nil, fmt.Errorf("chunkstore: reading the WAL archive: %w", err)
		}
		for _, e := range ents {
			name, ok := strings.CutSuffix(e.Name(), ".json")
			if !ok || len(name) != 24 || !walName.MatchString(name) {
				continue
			}
			held[name] = true
			last = max(last, name)
		}
	}
	c := &Coverage{}
	for held[segmentName(w.Timeline, seg, w.SegmentSize)] {
		c.LastSegment = segmentName(w.Timeline, seg, w.SegmentSize)
		seg++
	}
	if c.LastSegment == "" {
		return c, nil
	}
	if last > c.LastSegment {
		c.GapAfter = c.LastSegment
	}
	rec, err := readWALRecord(filepath.Join(dir, "wal", c.LastSegment[:16], c.LastSegment+".json"))
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil // pruned meanwhile
	}
	if err != nil {
		return nil, err
	}
	c.To = rec.Pushed
	return c, nil
}
