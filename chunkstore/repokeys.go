package chunkstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zeebo/blake3"

	"github.com/pgporter/pgporter/chunkstore/crypt"
	"github.com/pgporter/pgporter/chunkstore/objstore"
)

// An encrypted repository (docs/design/0010-repository-encryption.md) has
// a config, which a plain one lacks, and key files that unlock its master
// key:
//
//	config        {"format":"pgporter-repo-1","id":…,"encryption":…,"check":…}
//	keys/<id>     key files (crypt.KeyFile), one per passphrase
//
// in its directory or under its prefix. Restore points, WAL records and
// recorded outcomes are sealed under the master key, bound to their names;
// the chunk store seals its records and MACs its runs (LocalOptions.Key).
// Locks and a prune's list of packs stay in the clear: they hold a host
// name, a PID, a command's first words and random pack names, nothing of
// the data.
const (
	repoConfigFormat = "pgporter-repo-1"
	repoEncryption   = "xchacha20poly1305-blake3-argon2id-v1"
	repoConfigName   = "config"
	repoKeysPrefix   = "keys/"
)

var (
	// ErrRepoExists is matched by InitRepo's error for a place that holds
	// a repository already.
	ErrRepoExists = errors.New("chunkstore: a repository is there already")
	// ErrPasswordForPlain is matched by the error of opening a plain (or
	// missing) repository with a passphrase file, --repo-password-file or
	// PasswordFileEnv: whoever gave one believes the repository encrypted,
	// and must not be let to write into it in the clear; nor can someone
	// who deleted an encrypted repository's config, keys and store marker
	// make the next backup write in the clear.
	ErrPasswordForPlain = errors.New("chunkstore: the repository is not encrypted: drop --repo-password-file (or " + PasswordFileEnv + ")")
)

// ErrPasswordFile is matched by the error of a passphrase file
// (--repo-password-file, PasswordFileEnv) that cannot be read: missing, a
// directory, unreadable, too large. It is a mistake in how the command was
// called, not a repository, file or permission the command works on: its
// error does not match fs.ErrNotExist or fs.ErrPermission.
var ErrPasswordFile = errors.New("chunkstore: the passphrase file cannot be read")

// passwordFileError is a passphrase file's read error, matching
// ErrPasswordFile and not its cause.
type passwordFileError struct{ err error }

func (e passwordFileError) Error() string        { return e.err.Error() }
func (e passwordFileError) Is(target error) bool { return target == ErrPasswordFile }

// repoConfig is an encrypted repository's config file or object.
type repoConfig struct {
	Format     string `json:"format"`
	ID         string `json:"id"`
	Encryption string `json:"encryption"`
	Check      string `json:"check"` // base64 of Seal(KindConfig, "config", ID)
}

// PasswordFileEnv names a passphrase file for every command that gives
// none (--repo-password-file): it comes before crypt.PasswordEnv. Like the
// flag, it is refused for a plain repository (ErrPasswordForPlain): it is
// set for one repository's jobs (a systemd unit's settings). The
// passphrase itself in crypt.PasswordEnv is not: a secret kept for a shell
// session, used by whichever repository needs one.
const PasswordFileEnv = "PGPORTER_REPO_PASSWORD_FILE"

// passwordFileKey is the context key of a --repo-password-file.
type passwordFileKey struct{}

// WithPasswordFile returns ctx carrying the --repo-password-file of the
// commands run under it: the passphrase of every encrypted repository
// opened with ctx is read from the file at path. Without one (or with
// path ""), it comes from the file PasswordFileEnv names, else
// crypt.PasswordEnv. It is read only when a
// repository turns out to be encrypted: plain repositories never ask, but
// refuse an explicit one (ErrPasswordForPlain).
func WithPasswordFile(ctx context.Context, path string) context.Context {
	return context.WithValue(ctx, passwordFileKey{}, path)
}

// explicitNone reports whether ctx says, with WithPasswordFile(ctx, ""),
// that its repository has no passphrase file: repo copy's side that was
// given none, while PasswordFileEnv may be the other side's.
func explicitNone(ctx context.Context) bool {
	p, ok := ctx.Value(passwordFileKey{}).(string)
	return ok && p == ""
}

// passwordFile is the --repo-password-file ctx carries, if any.
func passwordFile(ctx context.Context) string {
	p, _ := ctx.Value(passwordFileKey{}).(string)
	return p
}

// repoFiles reads the files of a repository that are not its chunk store:
// in a directory, or on object storage.
type repoFiles struct {
	dir    string           // the directory, or the URL
	remote objstore.Backend // nil for a directory
	owner  owner            // of a directory
}

// maxRepoFile bounds what read reads of a config or a store's format
// marker, each under 1 KiB: a bucket's objects and a repository's files
// are hostile until checked, and a config of a GiB (or one that is
// /dev/zero) would be held in memory by every command that opens it.
const maxRepoFile = 64 << 10

func (f repoFiles) read(ctx context.Context, name string) ([]byte, error) {
	if f.remote == nil {
		return readFileMax(filepath.Join(f.dir, filepath.FromSlash(name)), maxRepoFile)
	}
	b, err := getMax(ctx, f.remote, name, maxRepoFile)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
	}
	return b, err
}

// errFileTooLarge is matched by the error of a repository file or object
// larger than any of its kind: not read.
var errFileTooLarge = errors.New("more than any such file: not read")

func errTooLarge(name string, size, max int64) error {
	return fmt.Errorf("chunkstore: %s is %d bytes, %w (%d bytes at most)", name, size, errFileTooLarge, max)
}

// errNotRegular is readFileMax's error for a file that is not a regular
// one.
var errNotRegular = errors.New("not a regular file")

// readFileMax reads the regular file at p, of at most max bytes. A FIFO
// does not block it.
func readFileMax(p string, max int64) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("chunkstore: %s: %w", p, errNotRegular)
	}
	if fi.Size() > max {
		return nil, errTooLarge(p, fi.Size(), max)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(b)) > max {
		err = errTooLarge(p, fi.Size(), max)
	}
	return b, err
}

// getMax reads object name of b, of at most max bytes, fetching no more
// than its size: Get would read up to objstore.MaxRead.
func getMax(ctx context.Context, b objstore.Backend, name string, max int64) ([]byte, error) {
	size, err := b.Stat(ctx, name)
	switch {
	case err != nil:
		return nil, err
	case size > max:
		return nil, errTooLarge(name, size, max)
	case size == 0:
		return []byte{}, nil
	}
	return b.GetRange(ctx, name, 0, size, nil)
}

// create writes name once, durably; one that exists gives fs.ErrExist.
func (f repoFiles) create(ctx context.Context, name string, b []byte) error {
	if f.remote != nil {
		err := f.remote.PutIfAbsent(ctx, name, bytes.NewReader(b), int64(len(b)))
		if errors.Is(err, objstore.ErrExists) {
			return fmt.Errorf("%s: %w", name, fs.ErrExist)
		}
		return err
	}
	p := filepath.Join(f.dir, filepath.FromSlash(name))
	t, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(t.Name())
	_, err = t.Write(b)
	if err == nil {
		err = t.Chmod(0o644)
	}
	if err == nil {
		err = f.owner.file(t)
	}
	if err == nil {
		err = t.Sync()
	}
	if err = errors.Join(err, t.Close()); err != nil {
		return err
	}
	if err := os.Link(t.Name(), p); err != nil {
		return err
	}
	return syncDir(filepath.Dir(p))
}

// keyStore is where the repository's key files are.
func (f repoFiles) keyStore() crypt.KeyStore {
	if f.remote != nil {
		return objKeys{f.remote}
	}
	return crypt.DirKeys{Dir: filepath.Join(f.dir, "keys"), Prepare: f.owner.file}
}

// hasKeys reports whether the repository holds key files.
func (f repoFiles) hasKeys(ctx context.Context) (bool, error) {
	names, err := f.keyStore().List(ctx)
	return len(names) > 0, err
}

// readConfig returns the repository's config: nil for a plain repository.
func (f repoFiles) readConfig(ctx context.Context) (*repoConfig, error) {
	b, err := f.read(ctx, repoConfigName)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("chunkstore: reading the repository's config: %w", err)
	}
	var c repoConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("chunkstore: the repository's config does not decode: %w", err)
	}
	if c.Format != repoConfigFormat {
		return nil, fmt.Errorf("chunkstore: the repository's config has format %q; this build reads %q", c.Format, repoConfigFormat)
	}
	if c.Encryption != repoEncryption {
		return nil, fmt.Errorf("chunkstore: the repository is encrypted with %q; this build knows %q", c.Encryption, repoEncryption)
	}
	if _, err := hex.DecodeString(c.ID); err != nil || len(c.ID) != 32 {
		return nil, fmt.Errorf("chunkstore: the repository's config has a bad ID %q", c.ID)
	}
	return &c, nil
}

// sealedStore reports whether f's chunk store has the format marker of an
// encrypted store.
func (f repoFiles) sealedStore(ctx context.Context) (sealed, exists bool, err error) {
	b, err := f.read(ctx, remoteFormat) // "chunks/format" in a directory too
	if errors.Is(err, fs.ErrNotExist) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("chunkstore: reading the store's format: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(first) == sealedFormat, true, nil
}

// plainWithPassword is the error of opening the plain (or missing)
// repository dir with a passphrase file: ErrPasswordForPlain; nil without
// one.
func plainWithPassword(ctx context.Context, dir string) error {
	if passwordFile(ctx) != "" || os.Getenv(PasswordFileEnv) != "" && !explicitNone(ctx) {
		return fmt.Errorf("%w (%s)", ErrPasswordForPlain, dir)
	}
	return nil
}

// plainRepos holds, for this process, the repositories found plain with a
// store: one stays plain (encryption is chosen when a repository is
// created, and InitRepo refuses a place that holds a store), so a command
// that lists a repository, opens it and records its outcome looks for its
// config once, not at each step (on a bucket, up to three requests a
// look). A store that is sealed after all is still refused by OpenLocal.
var plainRepos sync.Map // repoFiles.dir -> struct{}

// unlocked caches the master keys this process has unlocked, by
// repository ID and passphrase hash: a command that lists a repository's
// points, then opens it, derives its key once (half a second of argon2id).
var unlocked sync.Map // string -> unlockedKey

type unlockedKey struct {
	key   *crypt.MasterKey
	keyID string // the key file that opened it
}

// repoKey returns the master key of the repository f: nil for a plain one.
// The passphrase comes from ctx's --repo-password-file, else the environment.
func (f repoFiles) repoKey(ctx context.Context) (*crypt.MasterKey, string, error) {
	if _, ok := plainRepos.Load(f.dir); ok {
		return nil, "", plainWithPassword(ctx, f.dir)
	}
	c, err := f.readConfig(ctx)
	if err != nil {
		return nil, "", err
	}
	if c == nil {
		// InitRepo writes the config before the store's sealed marker:
		// a sealed store without a config had it removed, and taken for a
		// plain repository it would get outcomes written in the clear, and
		// restore points planted in the clear read.
		sealed, store, err := f.sealedStore(ctx)
		switch {
		case err != nil:
			return nil, "", err
		case sealed:
			return nil, "", fmt.Errorf("chunkstore: %s holds an encrypted chunk store but no config: it was removed (restore it from a copy): %w", f.dir, crypt.ErrTampered)
		case store:
			// A plain store: InitRepo refuses the place, so key files in
			// it are no interrupted init's.
			plainRepos.Store(f.dir, struct{}{})
		default:
			if has, err := f.hasKeys(ctx); err != nil {
				return nil, "", fmt.Errorf("chunkstore: listing the repository's key files: %w", err)
			} else if has {
				return nil, "", fmt.Errorf("chunkstore: %s has key files but no config: an interrupted 'pgporter repo init --encrypt'; run it again", f.dir)
			}
		}
		return nil, "", plainWithPassword(ctx, f.dir)
	}
	file := passwordFile(ctx)
	if file == "" {
		file = os.Getenv(PasswordFileEnv)
	}
	pass, err := crypt.ResolvePassphrase(file)
	if err != nil {
		if file != "" && !errors.Is(err, crypt.ErrEmptyPassphrase) {
			err = passwordFileError{err}
		}
		return nil, "", fmt.Errorf("the repository %s is encrypted: %w", f.dir, err)
	}
	sum := blake3.Sum256(pass)
	cacheKey := c.ID + "/" + hex.EncodeToString(sum[:])
	if u, ok := unlocked.Load(cacheKey); ok {
		// Unless its key file was removed meanwhile: a removed
		// passphrase stops working in this process too.
		if _, err := f.keyStore().Read(ctx, u.(unlockedKey).keyID); err == nil {
			return u.(unlockedKey).key, u.(unlockedKey).keyID, nil
		}
		unlocked.Delete(cacheKey)
	}
	mk, kf, err := crypt.Unlock(ctx, f.keyStore(), pass)
	if err != nil {
		return nil, "", fmt.Errorf("unlocking the repository %s: %w", f.dir, err)
	}
	if err := checkConfig(mk, c); err != nil {
		return nil, "", err
	}
	unlocked.Store(cacheKey, unlockedKey{mk, kf.ID})
	return mk, kf.ID, nil
}

// checkConfig proves that mk is the key of the repository of config c: a
// key file copied in from another repository unlocks a master key too.
func checkConfig(mk *crypt.MasterKey, c *repoConfig) error {
	sealed, err := base64.StdEncoding.DecodeString(c.Check)
	if err == nil {
		var plain []byte
		if plain, err = mk.Open(nil, crypt.KindConfig, repoConfigName, sealed); err == nil && string(plain) != c.ID {
			err = fmt.Errorf("the check opens to %q", plain)
		}
	}
	if err != nil {
		return fmt.Errorf("chunkstore: the key file's master key is not this repository's (%w): %w", err, crypt.ErrTampered)
	}
	return nil
}

// sealFile seals the body of a repository file of kind, bound to name; a
// nil key leaves it as it is.
func sealFile(key *crypt.MasterKey, kind crypt.Kind, name string, b []byte) []byte {
	if key == nil {
		return b
	}
	return key.Seal(nil, kind, name, b)
}

// openFile opens what sealFile sealed; what names it in the error, whose
// chain holds crypt.ErrTampered for one altered, moved, planted in the
// clear, or sealed under another key.
func openFile(key *crypt.MasterKey, kind crypt.Kind, name, what string, b []byte) ([]byte, error) {
	if key == nil {
		return b, nil
	}
	plain, err := key.Open(nil, kind, name, b)
	if err != nil {
		if !errors.Is(err, crypt.ErrTampered) {
			err = fmt.Errorf("%w: %w", crypt.ErrTampered, err)
		}
		return nil, fmt.Errorf("chunkstore: %s does not open under the repository's key: %w", what, err)
	}
	return plain, nil
}

// InitOptions configure InitRepo.
type InitOptions struct {
	Passphrase []byte // of the first key file
	Key        crypt.KeyOptions
}

// InitRepo creates an encrypted repository at dir (a directory or a
// repository URL): its master key, a first key file under o.Passphrase,
// its config, and its chunk store. It refuses a place that holds a
// repository (ErrRepoExists). Interrupted, it can be run again with the
// same passphrase: key files left without a config are reused, and a
// config left without a store gets its store (finishInit). A plain
// repository needs no InitRepo: its first use creates it.
func InitRepo(ctx context.Context, dir string, o InitOptions) (keyID string, err error) {
	f, err := openRepoFiles(ctx, dir, true)
	if err != nil {
		return "", err
	}
	if c, err := f.readConfig(ctx); err != nil {
		return "", err
	} else if c != nil {
		return finishInit(ctx, f, dir, c, o.Passphrase)
	}
	if plain, err := f.holdsStore(ctx); err != nil {
		return "", err
	} else if plain {
		return "", fmt.Errorf("%w: %s holds one (to encrypt a repository, copy it into a new encrypted one with 'pgporter repo copy')", ErrRepoExists, dir)
	}
	ks := f.keyStore()
	mk, kf, err := crypt.InitKeys(ctx, ks, o.Passphrase, o.Key)
	created := err == nil
	if errors.Is(err, crypt.ErrKeysExist) {
		mk, kf, err = crypt.Unlock(ctx, ks, o.Passphrase)
		if err != nil {
			return "", fmt.Errorf("chunkstore: %s has key files from an interrupted init, which the passphrase does not open: %w", dir, err)
		}
	}
	if err != nil {
		return "", err
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id) // crypto/rand.Read never fails
	c := repoConfig{Format: repoConfigFormat, ID: hex.EncodeToString(id), Encryption: repoEncryption}
	c.Check = base64.StdEncoding.EncodeToString(mk.Seal(nil, crypt.KindConfig, repoConfigName, []byte(c.ID)))
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return "", err
	}
	// Held from the config's write until the store is made: a rerun that
	// finds a config but no store (finishInit) tells an init killed in
	// between from one still running by it.
	lock, err := f.lock(ctx, RepoOptions{Lock: LockShared, LockWait: time.Minute})
	if err != nil {
		return "", err
	}
	defer lock.release()
	if err := f.create(ctx, repoConfigName, append(b, '\n')); errors.Is(err, fs.ErrExist) {
		// Another init won the race. Its config may rest on our key file
		// (it reused it as an interrupted init's); if not, the file holds
		// a master key no config accepts, which an unlock would try and
		// refuse as tampered before the right one: it goes.
		if won, rerr := f.readConfig(ctx); rerr == nil && won != nil && created && checkConfig(mk, won) != nil {
			if rerr := ks.Remove(ctx, kf.ID); rerr != nil {
				err = errors.Join(err, fmt.Errorf("removing key file %s, of another master key: %w", kf.ID, rerr))
			}
		}
		return "", fmt.Errorf("%w: %s was created meanwhile by another init: %w", ErrRepoExists, dir, err)
	} else if err != nil {
		return "", fmt.Errorf("chunkstore: writing the repository's config: %w", err)
	}
	// The store's sealed format marker, and the directories.
	r, err := OpenRepoWith(ctx, dir, RepoOptions{Lock: LockNone, key: &unlockedKey{mk, kf.ID}})
	if err != nil {
		return "", err
	}
	return kf.ID, r.Close()
}

// finishInit is InitRepo where the encrypted repository's config, c, is
// written already. A repository with a store exists (ErrRepoExists); one
// without had its init killed between the config and the store, which
// ListRepo (so key list, key add, restore-points, repo copy --to) takes
// for no repository at all: a rerun with a passphrase that opens it makes
// its store, as the init would have.
func finishInit(ctx context.Context, f repoFiles, dir string, c *repoConfig, pass []byte) (string, error) {
	exists := fmt.Errorf("%w: %s is an encrypted repository", ErrRepoExists, dir)
	if held, err := f.holdsStore(ctx); err != nil {
		return "", err
	} else if held {
		return "", exists
	}
	// An init still running holds its lock until its store is made.
	lock, err := f.lock(ctx, RepoOptions{Lock: LockExclusive})
	if errors.Is(err, ErrRepoLocked) {
		return "", fmt.Errorf("%w (%w)", exists, err)
	} else if err != nil {
		return "", err
	}
	defer lock.release()
	if held, err := f.holdsStore(ctx); err != nil {
		return "", err
	} else if held {
		return "", exists
	}
	mk, kf, err := crypt.Unlock(ctx, f.keyStore(), pass)
	if err == nil {
		err = checkConfig(mk, c)
	}
	if err != nil {
		return "", fmt.Errorf("%w, whose init was interrupted before its store was made; the passphrase does not open it: %w", exists, err)
	}
	r, err := OpenRepoWith(ctx, dir, RepoOptions{Lock: LockNone, key: &unlockedKey{mk, kf.ID}})
	if err != nil {
		return "", err
	}
	return kf.ID, r.Close()
}

// lock takes o.Lock on the repository of f, without opening its store.
func (f repoFiles) lock(ctx context.Context, o RepoOptions) (*repoLock, error) {
	var locks lockStore = objLocks{f.remote}
	if f.remote == nil {
		var err error
		if locks, err = dirLockStore(f.dir, f.owner); err != nil {
			return nil, err
		}
	}
	return lockRepo(ctx, locks, o, slog.New(slog.DiscardHandler))
}

// openRepoFiles returns the files of the repository at dir, creating the
// directory when create is set.
func openRepoFiles(ctx context.Context, dir string, create bool) (repoFiles, error) {
	if IsRepoURL(dir) {
		b, err := openRepoBackend(ctx, dir, nil)
		return repoFiles{dir: dir, remote: b}, err
	}
	if create {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return repoFiles{}, fmt.Errorf("chunkstore: creating repository: %w", err)
		}
	}
	own, err := ownerOf(dir)
	if err != nil {
		return repoFiles{}, err
	}
	if create {
		if err := own.mkdir(filepath.Join(dir, "keys"), dir); err != nil {
			return repoFiles{}, err
		}
	}
	return repoFiles{dir: dir, owner: own}, nil
}

// holdsStore reports whether f holds a chunk store or restore points.
func (f repoFiles) holdsStore(ctx context.Context) (bool, error) {
	if f.remote != nil {
		for _, prefix := range []string{remoteFormat, remotePoints} {
			for _, err := range f.remote.List(ctx, prefix) {
				return err == nil, err
			}
		}
		return false, nil
	}
	if _, err := os.Stat(filepath.Join(f.dir, "chunks", "format")); err == nil {
		return true, nil
	}
	ents, _ := os.ReadDir(filepath.Join(f.dir, "points"))
	return len(ents) > 0, nil
}

// objKeys keeps key files as objects under keys/.
type objKeys struct{ b objstore.Backend }

func (o objKeys) List(ctx context.Context) ([]string, error) {
	var names []string
	for obj, err := range o.b.List(ctx, repoKeysPrefix) {
		if err != nil {
			return nil, err
		}
		if name := strings.TrimPrefix(obj.Name, repoKeysPrefix); !strings.Contains(name, "/") {
			names = append(names, name)
		}
	}
	return names, nil
}

// Read reads at most crypt.MaxKeyFileSize bytes: a larger object is no key
// file (crypt.ErrKeyFileCorrupt), and is not fetched.
func (o objKeys) Read(ctx context.Context, name string) ([]byte, error) {
	b, err := getMax(ctx, o.b, repoKeysPrefix+name, crypt.MaxKeyFileSize)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, fmt.Errorf("key file %s: %w", name, fs.ErrNotExist)
	}
	if errors.Is(err, errFileTooLarge) {
		err = fmt.Errorf("%w: %w", crypt.ErrKeyFileCorrupt, err)
	}
	return b, err
}

func (o objKeys) Create(ctx context.Context, name string, b []byte) error {
	err := o.b.PutIfAbsent(ctx, repoKeysPrefix+name, bytes.NewReader(b), int64(len(b)))
	if errors.Is(err, objstore.ErrExists) {
		return fmt.Errorf("key file %s: %w", name, fs.ErrExist)
	}
	return err
}

func (o objKeys) Remove(ctx context.Context, name string) error {
	return o.b.Delete(ctx, repoKeysPrefix+name)
}

// Encrypted reports whether the repository is encrypted.
func (r *Repo) Encrypted() bool { return r.key != nil }

// KeyID is the key file that unlocked the repository: "" for a plain one.
func (r *Repo) KeyID() string { return r.keyID }

// ErrKeyNotFound is matched by the error of RemoveKey for a key file the
// repository does not hold.
var ErrKeyNotFound = errors.New("chunkstore: the repository has no such key file")

// ErrNotEncryptedRepo is matched by the error of a key command on a plain
// repository.
var ErrNotEncryptedRepo = errors.New("chunkstore: the repository is not encrypted: it has no keys")

func (r *Repo) keyStore() (crypt.KeyStore, error) {
	if r.key == nil {
		return nil, fmt.Errorf("%w (%s)", ErrNotEncryptedRepo, r.dir)
	}
	return r.files().keyStore(), nil
}

func (r *Repo) files() repoFiles { return repoFiles{dir: r.dir, remote: r.remote, owner: r.owner} }

// ListKeys lists the repository's key files.
func (r *Repo) ListKeys(ctx context.Context) ([]crypt.KeyListing, error) {
	ks, err := r.keyStore()
	if err != nil {
		return nil, err
	}
	return crypt.ListKeys(ctx, ks)
}

// AddKey adds a key file that unlocks the repository under passphrase.
func (r *Repo) AddKey(ctx context.Context, passphrase []byte, o crypt.KeyOptions) (*crypt.KeyFile, error) {
	ks, err := r.keyStore()
	if err != nil {
		return nil, err
	}
	return crypt.AddKey(ctx, ks, r.key, passphrase, o)
}

// RemoveKey removes key file id; the last usable one is refused
// (crypt.ErrLastKey). The repository must be open under its exclusive lock.
func (r *Repo) RemoveKey(ctx context.Context, id string) error {
	ks, err := r.keyStore()
	if err != nil {
		return err
	}
	if r.lock == nil || !r.lock.info.Exclusive {
		return errors.New("chunkstore: removing a key needs the repository's exclusive lock")
	}
	err = crypt.RemoveKey(ctx, ks, id)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s (%s)", ErrKeyNotFound, id, r.dir)
	}
	return err
}
