package chunkstore

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/chunkstore/objstore"
	"github.com/pgporter/pgporter/internal/pgcatalog"
)

// ErrNoRestorePoint is matched by the error of Resolve for an unknown ID, or
// for "latest" in a repository without restore points.
var ErrNoRestorePoint = errors.New("chunkstore: no such restore point")

// DBInfo describes one database of a restore point.
type DBInfo struct {
	Name string `json:"name"` // empty when the backup could not learn it
	OID  uint32 `json:"oid"`
	Size int64  `json:"size"` // bytes under base/<oid>
	// The database's locale settings, as pg_database has them, recorded by
	// a backup from a server (empty otherwise): an export checks that its
	// host has them before it mounts anything.
	Collate   string `json:"collate,omitempty"`
	Ctype     string `json:"ctype,omitempty"`
	Provider  string `json:"locale_provider,omitempty"` // "c" libc, "i" ICU, "b" builtin
	ICULocale string `json:"icu_locale,omitempty"`
	// Libraries are the libraries of the database's C functions (with
	// their extensions), recorded by a backup from a server: an export
	// checks that its host has them before it mounts anything. nil: not
	// known (the backup could not connect to the database); empty: none.
	Libraries []pgcatalog.CLibrary `json:"c_libraries"`
}

// RestorePoint is the catalog entry of one backup: what it is, and where
// its tree is.
type RestorePoint struct {
	ID         string       `json:"id"` // "rp-20261125T231500Z-ab12cd": sorts by time
	Time       time.Time    `json:"time"`
	PGVersion  string       `json:"pg_version"` // PG_VERSION, e.g. "15"
	SystemID   string       `json:"system_id"`  // the cluster's database system identifier
	Databases  []DBInfo     `json:"databases"`
	SourceHost string       `json:"source_host"`
	Size       int64        `json:"size"`        // plain bytes of all files
	StoredSize int64        `json:"stored_size"` // bytes this backup added to the store
	Files      int          `json:"files"`
	Tree       []chunk.ID   `json:"tree"`   // chunks holding the encoded tree (see EncodeTree)
	Params     chunk.Params `json:"params"` // how files were chunked
	Format     int          `json:"format"` // restore point format, pointFormat
	// WAL is the WAL a backup from a running server spans, which a WAL
	// archive continues; nil for a backup of a data directory.
	WAL *WALRange `json:"wal,omitempty"`
	// Tablespaces are the backed-up server's tablespaces outside its data
	// directory. Each one's content is in the tree as the directory
	// pg_tblspc/<OID> (where the server had a symbolic link to Location),
	// which PostgreSQL reads as it would through the link.
	Tablespaces []Tablespace `json:"tablespaces,omitempty"`
}

// Tablespace is a tablespace outside the data directory.
type Tablespace struct {
	OID      uint32 `json:"oid"`
	Name     string `json:"name"`
	Location string `json:"location"` // where the server keeps it
}

// pointFormat is the version of the restore point files this build writes
// and reads.
const pointFormat = 1

// Repo is a backup repository in a directory:
//
//	DIR/chunks/            a Local chunk store holding file contents and trees
//	DIR/points/<id>.json   one restore point each, written temp+fsync+rename
//
// A restore point file appears only once everything it refers to is durable
// in the store, so a listed point is always complete. Any number of
// processes may open a repository at once (see Local); files that root
// creates in a repository another user owns go to that user.
type Repo struct {
	dir   string
	log   *slog.Logger
	store *Local
	owner owner
	lock  *repoLock // nil for LockNone, and on object storage

	remote objstore.Backend // nil for a directory; else dir is its URL (repo_remote.go)
	cache  string           // with remote: this host's cache of it

	key   *crypt.MasterKey // nil for a plain repository (repokeys.go)
	keyID string           // the key file that unlocked key
}

// tmpMaxAge is the age past which a restore point's temporary file is a
// leftover of a crashed backup: writing one takes milliseconds.
const tmpMaxAge = time.Hour

// OpenRepo opens the repository in dir, creating it on first use, under
// a shared lock. log may be nil.
func OpenRepo(ctx context.Context, dir string, log *slog.Logger) (*Repo, error) {
	return OpenRepoWith(ctx, dir, RepoOptions{Store: LocalOptions{Logger: log}})
}

// RepoOptions configure OpenRepoWith.
type RepoOptions struct {
	Store LocalOptions // the repository's chunk store; Store.Logger logs
	// Lock is the repository lock to take: LockShared (the zero value)
	// for whatever reads or writes restore points, LockExclusive for
	// forget and prune, LockNone for wal-push, which never depends on a
	// chunk a prune may remove (Store.WriteOnly).
	Lock LockMode
	// LockWait is how long an open waits for a lock another process holds
	// in the way (a prune) before it fails with ErrRepoLocked; 0: not at
	// all. wal-fetch waits: PostgreSQL takes its failure for the end of
	// the archive.
	LockWait time.Duration

	key *unlockedKey // InitRepo's, unlocked already
}

// unlock returns the master key of the repository of f, unless o carries
// it: nil for a plain repository.
func (o RepoOptions) unlock(ctx context.Context, f repoFiles) (unlockedKey, error) {
	if o.key != nil {
		return *o.key, nil
	}
	k, id, err := f.repoKey(ctx)
	return unlockedKey{k, id}, err
}

// LockMode is the repository lock an open takes (RepoOptions.Lock).
type LockMode int

// Lock modes.
const (
	LockShared LockMode = iota
	LockExclusive
	LockNone
)

// lockRepo takes o.Lock in locks, waiting up to o.LockWait for the
// processes in the way.
func lockRepo(ctx context.Context, locks lockStore, o RepoOptions, log *slog.Logger) (*repoLock, error) {
	deadline := time.Now().Add(o.LockWait)
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		lock, err := takeLock(ctx, locks, o.Lock == LockExclusive, lockPurpose())
		if !errors.Is(err, ErrRepoLocked) || time.Now().Add(wait).After(deadline) {
			return lock, err
		}
		log.Info("waiting for the repository", "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, errors.Join(ctx.Err(), err)
		case <-t.C:
		}
	}
}

// OpenRepoWith is OpenRepo with options. dir may be a repository URL
// (IsRepoURL).
func OpenRepoWith(ctx context.Context, dir string, o RepoOptions) (*Repo, error) {
	if IsRepoURL(dir) {
		b, err := openRepoBackend(ctx, dir, o.Store.Logger)
		if err != nil {
			return nil, err
		}
		cache, err := repoCacheDir(dir)
		if err != nil {
			return nil, err
		}
		return openRemoteRepo(ctx, dir, b, cache, o)
	}
	so := o.Store
	log := so.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Before anything is created: a --repo-password-file given for a
	// repository that does not exist yet must not make a plain one.
	key, err := o.unlock(ctx, repoFiles{dir: dir})
	if err != nil {
		return nil, err
	}
	so.Key = key.key
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("chunkstore: creating repository: %w", err)
	}
	own, err := ownerOf(dir)
	if err != nil {
		return nil, err
	}
	for _, sub := range []string{"points", "chunks"} {
		if err := own.mkdir(filepath.Join(dir, sub), dir); err != nil {
			return nil, fmt.Errorf("creating repository: %w", err)
		}
	}
	var lock *repoLock
	if o.Lock != LockNone {
		locks, err := dirLockStore(dir, own)
		if err != nil {
			return nil, err
		}
		if lock, err = lockRepo(ctx, locks, o, log); err != nil {
			return nil, err
		}
	}
	st, err := OpenLocal(filepath.Join(dir, "chunks"), so)
	if err != nil {
		if lock != nil {
			_ = lock.release()
		}
		return nil, err
	}
	r := &Repo{dir: dir, log: log, store: st, owner: own, lock: lock, key: key.key, keyID: key.keyID}
	// Other processes may be writing restore points right now: only old
	// temporary files are leftovers of a crashed backup.
	tmps, _ := filepath.Glob(filepath.Join(r.pointsDir(), ".tmp-*"))
	for _, t := range tmps {
		if fi, err := os.Stat(t); err != nil || time.Since(fi.ModTime()) < tmpMaxAge {
			continue
		}
		if err := os.Remove(t); err != nil {
			log.Warn("removing leftover restore point temp file", "path", t, "err", err)
		}
	}
	return r, nil
}

func (r *Repo) pointsDir() string { return filepath.Join(r.dir, "points") }

// Close closes the store and releases the lock. It may be called twice.
func (r *Repo) Close() error {
	err := r.store.Close()
	if r.lock != nil {
		err = errors.Join(err, r.lock.release())
	}
	return err
}

// Store returns the repository's chunk store.
func (r *Repo) Store() Store {
	if r.remote != nil {
		return RemoteStore{r.store}
	}
	return r.store
}

// List returns every restore point, oldest first.
func (r *Repo) List() ([]RestorePoint, error) {
	if r.remote != nil {
		return listRemotePoints(context.Background(), r.remote, r.cache, r.key)
	}
	return listPoints(r.key, r.pointsDir())
}

// ErrNotRepo is returned by ListRepo for a directory that is not a
// repository.
var ErrNotRepo = errors.New("chunkstore: not a repository")

// ListRepo returns the restore points of the repository in dir, oldest
// first, without opening its store: it works while another process holds
// the repository open, and creates nothing (but a cache, for a URL).
func ListRepo(ctx context.Context, dir string) ([]RestorePoint, error) {
	if IsRepoURL(dir) {
		return listRemoteRepo(ctx, dir)
	}
	pd := filepath.Join(dir, "points")
	if fi, err := os.Stat(pd); errors.Is(err, fs.ErrPermission) {
		// Not "not a repository": one this user may not read (exit 5).
		return nil, fmt.Errorf("reading repository %s: %w", dir, err)
	} else if err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s has no points directory", ErrNotRepo, dir)
	}
	key, _, err := repoFiles{dir: dir}.repoKey(ctx)
	if err != nil {
		return nil, err
	}
	return listPoints(key, pd)
}

func listPoints(key *crypt.MasterKey, pointsDir string) ([]RestorePoint, error) {
	ents, err := os.ReadDir(pointsDir)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: listing restore points: %w", err)
	}
	var rps []RestorePoint
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") || !e.Type().IsRegular() {
			continue
		}
		rp, err := readPoint(key, filepath.Join(pointsDir, name))
		if err != nil {
			return nil, err
		}
		rps = append(rps, *rp)
	}
	sortPoints(rps)
	return rps, nil
}

func sortPoints(rps []RestorePoint) {
	slices.SortFunc(rps, func(a, b RestorePoint) int {
		return cmp.Or(a.Time.Compare(b.Time), cmp.Compare(a.ID, b.ID))
	})
}

func readPoint(key *crypt.MasterKey, p string) (*RestorePoint, error) {
	b, err := readFileMax(p, maxPointObject)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: reading restore point: %w", err)
	}
	return decodePoint(key, b, filepath.Base(p))
}

// decodePoint decodes the restore point file (or object) name, sealed
// under key unless key is nil.
func decodePoint(key *crypt.MasterKey, b []byte, name string) (*RestorePoint, error) {
	b, err := openFile(key, crypt.KindPoint, strings.TrimSuffix(name, ".json"), "restore point "+name, b)
	if err != nil {
		return nil, err
	}
	var rp RestorePoint
	if err := json.Unmarshal(b, &rp); err != nil {
		return nil, fmt.Errorf("chunkstore: decoding restore point %s: %w", name, err)
	}
	if rp.Format != pointFormat {
		return nil, fmt.Errorf("chunkstore: restore point %s has format %d, this build reads %d", name, rp.Format, pointFormat)
	}
	if rp.ID+".json" != name {
		return nil, fmt.Errorf("chunkstore: restore point file %s holds ID %q", name, rp.ID)
	}
	return &rp, nil
}

// Resolve returns the restore point named id, or the newest one for
// "latest". An unknown ID gives an error matching ErrNoRestorePoint.
func (r *Repo) Resolve(id string) (*RestorePoint, error) {
	rps, err := r.List()
	if err != nil {
		return nil, err
	}
	if id == "latest" {
		if len(rps) == 0 {
			return nil, fmt.Errorf("%w: the repository has no restore points", ErrNoRestorePoint)
		}
		return &rps[len(rps)-1], nil
	}
	for i := range rps {
		if rps[i].ID == id {
			return &rps[i], nil
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrNoRestorePoint, id)
}

// Tree reads and decodes rp's tree: sorted by Path, parents before children.
func (r *Repo) Tree(ctx context.Context, rp *RestorePoint) ([]Node, error) {
	nodes, err := GetTree(ctx, r.store, rp.Tree)
	if err != nil {
		return nil, fmt.Errorf("restore point %s: %w", rp.ID, err)
	}
	return nodes, nil
}

// newPointID returns "rp-<UTC time>-<6 random hex digits>".
func newPointID(t time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return "rp-" + t.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// writePoint makes rp visible: temp file, fsync, rename, directory fsync.
func (r *Repo) writePoint(ctx context.Context, rp *RestorePoint) error {
	b, err := encodePoint(rp)
	if err != nil {
		return err
	}
	b = sealFile(r.key, crypt.KindPoint, rp.ID, b)
	if r.remote != nil {
		return r.writeRemotePoint(ctx, b, rp)
	}
	f, err := os.CreateTemp(r.pointsDir(), ".tmp-")
	if err != nil {
		return fmt.Errorf("chunkstore: writing restore point: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	err = errors.Join(err, f.Close())
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = r.owner.path(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(r.pointsDir(), rp.ID+".json"))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("chunkstore: writing restore point: %w", err)
	}
	return syncDir(r.pointsDir())
}

// packBytes is how many bytes of pack records this process's store has
// written: the growth across a backup is what it stored, whatever other
// processes write meanwhile.
func (r *Repo) packBytes() int64 { return r.store.written.Load() }
