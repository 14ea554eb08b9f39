package chunkstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/chunkstore/objstore"
)

// The outcomes of the operations that matter for operations, kept in the
// repository for monitoring (docs/design/0009-monitoring.md):
//
//	DIR/status/<op>.json   the last run of op, its last success and failure, its failures ever
//	DIR/status/.lock       flock, held while one of them is read, changed and replaced
//
// Each file is replaced whole (temp, fsync, rename), so a reader, which
// takes no lock, sees the old record or the new one. Only writers take the
// lock, for the microseconds of a read-modify-write, so that two runs
// ending at once do not lose a failure from the count.

// Op names an operation whose outcomes a repository records.
type Op string

// The operations a repository records.
const (
	OpBackup        Op = "backup"
	OpCheck         Op = "check"           // check without --read-data
	OpCheckReadData Op = "check-read-data" // check --read-data, which a plain check does not replace
	OpForget        Op = "forget"
	OpPrune         Op = "prune"
	// OpWALPush records failures, and the first success after a failure
	// (RecordRecovery): the newest WAL record tells of every other success.
	OpWALPush Op = "wal-push"
)

// Ops lists every Op, in a stable order.
var Ops = []Op{OpBackup, OpCheck, OpCheckReadData, OpForget, OpPrune, OpWALPush}

func (o Op) valid() bool {
	for _, k := range Ops {
		if o == k {
			return true
		}
	}
	return false
}

// statusFormat is the version of the status files this build writes and
// reads.
const statusFormat = 1

// maxStatusFile bounds a status file read: a record holds one error text.
const maxStatusFile = 64 << 10

// maxStatusError bounds the error text kept of a failure.
const maxStatusError = 2048

// Run is one run of an operation, as RecordRun records it.
type Run struct {
	Op    Op
	Start time.Time
	End   time.Time
	Err   error  // nil: it succeeded
	Host  string // empty: this host's name
}

// RunRecord is a run as a status file keeps it.
type RunRecord struct {
	Time    time.Time `json:"time"` // when it ended
	OK      bool      `json:"ok"`
	Error   string    `json:"error,omitempty"`
	Seconds float64   `json:"seconds"`
	Host    string    `json:"host"`
}

// OpStatus is the status file of one operation.
type OpStatus struct {
	Op          Op        `json:"op"`
	Last        RunRecord `json:"last"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastFailure time.Time `json:"last_failure,omitzero"`
	LastError   string    `json:"last_error,omitempty"` // of the last failure
	Failures    uint64    `json:"failures"`             // failures recorded, ever: a counter
	Format      int       `json:"format"`
}

func statusDir(dir string) string { return filepath.Join(dir, "status") }

func statusPath(dir string, op Op) string { return filepath.Join(statusDir(dir), string(op)+".json") }

// RecordRun records run in the status file of run.Op in the repository in
// dir: the last run, and its success or failure. It fails with ErrNotRepo
// for a directory that is not a repository, which it never creates. Files
// it creates go to the repository's owner.
func RecordRun(ctx context.Context, dir string, run Run) error {
	return recordRun(ctx, dir, run, false)
}

// RecordRecovery records run, a success, only when the last run recorded
// for its Op failed: for an operation that runs too often to record every
// success (wal-push), it costs one small read while nothing fails.
func RecordRecovery(ctx context.Context, dir string, run Run) error {
	if run.Err != nil {
		return RecordRun(ctx, dir, run)
	}
	if IsRepoURL(dir) {
		return recordRun(ctx, dir, run, true) // it reads the last record anyway
	}
	// Its mere existence says a failure may be recorded: no key needed.
	if _, err := os.Stat(statusPath(dir, run.Op)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return recordRun(ctx, dir, run, true)
}

func recordRun(ctx context.Context, dir string, run Run, onlyAfterFailure bool) error {
	if !run.Op.valid() {
		return fmt.Errorf("chunkstore: recording a run: unknown operation %q", run.Op)
	}
	if IsRepoURL(dir) {
		return recordRemoteRun(ctx, dir, run, onlyAfterFailure)
	}
	if fi, err := os.Stat(filepath.Join(dir, "points")); err != nil || !fi.IsDir() {
		return fmt.Errorf("%w: %s has no points directory", ErrNotRepo, dir)
	}
	key, _, err := repoFiles{dir: dir}.repoKey(ctx)
	if err != nil {
		return err
	}
	own, err := ownerOf(dir)
	if err != nil {
		return err
	}
	sd := statusDir(dir)
	if err := own.mkdir(sd, dir); err != nil {
		return fmt.Errorf("recording a run: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(sd, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("chunkstore: recording a run: %w", err)
	}
	defer lock.Close()
	if err := own.file(lock); err != nil {
		return err
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("chunkstore: recording a run: %w", err)
	}
	p := statusPath(dir, run.Op)
	st, err := readOpStatus(key, p)
	if err != nil {
		// None yet, or a damaged one, which is replaced: its failure count
		// restarts, which a Prometheus counter takes for a reset.
		st = &OpStatus{}
	}
	if onlyAfterFailure && (st.Format == 0 || st.Last.OK) {
		return nil // recorded meanwhile
	}
	st.update(run)
	b, err := encodeOpStatus(key, st)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(p, b, own); err != nil {
		return fmt.Errorf("chunkstore: recording a run: %w", err)
	}
	return nil
}

func (st *OpStatus) update(run Run) {
	host := run.Host
	if host == "" {
		host, _ = os.Hostname()
	}
	end := run.End.UTC()
	st.Op, st.Format = run.Op, statusFormat
	st.Last = RunRecord{Time: end, OK: run.Err == nil, Seconds: max(run.End.Sub(run.Start), 0).Seconds(), Host: host}
	if run.Err == nil {
		st.LastSuccess = end
		return
	}
	msg := run.Err.Error()
	if len(msg) > maxStatusError {
		msg = strings.ToValidUTF8(msg[:maxStatusError], "") + "…"
	}
	st.Last.Error, st.LastError, st.LastFailure = msg, msg, end
	st.Failures++
}

// writeFileAtomic replaces p with b: a temporary file beside it, fsync,
// mode 0644 and the owner's ownership, rename, directory fsync.
func writeFileAtomic(p string, b []byte, own owner) error {
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = own.file(f)
	}
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		return err
	}
	return syncDir(filepath.Dir(p))
}

// encodeOpStatus is st's status file or object, sealed under key unless
// key is nil.
func encodeOpStatus(key *crypt.MasterKey, st *OpStatus) ([]byte, error) {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("chunkstore: encoding a status record: %w", err)
	}
	return sealFile(key, crypt.KindStatus, string(st.Op), append(b, '\n')), nil
}

func readOpStatus(key *crypt.MasterKey, p string) (*OpStatus, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStatusFile+1))
	if err != nil {
		return nil, fmt.Errorf("chunkstore: reading %s: %w", p, err)
	}
	if len(b) > maxStatusFile {
		return nil, fmt.Errorf("chunkstore: %s is larger than %d bytes", p, maxStatusFile)
	}
	return decodeOpStatus(key, b, p, Op(strings.TrimSuffix(filepath.Base(p), ".json")))
}

// decodeOpStatus decodes the status record of op read from where, sealed
// under key unless key is nil.
func decodeOpStatus(key *crypt.MasterKey, b []byte, where string, op Op) (*OpStatus, error) {
	b, err := openFile(key, crypt.KindStatus, string(op), where, b)
	if err != nil {
		return nil, err
	}
	var st OpStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("chunkstore: decoding %s: %w", where, err)
	}
	if st.Format != statusFormat {
		return nil, fmt.Errorf("chunkstore: %s has format %d, this build reads %d", where, st.Format, statusFormat)
	}
	if st.Op != op {
		return nil, fmt.Errorf("chunkstore: %s holds the status of %q", where, st.Op)
	}
	return &st, nil
}

// ReadStatus returns the status files of the repository in dir, by
// operation; an operation never recorded has none. It takes no lock and
// creates nothing. A damaged file is an error naming it.
func ReadStatus(ctx context.Context, dir string) (map[Op]*OpStatus, error) {
	var b objstore.Backend
	if IsRepoURL(dir) {
		var err error
		if b, err = openRepoBackend(ctx, dir, nil); err != nil {
			return nil, err
		}
	}
	key, _, err := repoFiles{dir: dir, remote: b}.repoKey(ctx)
	if err != nil {
		return nil, err
	}
	out := map[Op]*OpStatus{}
	for _, op := range Ops {
		var (
			st  *OpStatus
			err error
		)
		if b != nil {
			st, _, err = readRemoteOpStatus(ctx, b, op, key)
		} else {
			st, err = readOpStatus(key, statusPath(dir, op))
		}
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[op] = st
	}
	return out, nil
}

// On object storage a status record is never rewritten: each run writes a
// new object status/<op>/<newest first>-<random>.json (the first part is
// the end time subtracted from the largest time, so that a listing, in
// order of name, gives the newest first), then deletes the older ones. Two
// runs ending at once may both build on the same previous record, so that
// the failure count misses one of them: the price of having no lock.

func statusPrefix(op Op) string { return "status/" + string(op) + "/" }

// readRemoteOpStatus returns the newest status record of op on b, and the
// names of all of op's records, newest first.
func readRemoteOpStatus(ctx context.Context, b objstore.Backend, op Op, key *crypt.MasterKey) (*OpStatus, []string, error) {
	var names []string
	for o, err := range b.List(ctx, statusPrefix(op)) {
		if err != nil {
			return nil, nil, fmt.Errorf("chunkstore: reading the recorded outcomes: %w", err)
		}
		if strings.HasSuffix(o.Name, ".json") && o.Size <= maxStatusFile {
			names = append(names, o.Name)
		}
	}
	for i, name := range names {
		data, err := b.Get(ctx, name, nil)
		if errors.Is(err, objstore.ErrNotFound) {
			continue // replaced meanwhile
		}
		if err != nil {
			return nil, nil, fmt.Errorf("chunkstore: reading %s: %w", name, err)
		}
		st, err := decodeOpStatus(key, data, name, op)
		return st, names[i:], err
	}
	return nil, nil, fs.ErrNotExist
}

// recordRemoteRun is recordRun for a repository on object storage.
func recordRemoteRun(ctx context.Context, repoURL string, run Run, onlyAfterFailure bool) error {
	b, err := openRepoBackend(ctx, repoURL, nil)
	if err != nil {
		return err
	}
	if _, err := b.Stat(ctx, remoteFormat); errors.Is(err, objstore.ErrNotFound) {
		return fmt.Errorf("%w: %s holds no repository", ErrNotRepo, repoURL)
	}
	key, _, err := repoFiles{dir: repoURL, remote: b}.repoKey(ctx)
	if err != nil {
		return err
	}
	st, old, err := readRemoteOpStatus(ctx, b, run.Op, key)
	if err != nil {
		st = &OpStatus{} // none yet, or damaged: replaced, its count restarts
	}
	if onlyAfterFailure && (st.Format == 0 || st.Last.OK) {
		return nil
	}
	st.update(run)
	data, err := encodeOpStatus(key, st)
	if err != nil {
		return err
	}
	name := fmt.Sprintf("%s%016x-%08x.json", statusPrefix(run.Op), uint64(math.MaxInt64-run.End.UnixNano()), uint32(randUint64()))
	if err := b.PutIfAbsent(ctx, name, bytes.NewReader(data), int64(len(data))); err != nil {
		return fmt.Errorf("chunkstore: recording a run: %w", err)
	}
	for _, n := range old {
		_ = b.Delete(ctx, n) // an old record left is read past: the newest wins
	}
	return nil
}
