package crypt

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

// KeyStore holds a repository's key files by name (their IDs): a directory
// (DirKeys), or a prefix of an object store.
type KeyStore interface {
	// List returns the names of the key files, in any order. A store
	// without any returns none and no error.
	List(ctx context.Context) ([]string, error)
	// Read returns the content of key file name; one that is not held
	// gives an error matching fs.ErrNotExist.
	Read(ctx context.Context, name string) ([]byte, error)
	// Create stores a new key file, durable when it returns; it never
	// replaces one: a name held gives an error matching fs.ErrExist.
	Create(ctx context.Context, name string, b []byte) error
	// Remove removes key file name, durably.
	Remove(ctx context.Context, name string) error
}

var (
	// ErrNoKey is matched by the error of an unlock of a store that holds
	// no key file: the repository is not encrypted, or lost its keys.
	ErrNoKey = errors.New("crypt: no key file")
	// ErrKeysExist is matched by the error of InitKeys on a store that
	// holds key files already: it belongs to a repository with a key.
	ErrKeysExist = errors.New("crypt: the repository has key files already")
	// ErrLastKey is matched by the error of a RemoveKey that would leave
	// no usable key file: the repository could never be opened again.
	ErrLastKey = errors.New("crypt: refusing to remove the last usable key file")
	// ErrTooManyKeys is matched by the error of an AddKey to a store
	// that holds as many usable key files as an unlock tries: one more
	// would leave whichever sorts last never tried, its passphrase
	// refused as wrong.
	ErrTooManyKeys = errors.New("crypt: the repository has as many key files as an unlock tries: remove one first")
)

// maxUnlockTries bounds the key files an unlock tries, each one a key
// derivation: a store with more (hostile, or never pruned of old keys)
// would make every open of the repository take minutes.
const maxUnlockTries = 32

// InitKeys makes a new master key and its first key file, under
// passphrase, in ks, which must hold no key file (ErrKeysExist).
func InitKeys(ctx context.Context, ks KeyStore, passphrase []byte, opts KeyOptions) (*MasterKey, *KeyFile, error) {
	names, err := ks.List(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("crypt: listing key files: %w", err)
	}
	if len(names) > 0 {
		return nil, nil, fmt.Errorf("%w: %d of them", ErrKeysExist, len(names))
	}
	mk := NewMasterKey()
	kf, err := AddKey(ctx, ks, mk, passphrase, opts)
	if err != nil {
		return nil, nil, err
	}
	return mk, kf, nil
}

// AddKey writes a new key file holding mk under passphrase to ks, unless
// ks holds maxUnlockTries usable ones already (ErrTooManyKeys).
func AddKey(ctx context.Context, ks KeyStore, mk *MasterKey, passphrase []byte, opts KeyOptions) (*KeyFile, error) {
	keys, err := ListKeys(ctx, ks)
	if err != nil {
		return nil, err
	}
	usable := 0
	for _, k := range keys {
		if k.Err == nil {
			usable++
		}
	}
	if usable >= maxUnlockTries {
		return nil, fmt.Errorf("%w (%d)", ErrTooManyKeys, maxUnlockTries)
	}
	kf, err := NewKeyFile(mk, passphrase, opts)
	if err != nil {
		return nil, err
	}
	if err := ks.Create(ctx, kf.ID, kf.Marshal()); err != nil {
		return nil, fmt.Errorf("crypt: writing key file %s: %w", kf.ID, err)
	}
	return kf, nil
}

// KeyListing is one key file of a store, as ListKeys found it: decoded, or
// why not.
type KeyListing struct {
	Name string
	File *KeyFile // nil when Err is set
	Err  error    // matches ErrKeyFileCorrupt or ErrWeakKDF, or is an I/O error
}

// ListKeys reads and decodes every key file of ks, sorted by name. A key
// file that does not decode is listed with its error, so that it can be
// seen and removed; only the listing itself can fail.
func ListKeys(ctx context.Context, ks KeyStore) ([]KeyListing, error) {
	names, err := ks.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("crypt: listing key files: %w", err)
	}
	slices.Sort(names)
	out := make([]KeyListing, 0, len(names))
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		kf, err := readKey(ctx, ks, name)
		out = append(out, KeyListing{Name: name, File: kf, Err: err})
	}
	return out, nil
}

func readKey(ctx context.Context, ks KeyStore, name string) (*KeyFile, error) {
	if !validKeyID(name) {
		return nil, fmt.Errorf("%w: name %q is not a key ID", ErrKeyFileCorrupt, name)
	}
	b, err := ks.Read(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("crypt: reading key file %s: %w", name, err)
	}
	kf, err := DecodeKeyFile(b)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", name, err)
	}
	if kf.ID != name {
		return nil, fmt.Errorf("%w: key file %s holds ID %s", ErrKeyFileCorrupt, name, kf.ID)
	}
	return kf, nil
}

// Unlock returns the master key of the first key file of ks that
// passphrase opens, with that key file, trying the cheapest derivations
// first (KDFParams.cost; name order among equals): a passphrase generated
// for wal-push, whose key file has MinKDF's 20 ms, then opens the
// repository without first spending DefaultKDF's half second on an
// administrator's key file, once per WAL segment. It tries at most
// maxUnlockTries usable key files, one key derivation each. No key file
// gives ErrNoKey; none that the passphrase opens, ErrWrongPassphrase (joined
// with why the unusable ones were skipped); a key file the passphrase
// opens but whose bytes were altered, ErrTampered at once.
func Unlock(ctx context.Context, ks KeyStore, passphrase []byte) (*MasterKey, *KeyFile, error) {
	keys, err := ListKeys(ctx, ks)
	if err != nil {
		return nil, nil, err
	}
	if len(keys) == 0 {
		return nil, nil, ErrNoKey
	}
	slices.SortStableFunc(keys, func(a, b KeyListing) int {
		return cmp.Compare(unlockCost(a), unlockCost(b))
	})
	var skipped []error
	tried := 0
	for i, k := range keys {
		if k.Err != nil {
			skipped = append(skipped, k.Err)
			continue
		}
		if tried == maxUnlockTries {
			// The unusable ones, sorted last, still say why they were.
			left := 0
			for _, k := range keys[i:] {
				if k.Err != nil {
					skipped = append(skipped, k.Err)
				} else {
					left++
				}
			}
			skipped = append(skipped, fmt.Errorf("crypt: %d key files not tried: at most %d are", left, maxUnlockTries))
			break
		}
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		tried++
		mk, err := k.File.Unlock(passphrase)
		if err == nil {
			return mk, k.File, nil
		}
		if !errors.Is(err, ErrWrongPassphrase) {
			return nil, nil, err
		}
	}
	if tried == 0 {
		return nil, nil, fmt.Errorf("%w: none of the %d key files is usable: %w", ErrNoKey, len(keys), errors.Join(skipped...))
	}
	err = fmt.Errorf("%w: it opens none of the %d key files tried", ErrWrongPassphrase, tried)
	if len(skipped) > 0 {
		err = fmt.Errorf("%w; skipped: %w", err, errors.Join(skipped...))
	}
	return nil, nil, err
}

// unlockCost orders the key files an unlock tries: the cheapest
// derivation first, the unusable ones (skipped) last.
func unlockCost(k KeyListing) uint64 {
	if k.File == nil {
		return math.MaxUint64
	}
	return k.File.KDF.cost()
}

// RemoveKey removes key file name from ks, unless no other usable key file
// (one that decodes) would remain: ErrLastKey. A corrupt or weak key file
// can always be removed while a usable one remains. Two removals at once
// could each leave the other's key as the last one and both go: the caller
// holds the repository's exclusive lock.
func RemoveKey(ctx context.Context, ks KeyStore, name string) error {
	keys, err := ListKeys(ctx, ks)
	if err != nil {
		return err
	}
	found, others := false, 0
	for _, k := range keys {
		switch {
		case k.Name == name:
			found = true
		case k.Err == nil:
			others++
		}
	}
	if !found {
		return fmt.Errorf("crypt: removing key file %s: %w", name, fs.ErrNotExist)
	}
	if others == 0 {
		return fmt.Errorf("%w: %s is the only key file that decodes", ErrLastKey, name)
	}
	if err := ks.Remove(ctx, name); err != nil {
		return fmt.Errorf("crypt: removing key file %s: %w", name, err)
	}
	return nil
}

// DirKeys is a KeyStore in a local directory, one file per key, named by
// its ID. The zero Mode and Prepare are ready to use.
type DirKeys struct {
	Dir string
	// Mode is the permission of new key files; zero means 0o600: a key
	// file that other local users cannot read cannot be attacked offline
	// by them either.
	Mode fs.FileMode
	// Prepare, if set, is called on each new key file, written but not yet
	// in place (chunkstore gives it to the repository's owner).
	Prepare func(*os.File) error
}

var _ KeyStore = DirKeys{}

const (
	keyTmpPrefix = ".tmp-"
	noFollow     = syscall.O_NOFOLLOW // a key file is never a link: DirKeys made none
)

// List returns the names of the key files; a directory that does not
// exist holds none.
func (d DirKeys) List(ctx context.Context) ([]string, error) {
	ents, err := os.ReadDir(d.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if validKeyID(e.Name()) && e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// Read returns key file name, refusing anything but a regular file of at
// most a key file's size.
func (d DirKeys) Read(ctx context.Context, name string) ([]byte, error) {
	if !validKeyID(name) {
		return nil, fmt.Errorf("crypt: %q is not a key ID", name)
	}
	f, err := os.OpenFile(filepath.Join(d.Dir, name), os.O_RDONLY|noFollow, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrKeyFileCorrupt, name)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxKeyFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxKeyFileSize {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrKeyFileCorrupt, name, MaxKeyFileSize)
	}
	return b, nil
}

// Create writes key file name: temp file, fsync, link into place (which
// fails if name exists), directory fsync. It creates the directory.
func (d DirKeys) Create(ctx context.Context, name string, b []byte) error {
	if !validKeyID(name) {
		return fmt.Errorf("crypt: %q is not a key ID", name)
	}
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return err
	}
	mode := d.Mode
	if mode == 0 {
		mode = 0o600
	}
	f, err := os.CreateTemp(d.Dir, keyTmpPrefix)
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil && d.Prepare != nil {
		err = d.Prepare(f)
	}
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err != nil {
		return err
	}
	if err := os.Link(tmp, filepath.Join(d.Dir, name)); err != nil {
		return err
	}
	return syncDir(d.Dir)
}

// Remove removes key file name and syncs the directory.
func (d DirKeys) Remove(ctx context.Context, name string) error {
	if !validKeyID(name) {
		return fmt.Errorf("crypt: %q is not a key ID", name)
	}
	if err := os.Remove(filepath.Join(d.Dir, name)); err != nil {
		return err
	}
	return syncDir(d.Dir)
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
