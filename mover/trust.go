package mover

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"

	"github.com/pgporter/pgporter/protocol"
)

// Perm is a set of permissions a trusted peer holds on this mover.
type Perm uint8

// Permissions. A peer in the trust list may connect; what it may do after
// the handshake is decided by these bits.
const (
	// PermSend allows writing into this mover's roots (it receives dumps).
	PermSend Perm = 1 << iota
	// PermRead allows reading this mover's repository (chunks, restore points).
	PermRead
	// PermOrchestrate allows commanding this mover (mount, dump, clean up).
	PermOrchestrate
	// PermArchive allows pushing WAL files into this mover's repository
	// (wal-push --repo-peer), and nothing else: no read, no restore point.
	PermArchive

	// PermAll is every permission this version knows.
	PermAll = PermSend | PermRead | PermOrchestrate | PermArchive
)

type permName struct {
	p      Perm
	name   string
	grants string
}

var permNames = []permName{
	{PermSend, "send", "write into this mover's --root directories (send dumps here)"},
	{PermRead, "read", "read this mover's backup repository (restore points, chunks, WAL)"},
	{PermOrchestrate, "orchestrate", "command this mover (mount, dump, clean up)"},
	{PermArchive, "archive", "push WAL files into this mover's repository (wal-push), nothing else"},
}

// PermDescription names a permission and says what it grants.
type PermDescription struct {
	Perm   Perm
	Name   string
	Grants string
}

// PermDescriptions lists every permission, in the order of Perm.Names.
func PermDescriptions() []PermDescription {
	out := make([]PermDescription, len(permNames))
	for i, n := range permNames {
		out[i] = PermDescription{Perm: n.p, Name: n.name, Grants: n.grants}
	}
	return out
}

// ParsePerms parses a comma-separated list of permission names ("send",
// "read", "orchestrate", "archive"), ignoring case and spaces.
func ParsePerms(s string) (Perm, error) {
	var p Perm
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
	if len(fields) == 0 {
		return 0, errors.New("no permission given: want a list of send, read, orchestrate, archive")
	}
	for _, f := range fields {
		i := slices.IndexFunc(permNames, func(n permName) bool { return strings.EqualFold(n.name, f) })
		if i < 0 {
			return 0, fmt.Errorf("unknown permission %q: want send, read, orchestrate or archive", f)
		}
		p |= permNames[i].p
	}
	return p, nil
}

// Names returns the names of the permissions in p, in a fixed order.
func (p Perm) Names() []string {
	names := []string{}
	for _, n := range permNames {
		if p&n.p != 0 {
			names = append(names, n.name)
		}
	}
	if rest := p &^ PermAll; rest != 0 {
		names = append(names, fmt.Sprintf("perm(%#x)", uint8(rest)))
	}
	return names
}

// String returns the permissions as ParsePerms reads them, or "none".
func (p Perm) String() string {
	if p == 0 {
		return "none"
	}
	return strings.Join(p.Names(), ",")
}

// TrustedPeer is an entry of the trust list.
type TrustedPeer struct {
	ID    PeerID
	Name  string // free text for operators; may be empty
	Perms Perm
	Added time.Time
}

// Errors of the trust list.
var (
	// ErrPermission matches every error of [TrustStore.Check].
	ErrPermission = errors.New("mover: permission denied")
	// ErrUnknownPeer is returned by [TrustStore.Untrust] for a peer not in the list.
	ErrUnknownPeer = errors.New("mover: peer not in the trust list")
)

// PermissionError says which permissions a peer lacks and how to grant them.
// It matches [ErrPermission], and [protocol.ErrPermission] so that reported
// to the peer it carries the permission code.
type PermissionError struct {
	Peer    PeerID
	Name    string // the peer's name in the trust list, if any
	Trusted bool   // the peer is in the trust list
	Have    Perm
	Missing Perm
	Err     error // why the trust list could not be read, if that is the cause
	home    string
}

func (e *PermissionError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%v: %v", ErrPermission, e.Err)
	}
	who := "peer " + e.Peer.String()
	if e.Name != "" {
		who += fmt.Sprintf(" (%q)", e.Name)
	}
	cmd := TrustCommand(e.Peer, e.Have|e.Missing, e.home)
	if !e.Trusted {
		return fmt.Sprintf("%v: %s is not in the trust list; to allow it, on this mover's host run: %s", ErrPermission, who, cmd)
	}
	return fmt.Sprintf("%v: %s lacks permission %s (it has %s); to grant it, on this mover's host run: %s", ErrPermission, who, e.Missing, e.Have, cmd)
}

// Is makes the error match [ErrPermission] and [protocol.ErrPermission].
func (e *PermissionError) Is(target error) bool {
	return target == ErrPermission || target == protocol.ErrPermission
}

// Unwrap returns why the trust list could not be read, or nil.
func (e *PermissionError) Unwrap() error { return e.Err }

// TrustCommand returns the command line that trusts id with perms; home, if
// not empty, is passed as --home. With perms 0 (not known) it shows a
// placeholder rather than suggest granting everything.
func TrustCommand(id PeerID, perms Perm, home string) string {
	allow := "PERMS"
	if perms != 0 {
		allow = perms.String()
	}
	cmd := fmt.Sprintf("pgporter mover trust %s --allow %s", id, allow)
	if home != "" {
		cmd += " --home " + home
	}
	if perms == 0 {
		cmd += " (PERMS: send, read, orchestrate and/or archive, comma-separated)"
	}
	return cmd
}

const (
	trustFileName    = "trust.json"
	trustFileVersion = 1
	maxTrustFileSize = 16 << 20
	maxPeerNameLen   = 128
)

// trustFile is the on-disk form of the trust list, meant to be read (and if
// need be edited) by people.
type trustFile struct {
	Version int          `json:"version"`
	Peers   []trustEntry `json:"peers"`
}

type trustEntry struct {
	ID    PeerID    `json:"id"`
	Name  string    `json:"name,omitempty"`
	Allow []string  `json:"allow"`
	Added time.Time `json:"added"`
}

// TrustStore is the list of peers this mover accepts, in home/trust.json.
// It is safe for concurrent use. Lookups notice when the file changed on
// disk (another process ran 'pgporter mover trust') and reload it, so a
// running daemon follows the list without a restart. If the file cannot be
// read or parsed, lookups find no peer: the store fails closed.
type TrustStore struct {
	home string
	path string

	mu      sync.Mutex // guards peers, stat, loadErr
	peers   map[PeerID]TrustedPeer
	stat    fs.FileInfo // of the file peers were read from; nil if it did not exist
	loadErr error       // why the file could not be read; peers is empty then
}

// OpenTrust opens the trust list of home. A missing file is an empty list;
// an unreadable one is an error.
func OpenTrust(home string) (*TrustStore, error) {
	t := &TrustStore{home: home, path: filepath.Join(home, trustFileName), peers: map[PeerID]TrustedPeer{}}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refreshLocked()
	if t.loadErr != nil {
		return nil, t.loadErr
	}
	return t, nil
}

// Path returns the file the list is kept in.
func (t *TrustStore) Path() string { return t.path }

// Trust adds p to the list or, if p.ID is there already, replaces its
// permissions with p.Perms (they are not merged). An empty p.Name or a zero
// p.Added keeps the existing entry's.
func (t *TrustStore) Trust(p TrustedPeer) error {
	if p.ID.IsZero() {
		return errors.New("trusting peer: empty peer ID")
	}
	if p.Perms&^PermAll != 0 {
		return fmt.Errorf("trusting peer: unknown permission bits %#x", uint8(p.Perms&^PermAll))
	}
	if err := CheckPeerName(p.Name); err != nil {
		return err
	}
	return t.update(func(peers map[PeerID]TrustedPeer) error {
		if old, ok := peers[p.ID]; ok {
			if p.Name == "" {
				p.Name = old.Name
			}
			if p.Added.IsZero() {
				p.Added = old.Added
			}
		}
		if p.Added.IsZero() {
			p.Added = time.Now()
		}
		p.Added = p.Added.UTC().Truncate(time.Second)
		peers[p.ID] = p
		return nil
	})
}

// Untrust removes id from the list; it returns an error matching
// [ErrUnknownPeer] if id is not there. Every later [TrustStore.Check] for
// id fails, in this process and (the file is reread when it changes) in a
// running server, which also closes id's open connections within
// ServerOptions.TrustRecheck.
func (t *TrustStore) Untrust(id PeerID) error {
	return t.update(func(peers map[PeerID]TrustedPeer) error {
		if _, ok := peers[id]; !ok {
			return fmt.Errorf("%w: %s", ErrUnknownPeer, id)
		}
		delete(peers, id)
		return nil
	})
}

// Lookup returns the entry of id, if it is trusted.
func (t *TrustStore) Lookup(id PeerID) (TrustedPeer, bool) {
	p, ok, _ := t.lookup(id)
	return p, ok
}

// lookup is Lookup that also says why the list could not be read.
func (t *TrustStore) lookup(id PeerID) (TrustedPeer, bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refreshLocked()
	p, ok := t.peers[id]
	return p, ok, t.loadErr
}

// List returns the trusted peers sorted by name, then ID.
func (t *TrustStore) List() []TrustedPeer {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refreshLocked()
	return sortedPeers(t.peers)
}

// Err returns why the trust list on disk could not be read at the last
// lookup, or nil. While it is not nil, no peer is trusted.
func (t *TrustStore) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.loadErr
}

// Check returns nil if id is trusted with every permission in need, and
// otherwise a [*PermissionError] (matching [ErrPermission]) naming what is
// missing and the command that grants it.
func (t *TrustStore) Check(id PeerID, need Perm) error {
	p, ok, err := t.lookup(id)
	if err != nil {
		return &PermissionError{Peer: id, Missing: need, Err: err, home: t.home}
	}
	if !ok {
		return &PermissionError{Peer: id, Missing: need, home: t.home}
	}
	if missing := need &^ p.Perms; missing != 0 {
		return &PermissionError{Peer: id, Name: p.Name, Trusted: true, Have: p.Perms, Missing: missing, home: t.home}
	}
	return nil
}

// refreshLocked reloads the file if it changed since it was last read.
func (t *TrustStore) refreshLocked() {
	fi, err := os.Stat(t.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		t.peers, t.stat, t.loadErr = map[PeerID]TrustedPeer{}, nil, nil
		return
	case err != nil:
		t.failLocked(err)
		return
	case t.loadErr == nil && sameFile(t.stat, fi):
		return
	}
	peers, fi, err := readTrustFile(t.path)
	if err != nil {
		t.failLocked(err)
		return
	}
	t.peers, t.stat, t.loadErr = peers, fi, nil
}

func (t *TrustStore) failLocked(err error) {
	t.peers, t.stat, t.loadErr = map[PeerID]TrustedPeer{}, nil, fmt.Errorf("reading trust list: %w", err)
}

// update applies fn to the list as it is on disk and writes the result,
// holding a lock file so that concurrent processes do not lose updates.
func (t *TrustStore) update(fn func(map[PeerID]TrustedPeer) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := os.MkdirAll(t.home, 0o700); err != nil {
		return fmt.Errorf("creating home: %w", err)
	}
	unlock, err := lockFile(t.path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	peers, _, err := readTrustFile(t.path)
	if errors.Is(err, fs.ErrNotExist) {
		peers, err = map[PeerID]TrustedPeer{}, nil
	}
	if err != nil {
		// Never overwrite a list we could not read: it may hold peers.
		return fmt.Errorf("reading trust list: %w", err)
	}
	if err := fn(peers); err != nil {
		return err
	}
	fi, err := writeTrustFile(t.path, peers)
	if err != nil {
		return err
	}
	t.peers, t.stat, t.loadErr = peers, fi, nil
	return nil
}

func readTrustFile(path string) (map[PeerID]TrustedPeer, fs.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if fi.Size() > maxTrustFileSize {
		return nil, nil, fmt.Errorf("%s: larger than %d bytes", path, maxTrustFileSize)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, nil, err
	}
	var tf trustFile
	dec := json.NewDecoder(&buf)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&tf); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if tf.Version != trustFileVersion {
		return nil, nil, fmt.Errorf("%s: version %d, this pgporter reads version %d", path, tf.Version, trustFileVersion)
	}
	peers := make(map[PeerID]TrustedPeer, len(tf.Peers))
	for _, e := range tf.Peers {
		perms, err := ParsePerms(strings.Join(e.Allow, ","))
		if len(e.Allow) == 0 {
			perms, err = 0, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: peer %s: %w", path, e.ID, err)
		}
		if e.ID.IsZero() {
			return nil, nil, fmt.Errorf("%s: entry without peer ID", path)
		}
		if _, dup := peers[e.ID]; dup {
			return nil, nil, fmt.Errorf("%s: peer %s listed twice", path, e.ID)
		}
		peers[e.ID] = TrustedPeer{ID: e.ID, Name: e.Name, Perms: perms, Added: e.Added}
	}
	return peers, fi, nil
}

// writeTrustFile replaces path with peers: temp file, fsync, rename, fsync
// of the directory. It returns the new file's info.
func writeTrustFile(path string, peers map[PeerID]TrustedPeer) (fs.FileInfo, error) {
	tf := trustFile{Version: trustFileVersion, Peers: []trustEntry{}}
	for _, p := range sortedPeers(peers) {
		tf.Peers = append(tf.Peers, trustEntry{ID: p.ID, Name: p.Name, Allow: p.Perms.Names(), Added: p.Added})
	}
	data, err := json.MarshalIndent(tf, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding trust list: %w", err)
	}
	data = append(data, '\n')
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+trustFileName+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("writing trust list: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // fails harmlessly once renamed
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("writing trust list: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("writing trust list: %w", err)
	}
	if err := syncDirPath(dir); err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("writing trust list: %w", err)
	}
	return fi, nil
}

// lockFile takes an exclusive advisory lock on name, creating it, and
// returns the function that releases it.
func lockFile(name string) (unlock func(), err error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking trust list: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking trust list: %w", err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}

// sameFile reports whether b is the file a was, unchanged: same inode (an
// atomic replace makes a new one), size and modification time.
func sameFile(a, b fs.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

func sortedPeers(m map[PeerID]TrustedPeer) []TrustedPeer {
	list := make([]TrustedPeer, 0, len(m))
	for _, p := range m {
		list = append(list, p)
	}
	slices.SortFunc(list, func(a, b TrustedPeer) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), bytes.Compare(a.ID[:], b.ID[:]))
	})
	return list
}

// CheckPeerName reports whether name is acceptable as a peer's name: at most
// 128 bytes of printable characters (names are shown in terminals and logs).
func CheckPeerName(name string) error {
	if len(name) > maxPeerNameLen {
		return fmt.Errorf("peer name longer than %d bytes", maxPeerNameLen)
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("peer name %q: only printable characters", name)
		}
	}
	return nil
}
