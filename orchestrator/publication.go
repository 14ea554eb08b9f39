package orchestrator

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"golang.org/x/sys/unix"

	"github.com/pgporter/pgporter/staging"
)

// A publication's record: what is journaled under p/<id>, and what a
// publication's files are called. Serving it is publish.go's.

// PubState is the state of a publication.
type PubState string

// Publication states. PubDead is never journaled: List reports it for a
// publication whose serve process is gone without cleaning up.
const (
	PubStarting PubState = "starting"
	PubUp       PubState = "up"
	PubStopping PubState = "stopping"
	PubFailed   PubState = "failed"
	PubGone     PubState = "gone"
	PubDead     PubState = "dead"
)

// Publication is a restore point served as a live PostgreSQL instance, as
// journaled under p/<id>. A mover reports one to an orchestrator as a
// protocol.JobPublication (jobwire.go).
type Publication struct {
	ID   string `json:"id"`
	Repo string `json:"repo"`
	// RepoPeer is the repository mover (ADDR#PEER_ID) the restore point's
	// chunks are fetched from as they are read, instead of Repo; RetryFor
	// is how long a read from it retries through a lost connection.
	RepoPeer     string        `json:"repo_peer,omitempty"`
	RetryFor     time.Duration `json:"retry_for,omitempty"`
	RestorePoint string        `json:"restore_point"`
	Listen       string        `json:"listen"`
	Port         int           `json:"port"`
	// Auth is how clients authenticate: AuthPassword (also when empty:
	// publications journaled before it existed get the safe default) or
	// AuthBackupHBA.
	Auth string `json:"auth,omitempty"`
	// StrictHBA is kept for publications journaled before Auth; passwords
	// are the default now, so it changes nothing.
	StrictHBA bool   `json:"strict_hba,omitempty"`
	OSUser    string `json:"os_user"`
	// OnRestart is what a restarted mover does with the publication when
	// its serve process is gone: OnRestartRestart or OnRestartCleanup.
	OnRestart string `json:"on_restart,omitempty"`
	// On is the mover (ADDR#PEER_ID) that runs the publication, in the
	// journal of the orchestrator that asked for it; empty on the host that
	// runs it.
	On string `json:"on,omitempty"`
	// Restarts counts how often the publication was resumed on its layer.
	Restarts int `json:"restarts,omitempty"`
	// Unpublishing is set by Unpublish before it signals the serve
	// process: a serve process stopped by any other signal (a shutdown)
	// keeps the CoW layer, so that the publication can be resumed.
	Unpublishing bool `json:"unpublishing,omitempty"`
	// CowSize is the size of the CoW layer as the mover running the
	// publication reported it (for one with On set).
	CowSize int64     `json:"cow_bytes,omitempty"`
	State   PubState  `json:"state"`
	Error   string    `json:"error,omitempty"`
	Created time.Time `json:"created"`
	UpSince time.Time `json:"up_since,omitzero"`
	Updated time.Time `json:"updated"`

	// Resources: what the serve process holds, for cleanup after it died.
	ServePID    int    `json:"serve_pid,omitempty"`
	InstancePID int    `json:"instance_pid,omitempty"`
	Version     string `json:"version,omitempty"`
	BaseDir     string `json:"base_dir"` // holds the mountpoint and the run directory
	CowDir      string `json:"cow_dir"`
	Mounted     bool   `json:"mounted,omitempty"`

	// At, Self: a point-in-time publication's target and how its instance
	// runs pgporter's wal-fetch (PublishOptions). Reached is where the
	// replay stopped, set by the first start; a resumed publication does
	// not replay again.
	At      *PointInTime     `json:"at,omitempty"`
	Self    string           `json:"self,omitempty"`
	Reached *staging.Reached `json:"reached,omitempty"`
	// PasswordFile is PublishOptions.PasswordFile: a path, never the
	// passphrase.
	PasswordFile string `json:"password_file,omitempty"`
}

// A publication's writes go to an overlay whose upper layer lives on disk
// under its CoW directory (staging.MountOverlay), over the FUSE mount of the
// restore point: when the serve process dies, a new one mounts the restore
// point again and puts the same upper layer over it.

// Mountpoint is where the instance's data directory is: the overlay.
func (p *Publication) Mountpoint() string { return filepath.Join(p.BaseDir, "data") }

// Lower is where the restore point is mounted (FUSE), under the overlay.
func (p *Publication) Lower() string { return filepath.Join(p.BaseDir, "lower") }

// UpperDir is the overlay's upper layer: every file the instance changed.
func (p *Publication) UpperDir() string { return filepath.Join(p.CowDir, "upper") }

// overlay is the overlay at Mountpoint.
func (p *Publication) overlay() staging.OverlayOptions {
	return staging.OverlayOptions{Lower: p.Lower(), Upper: p.UpperDir(), Work: filepath.Join(p.CowDir, "work"), Owner: p.OSUser}
}

// fuseCowDir is the FUSE mount's own copy-on-write layer, empty in practice
// (the overlay never writes to its lower layer), made anew for each mount.
func (p *Publication) fuseCowDir() string { return filepath.Join(p.CowDir, "fuse") }

// RunDir holds the instance's socket directory, hba file and log.
func (p *Publication) RunDir() string { return filepath.Join(p.BaseDir, "run") }

// SocketDir is the instance's private Unix socket directory.
func (p *Publication) SocketDir() string { return filepath.Join(p.RunDir(), "sock") }

// Host is the address clients connect to: the listen address, or, when it
// listens on every address, this host's name (the mover's address for a
// publication on another host).
func (p *Publication) Host() string {
	if ip := net.ParseIP(p.Listen); p.Listen == "*" || (ip != nil && ip.IsUnspecified()) {
		if p.On != "" {
			if addr, _, ok := strings.Cut(p.On, "#"); ok {
				if h, _, err := net.SplitHostPort(addr); err == nil && h != "" {
					return h
				}
			}
			return p.Listen
		}
		if h, err := os.Hostname(); err == nil {
			return h
		}
	}
	return p.Listen
}

// What a restarted mover does with a publication whose serve process died.
const (
	OnRestartRestart = "restart" // serve it again on the same layer, address and port
	OnRestartCleanup = "cleanup" // unpublish it
)

// ErrNoPublication is returned for a publication ID the journal does not hold.
var ErrNoPublication = errors.New("no such publication")

func pubKey(id string) []byte { return []byte("p/" + id) }

// PutPublication writes p durably.
func (j *Journal) PutPublication(p *Publication) error {
	return j.UpdatePublication(p.ID, func(q *Publication) { *q = *p })
}

// UpdatePublication applies fn to publication id (a new one if missing) and
// writes it durably; reading and writing happen in one open of the
// database, so two processes' updates do not overwrite each other.
func (j *Journal) UpdatePublication(id string, fn func(*Publication)) error {
	return j.with(func(db *pebble.DB) error {
		p := &Publication{ID: id}
		v, closer, err := db.Get(pubKey(id))
		switch {
		case err == nil:
			err = json.Unmarshal(v, p)
			closer.Close()
			if err != nil {
				return fmt.Errorf("publication %s: %w", id, err)
			}
		case !errors.Is(err, pebble.ErrNotFound):
			return err
		}
		fn(p)
		p.ID = id
		p.Updated = time.Now().UTC()
		b, err := json.Marshal(p)
		if err != nil {
			return err
		}
		if err := db.Set(pubKey(id), b, pebble.Sync); err != nil {
			return fmt.Errorf("journaling publication %s: %w", id, err)
		}
		return nil
	})
}

// GetPublication reads publication id.
func (j *Journal) GetPublication(id string) (*Publication, error) {
	var p *Publication
	err := j.with(func(db *pebble.DB) error {
		v, closer, err := db.Get(pubKey(id))
		if errors.Is(err, pebble.ErrNotFound) {
			return fmt.Errorf("%w %q (see 'pgporter published')", ErrNoPublication, id)
		}
		if err != nil {
			return err
		}
		defer closer.Close()
		p = new(Publication)
		return json.Unmarshal(v, p)
	})
	if errors.Is(err, errNoJournal) {
		return nil, fmt.Errorf("%w %q: %s holds no publications (is --home right?)", ErrNoPublication, id, filepath.Dir(j.dir))
	}
	return p, err
}

// ListPublications returns every journaled publication, newest first.
func (j *Journal) ListPublications() ([]*Publication, error) {
	var out []*Publication
	err := j.with(func(db *pebble.DB) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte("p/"), UpperBound: []byte("p0")})
		if err != nil {
			return err
		}
		defer it.Close()
		for it.First(); it.Valid(); it.Next() {
			p := new(Publication)
			if err := json.Unmarshal(it.Value(), p); err != nil {
				return fmt.Errorf("publication %s: %w", it.Key(), err)
			}
			out = append(out, p)
		}
		return it.Error()
	})
	if errors.Is(err, errNoJournal) {
		return nil, nil
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Created.After(out[b].Created) })
	return out, err
}

// lockHeld reports whether publication p's serve process (or the publish
// starting it) is alive: whether it holds p's lock. It takes a shared lock
// for an instant, which only another prober can share. A holder killed but
// stuck exiting on its own mount is as good as dead: taking the lock frees
// it (see Journal.Lock).
func (j *Journal) lockHeld(p *Publication) bool {
	f, err := os.Open(filepath.Join(j.dir, "locks", p.ID+".lock"))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK) && (p.ServePID <= 0 || !staging.Dying(p.ServePID))
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}
