package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Health is what monitoring reads of a repository: its restore points, its
// WAL archive, the recorded outcomes of its operations, and its size.
type Health struct {
	RestorePoints int
	Newest        *RestorePoint // nil without restore points
	Bytes         int64         // of every file under the repository's directory, or object under its prefix
	WAL           WALHealth
	Ops           map[Op]*OpStatus // by operation; an operation never recorded has none
}

// WALHealth is the state of a repository's WAL archive.
type WALHealth struct {
	// Last is the newest segment archived (the greatest name: the latest
	// timeline's latest segment), "" when the archive holds none, and
	// Pushed when it was archived.
	Last   string
	Pushed time.Time
	// Point is the newest online backup (with a WAL range), nil when there
	// is none or the archive is empty; the rest describes it.
	Point *RestorePoint
	// Coverage is how far the archive takes Point, following the latest
	// timeline.
	Coverage *Coverage
	// Behind is how many bytes of WAL lie between the end of Last and
	// Point's end: WAL the archive has not received yet, so that Point
	// cannot be recovered past its own end. 0 once the archive has
	// reached it.
	Behind int64
}

// ReadHealth reads the health of the repository in dir. It takes no lock,
// creates nothing, and works while other processes use the repository;
// what it reads is as of one moment each, not of one moment together.
func ReadHealth(ctx context.Context, dir string) (*Health, error) {
	rps, err := ListRepo(ctx, dir)
	if err != nil {
		return nil, err
	}
	h := &Health{RestorePoints: len(rps)}
	if len(rps) > 0 {
		h.Newest = &rps[len(rps)-1]
	}
	if h.Ops, err = ReadStatus(ctx, dir); err != nil {
		return nil, err
	}
	if IsRepoURL(dir) {
		if h.Bytes, err = bucketBytes(ctx, dir); err != nil {
			return nil, err
		}
		if h.WAL.Last, h.WAL.Pushed, err = lastRemoteSegment(ctx, dir); err != nil {
			return nil, err
		}
	} else {
		if h.Bytes, err = dirBytes(dir); err != nil {
			return nil, err
		}
		if h.WAL.Last, h.WAL.Pushed, err = lastSegment(ctx, dir); err != nil {
			return nil, err
		}
	}
	if h.WAL.Last == "" {
		return h, nil
	}
	for i := len(rps) - 1; i >= 0; i-- {
		if w := rps[i].WAL; w != nil && w.End != "" && w.SegmentSize > 0 {
			h.WAL.Point = &rps[i]
			break
		}
	}
	if h.WAL.Point == nil {
		return h, nil
	}
	// As restore-points shows it, and export --at recovers by default.
	if h.WAL.Coverage, err = WALCoverage(ctx, dir, h.WAL.Point, TimelineLatest); err != nil {
		return nil, err
	}
	end, err := ParseLSN(h.WAL.Point.WAL.End)
	if err != nil {
		return nil, err
	}
	if archived, ok := segmentEnd(h.WAL.Last, h.WAL.Point.WAL.SegmentSize); ok && end > archived {
		h.WAL.Behind = int64(end - archived)
	}
	return h, nil
}

// dirBytes sums the sizes of the regular files under dir; files that go
// away meanwhile (a prune, a merge of index runs) are not counted.
func dirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		n += fi.Size()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("chunkstore: measuring the repository: %w", err)
	}
	return n, nil
}

// bucketBytes sums the sizes of the objects under the prefix of the
// repository at repoURL, as dirBytes does a directory's files: one listing,
// a request per 1000 objects (16 GiB of packs), no more than the listing
// of the WAL archive that ReadHealth makes anyway (an object per segment).
func bucketBytes(ctx context.Context, repoURL string) (int64, error) {
	b, err := openRepoBackend(ctx, repoURL, nil)
	if err != nil {
		return 0, err
	}
	var n int64
	for o, err := range b.List(ctx, "") {
		if err != nil {
			return 0, fmt.Errorf("chunkstore: measuring the repository: %w", err)
		}
		n += o.Size
	}
	return n, nil
}

// lastSegment returns the greatest segment name in the WAL archive of the
// repository in dir (a .partial one included) and when it was pushed; ""
// for an archive without segments.
func lastSegment(ctx context.Context, dir string) (string, time.Time, error) {
	key, _, err := repoFiles{dir: dir}.repoKey(ctx)
	if err != nil {
		return "", time.Time{}, err
	}
	wal := filepath.Join(dir, "wal")
	ents, err := os.ReadDir(wal)
	if errors.Is(err, fs.ErrNotExist) {
		return "", time.Time{}, nil
	}
	if err != nil {
		return "", time.Time{}, fmt.Errorf("chunkstore: reading the WAL archive: %w", err)
	}
	var shards []string // segments' shards: the first 16 hex digits of their names
	for _, e := range ents {
		if n := e.Name(); e.IsDir() && len(n) == 16 && walName.MatchString(n+"00000000") {
			shards = append(shards, n)
		}
	}
	slices.Sort(shards)
	for _, sh := range slices.Backward(shards) {
		recs, err := os.ReadDir(filepath.Join(wal, sh))
		if errors.Is(err, fs.ErrNotExist) {
			continue // pruned meanwhile
		}
		if err != nil {
			return "", time.Time{}, fmt.Errorf("chunkstore: reading the WAL archive: %w", err)
		}
		var last string
		for _, r := range recs {
			name, ok := strings.CutSuffix(r.Name(), ".json")
			if !ok || !walName.MatchString(name) || (len(name) != 24 && name[24:] != ".partial") {
				continue
			}
			last = max(last, name)
		}
		if last == "" {
			continue
		}
		w, err := readWALRecord(key, filepath.Join(wal, sh, last+".json"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", time.Time{}, err
		}
		return last, w.Pushed, nil
	}
	return "", time.Time{}, nil
}

// lastRemoteSegment is lastSegment for a repository on object storage.
func lastRemoteSegment(ctx context.Context, repoURL string) (string, time.Time, error) {
	a, err := OpenWALArchive(ctx, repoURL)
	if err != nil {
		return "", time.Time{}, err
	}
	names, err := a.r.walNames(ctx)
	if err != nil {
		return "", time.Time{}, err
	}
	var last string
	for _, name := range names {
		if len(name) == 24 || strings.HasSuffix(name, ".partial") {
			last = max(last, name)
		}
	}
	if last == "" {
		return "", time.Time{}, nil
	}
	w, err := a.r.readWAL(ctx, last)
	if errors.Is(err, fs.ErrNotExist) {
		return "", time.Time{}, nil // pruned meanwhile
	}
	if err != nil {
		return "", time.Time{}, err
	}
	return last, w.Pushed, nil
}

// segmentEnd is the WAL location just past the segment name (a .partial
// one counted whole), for segments of segSize bytes.
func segmentEnd(name string, segSize int64) (uint64, bool) {
	if len(name) < 24 || segSize <= 0 {
		return 0, false
	}
	log, err1 := strconv.ParseUint(name[8:16], 16, 32)
	seg, err2 := strconv.ParseUint(name[16:24], 16, 32)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	perLog := uint64(0x100000000) / uint64(segSize)
	return (log*perLog + seg + 1) * uint64(segSize), true
}
