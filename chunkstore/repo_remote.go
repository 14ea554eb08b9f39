package chunkstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/zeebo/blake3"

	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/chunkstore/objstore"
)

// A repository on object storage (s3://BUCKET/PREFIX) holds the same
// things as one in a directory, as objects (docs/design/0011):
//
//	chunks/...             the chunk store's packs and runs (remote.go)
//	points/<id>.json       restore points, created once (PutIfAbsent)
//	wal/<shard>/<name>.json  WAL records, created once
//	locks/<16 hex>.json    repository locks, as lock.go takes them
//	status/<op>/...        recorded outcomes of runs (status.go)
//	config, keys/<id>      an encrypted repository's (repokeys.go)
//
// Every command that takes --repo works on it.
const (
	remotePoints = "points/"
	remoteLocks  = "locks/"
)

// objLocks keeps a repository's locks as objects under locks/, each
// created once under a fresh random name (lock.go says how they are
// taken): S3 lists an object as soon as its PUT has returned, so two
// processes that race both see each other.
type objLocks struct{ b objstore.Backend }

func (o objLocks) put(ctx context.Context, info lockInfo) (string, error) {
	data, err := json.Marshal(info)
	if err != nil {
		return "", err
	}
	name := fmt.Sprintf("%016x.json", randUint64())
	if err := o.b.PutIfAbsent(ctx, remoteLocks+name, bytes.NewReader(data), int64(len(data))); err != nil {
		return "", fmt.Errorf("writing a repository lock: %w", err)
	}
	return name, nil
}

// maxLockObject is the most a lock object is read of: a lock is a few
// hundred bytes of JSON.
const maxLockObject = 64 << 10

func (o objLocks) list(ctx context.Context) (map[string][]byte, error) {
	out := map[string][]byte{}
	for obj, err := range o.b.List(ctx, remoteLocks) {
		if err != nil {
			return nil, fmt.Errorf("reading the repository's locks: %w", err)
		}
		name := strings.TrimPrefix(obj.Name, remoteLocks)
		if !strings.HasSuffix(name, ".json") || strings.Contains(name, "/") {
			continue
		}
		if obj.Size > maxLockObject {
			// Not one of ours, and not read (a bucket's objects are
			// hostile until checked): an unreadable lock, held.
			out[name] = nil
			continue
		}
		data, err := o.b.Get(ctx, obj.Name, nil)
		if errors.Is(err, objstore.ErrNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("reading the repository's locks: %w", err)
		}
		out[name] = data
	}
	return out, nil
}

func (o objLocks) remove(ctx context.Context, name string) error {
	if err := o.b.Delete(ctx, remoteLocks+name); err != nil {
		return fmt.Errorf("removing the repository lock: %w", err)
	}
	return nil
}

// IsRepoURL reports whether repo names a repository on object storage
// rather than a directory.
func IsRepoURL(repo string) bool { return strings.HasPrefix(repo, "s3://") }

// AbsRepo returns repo as an absolute directory, or the URL as it is.
func AbsRepo(repo string) (string, error) {
	if IsRepoURL(repo) {
		return repo, nil
	}
	return filepath.Abs(repo)
}

// openRepoBackend opens the object store of a repository URL, its
// requests retried within objstore's bounds. Path-style addressing is
// PGPORTER_S3_PATH_STYLE's choice ("1" or "0"); unset, it is used for any
// endpoint set through AWS_ENDPOINT_URL or a profile other than AWS's own,
// as most other servers want it.
func openRepoBackend(ctx context.Context, repoURL string, log *slog.Logger) (objstore.Backend, error) {
	pathStyle, err := s3PathStyle()
	if err != nil {
		return nil, err
	}
	s, err := objstore.OpenS3(ctx, repoURL, objstore.S3Options{PathStyle: pathStyle})
	if err != nil {
		return nil, err
	}
	p := repoRetry
	if log != nil {
		p.Retrying = func(err error, wait time.Duration, until time.Time) {
			log.Warn("object store request failed; retrying", "repo", repoURL, "in", wait.Round(time.Millisecond), "until", until.Format(time.TimeOnly), "err", err)
		}
	}
	return objstore.WithRetry(s, p), nil
}

// repoRetry is how a repository's requests are retried: for up to two
// minutes, long enough to ride out a server's restart (SeaweedFS refuses
// writes for 15 s after one), with waits of up to 10 s.
var repoRetry = objstore.RetryPolicy{MaxAttempts: 15, MaxTotal: 2 * time.Minute}

func s3PathStyle() (bool, error) {
	if v, ok := os.LookupEnv("PGPORTER_S3_PATH_STYLE"); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("PGPORTER_S3_PATH_STYLE=%q: want 1 or 0", v)
		}
		return b, nil
	}
	ep := os.Getenv("AWS_ENDPOINT_URL_S3")
	if ep == "" {
		ep = os.Getenv("AWS_ENDPOINT_URL")
	}
	if ep == "" {
		return false, nil
	}
	u, err := url.Parse(ep)
	return err == nil && !strings.HasSuffix(u.Hostname(), ".amazonaws.com"), nil
}

// repoCacheDir is where this host caches the repository at repoURL: the
// index runs it has read, the restore points, and the spools of packs
// being written. PGPORTER_CACHE_DIR, else $XDG_CACHE_HOME/pgporter, else
// ~/.cache/pgporter; then repos/<hash of the URL>.
func repoCacheDir(repoURL string) (string, error) {
	base := os.Getenv("PGPORTER_CACHE_DIR")
	if base == "" {
		d, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("choosing the repository cache (set PGPORTER_CACHE_DIR): %w", err)
		}
		base = filepath.Join(d, "pgporter")
	}
	sum := blake3.Sum256([]byte(repoURL))
	return filepath.Join(base, "repos", fmt.Sprintf("%x", sum[:8])), nil
}

// openRemoteRepo opens the repository on b, caching in cache.
func openRemoteRepo(ctx context.Context, repoURL string, b objstore.Backend, cache string, o RepoOptions) (*Repo, error) {
	if err := os.MkdirAll(filepath.Join(cache, "points"), 0o700); err != nil {
		return nil, fmt.Errorf("creating the repository cache: %w", err)
	}
	own, err := ownerOf(cache)
	if err != nil {
		return nil, err
	}
	key, err := o.unlock(ctx, repoFiles{dir: repoURL, remote: b})
	if err != nil {
		return nil, err
	}
	so := o.Store
	so.Remote = b
	so.Key = key.key
	log := so.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var lock *repoLock // none for wal-push (LockNone), as on a directory
	if o.Lock != LockNone {
		if lock, err = lockRepo(ctx, objLocks{b}, o, log); err != nil {
			return nil, err
		}
	}
	st, err := openLocal(ctx, filepath.Join(cache, "chunks"), so)
	if err != nil {
		if lock != nil {
			err = errors.Join(err, lock.release())
		}
		return nil, err
	}
	return &Repo{dir: repoURL, log: log, store: st, owner: own, lock: lock, remote: b, cache: cache, key: key.key, keyID: key.keyID}, nil
}

// maxPointObject is the most a restore point file or object is read of:
// its tree is in chunks, so a point is its databases and the IDs of those
// chunks, a few kB (16 MiB would list a quarter of a million tree chunks).
const maxPointObject = 16 << 20

// listRemotePoints lists the restore points of the repository on b,
// oldest first. Points are immutable: each is fetched once into the cache.
func listRemotePoints(ctx context.Context, b objstore.Backend, cache string, key *crypt.MasterKey) ([]RestorePoint, error) {
	var rps []RestorePoint
	for o, err := range b.List(ctx, remotePoints) {
		if err != nil {
			return nil, fmt.Errorf("listing restore points: %w", err)
		}
		name := strings.TrimPrefix(o.Name, remotePoints)
		if !strings.HasSuffix(name, ".json") || strings.Contains(name, "/") {
			continue
		}
		if o.Size > maxPointObject {
			// Not read: a bucket's objects are hostile until checked.
			return nil, fmt.Errorf("chunkstore: restore point %s is %d bytes, more than any restore point (%d): not read", name, o.Size, maxPointObject)
		}
		rp, err := readRemotePoint(ctx, b, cache, name, key)
		if err != nil {
			return nil, err
		}
		rps = append(rps, *rp)
	}
	sortPoints(rps)
	return rps, nil
}

func readRemotePoint(ctx context.Context, b objstore.Backend, cache, name string, key *crypt.MasterKey) (*RestorePoint, error) {
	cached := filepath.Join(cache, "points", name)
	if data, err := os.ReadFile(cached); err == nil {
		if rp, err := decodePoint(key, data, name); err == nil {
			return rp, nil
		}
		// Written unsynced: a crash can leave it torn. The object is the truth.
		_ = os.Remove(cached)
	}
	data, err := b.Get(ctx, remotePoints+name, nil)
	if err != nil {
		return nil, fmt.Errorf("reading restore point %s: %w", name, err)
	}
	rp, err := decodePoint(key, data, name)
	if err != nil {
		return nil, err
	}
	if err := writeCacheFile(cached, data); err != nil {
		return nil, fmt.Errorf("caching restore point %s: %w", name, err)
	}
	return rp, nil
}

// writeCacheFile writes a cache file whole or not at all; no fsync: a
// cache is refetched when it does not decode.
func writeCacheFile(p string, data []byte) error {
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	err = errors.Join(err, f.Close())
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}

// writeRemotePoint makes rp visible: one object, created once.
func (r *Repo) writeRemotePoint(ctx context.Context, data []byte, rp *RestorePoint) error {
	name := remotePoints + rp.ID + ".json"
	if err := r.remote.PutIfAbsent(ctx, name, strings.NewReader(string(data)), int64(len(data))); err != nil {
		return fmt.Errorf("chunkstore: writing restore point: %w", err)
	}
	return nil
}

// listRemoteRepo is ListRepo for a URL: a repository exists once its
// chunk store's format object does.
func listRemoteRepo(ctx context.Context, repoURL string) ([]RestorePoint, error) {
	b, err := openRepoBackend(ctx, repoURL, slog.Default())
	if err != nil {
		return nil, err
	}
	if _, err := b.Stat(ctx, remoteFormat); errors.Is(err, objstore.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s holds no repository (pgporter creates objects, never buckets: does the bucket exist?)", ErrNotRepo, repoURL)
	} else if err != nil {
		return nil, fmt.Errorf("reading %s: %w", repoURL, err)
	}
	cache, err := repoCacheDir(repoURL)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cache, "points"), 0o700); err != nil {
		return nil, fmt.Errorf("creating the repository cache: %w", err)
	}
	key, _, err := repoFiles{dir: repoURL, remote: b}.repoKey(ctx)
	if err != nil {
		return nil, err
	}
	return listRemotePoints(ctx, b, cache, key)
}

// encodePoint is a restore point's file or object.
func encodePoint(rp *RestorePoint) ([]byte, error) {
	b, err := json.MarshalIndent(rp, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("chunkstore: encoding restore point: %w", err)
	}
	return append(b, '\n'), nil
}

// forgetRemote deletes the restore point objects of points (and this
// host's cached copies). Their chunks stay until a prune.
func (r *Repo) forgetRemote(points []RestorePoint) error {
	ctx := context.Background() // bounded by the store's retries
	for _, rp := range points {
		if err := r.remote.Delete(ctx, remotePoints+rp.ID+".json"); err != nil {
			return fmt.Errorf("chunkstore: forgetting %s: %w", rp.ID, err)
		}
		_ = os.Remove(filepath.Join(r.cache, "points", rp.ID+".json"))
	}
	return nil
}

// walObject is the object of WAL file name's record: wal/SHARD/NAME.json,
// as in a directory repository (Repo.walPath).
func walObject(name string) string {
	shard := name[:8]
	if len(name) >= 24 {
		shard = name[:16]
	}
	return "wal/" + shard + "/" + name + ".json"
}

func (r *Repo) readRemoteWAL(ctx context.Context, name string) (*WALFile, error) {
	b, err := r.remote.Get(ctx, walObject(name), nil)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, fs.ErrNotExist
	}
	if err != nil {
		return nil, fmt.Errorf("chunkstore: reading WAL record: %w", err)
	}
	return decodeWALRecord(r.key, b, name+".json")
}

func (r *Repo) putRemoteWAL(ctx context.Context, rec *WALFile) error {
	b, err := encodeWALRecord(r.key, rec)
	if err != nil {
		return err
	}
	err = r.remote.PutIfAbsent(ctx, walObject(rec.Name), bytes.NewReader(b), int64(len(b)))
	if errors.Is(err, objstore.ErrExists) {
		return fs.ErrExist
	}
	if err != nil {
		return fmt.Errorf("chunkstore: writing WAL record: %w", err)
	}
	return nil
}

// remoteWALNames lists the names of the WAL files archived on b.
func remoteWALNames(ctx context.Context, b objstore.Backend) ([]string, error) {
	var names []string
	for o, err := range b.List(ctx, "wal/") {
		if err != nil {
			return nil, fmt.Errorf("chunkstore: reading the WAL archive: %w", err)
		}
		base := o.Name[strings.LastIndexByte(o.Name, '/')+1:]
		if name, ok := strings.CutSuffix(base, ".json"); ok && walName.MatchString(name) && o.Name == walObject(name) {
			names = append(names, name)
		}
	}
	return names, nil
}
