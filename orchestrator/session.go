package orchestrator

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/pgporter/pgporter/staging"
)

// State is a session's state. The names are stable: scripts read them from
// 'pgporter sessions --json'.
type State string

// Session states, in the order a successful export goes through them.
const (
	StatePlanned      State = "planned"
	StateChecking     State = "checking"
	StateDumping      State = "dumping"
	StateTransferring State = "transferring"
	StateCleaning     State = "cleaning"
	StateDone         State = "done"
	StateFailed       State = "failed"
	StateCancelled    State = "cancelled"
)

// Final reports whether nothing more will happen to a session in s.
func (s State) Final() bool { return s == StateDone || s == StateCancelled }

// StepState is the state of one step.
type StepState string

// Step states.
const (
	StepPending StepState = "pending"
	StepRunning StepState = "running"
	StepDone    StepState = "done"
	StepFailed  StepState = "failed"
)

// Step names: the fixed steps, and per database "dump:NAME" and
// "transfer:NAME" (DumpStep, TransferStep). ParseStep reads any of them
// back. The names are stable: they are journaled, sent to the orchestrator
// in job events, and shown by 'pgporter sessions'.
const (
	StepMount     = "mount"
	StepStart     = "instance"
	StepCheck     = "check"
	StepGlobals   = "globals"
	StepDump      = "dump"     // per database: DumpStep
	StepTransfer  = "transfer" // per database: TransferStep
	StepCleanup   = "cleanup"
	StepUnpublish = "unpublish" // after an export from a publication, with --unpublish-after
)

// DumpStep names the step that dumps db.
func DumpStep(db string) string { return StepDump + ":" + db }

// TransferStep names the step that delivers db's dump.
func TransferStep(db string) string { return StepTransfer + ":" + db }

// ParseStep splits a step name into its kind, one of the Step constants,
// and, for StepDump and StepTransfer, the database. ok is false for a name
// no session has (a step event from a peer may name anything).
func ParseStep(name string) (kind, db string, ok bool) {
	switch name {
	case StepMount, StepStart, StepCheck, StepGlobals, StepCleanup, StepUnpublish:
		return name, "", true
	}
	kind, db, found := strings.Cut(name, ":")
	if !found || db == "" || (kind != StepDump && kind != StepTransfer) {
		return "", "", false
	}
	return kind, db, true
}

// Step is one journaled step of a session.
type Step struct {
	Name      string    `json:"name"`
	State     StepState `json:"state"`
	Started   time.Time `json:"started,omitzero"`
	Ended     time.Time `json:"ended,omitzero"`
	Bytes     int64     `json:"bytes,omitempty"`
	WireBytes int64     `json:"wire_bytes,omitempty"`
	Detail    string    `json:"detail,omitempty"`
	Error     string    `json:"error,omitempty"`
	Attempts  int       `json:"attempts,omitempty"`
	// Manifest is, for a done transfer step, the BLAKE3-256 (hex) of the
	// pgporter-manifest.json the target committed, as its receiver
	// reported it: what 'pgporter verify --expect' checks a dump against.
	Manifest string `json:"manifest_blake3,omitempty"`
}

// Seconds is how long the step's last run took.
func (s *Step) Seconds() float64 {
	if s.Started.IsZero() || s.Ended.IsZero() {
		return 0
	}
	return s.Ended.Sub(s.Started).Seconds()
}

// Plan is what the user asked for, fixed when the session is created. Its
// JSON is the journal's (inside Session); a mover is handed it as a
// protocol.JobPlan (jobwire.go).
type Plan struct {
	Repo         string   `json:"repo"`
	RestorePoint string   `json:"restore_point"` // resolved ID, never "latest"
	Databases    []string `json:"databases"`
	To           string   `json:"to"`
	PGUser       string   `json:"pg_user"`
	PasswordFile string   `json:"password_file,omitempty"`
	// RepoPasswordFile holds the passphrase of an encrypted Repo, an
	// absolute path: a retry, in another process, reads it again.
	RepoPasswordFile string `json:"repo_password_file,omitempty"`
	Jobs             int    `json:"jobs"`
	Overwrite        bool   `json:"overwrite,omitempty"`
	StagingDir       string `json:"staging_dir"` // dumps go to STAGING_DIR/<session>/<db>
	OSUser           string `json:"os_user"`     // runs postgres
	// Movers on other hosts, as ADDR#PEER_ID; empty means this machine
	// (the repository at Repo, staging in-process, the embedded target).
	RepoPeer string `json:"repo_peer,omitempty"`
	// AllowMissingPreload starts the instance without preload libraries
	// the backup names but this host lacks (they are reported).
	AllowMissingPreload bool `json:"allow_missing_preload,omitempty"`
	// Globals adds pg_dumpall --globals-only (roles, tablespaces) to each
	// database's dump as globals.sql.
	Globals bool `json:"globals,omitempty"`
	// BWLimit caps the transfers' wire bytes per second (0: none).
	BWLimit int64 `json:"bwlimit,omitempty"`
	// SplitTables is the size from which a table's data is dumped in
	// parallel page ranges (staging.DumpOptions.SplitTableBytes; 0 or
	// negative: never).
	SplitTables int64  `json:"split_tables,omitempty"`
	Staging     string `json:"staging,omitempty"`
	Target      string `json:"target,omitempty"`
	// Published names the publication to export from instead of a
	// restore point (publish_session.go); UnpublishAfter ends it after.
	Published      string `json:"published,omitempty"`
	UnpublishAfter bool   `json:"unpublish_after,omitempty"`
	// Auth is how pgporter logs in to the throwaway instance: empty (or
	// AuthPassword, which Create stores as empty) for pgporter's own
	// password-only hba, AuthBackupHBA for the local lines of the
	// backup's pg_hba.conf and no password. Empty in sessions journaled
	// before it, which meant a password; a staging mover older than the
	// field ignores it and asks for a password, which its check then
	// reports as a login that failed.
	Auth string `json:"auth,omitempty"`
	// At makes the export point-in-time: the instance replays the
	// repository's WAL archive to it before the dumps.
	At *PointInTime `json:"at,omitempty"`
	// Filter narrows each dump to some tables or schemas (pg_dump's
	// --table, --schema, --exclude-table, --data-only, --schema-only).
	Filter *staging.DumpFilter `json:"filter,omitempty"`
}

// Resources are what a session holds on the staging host; cleanup and
// cancel release them, and a retry after a crash finds them here.
type Resources struct {
	Mountpoint  string `json:"mountpoint,omitempty"`
	InstancePID int    `json:"instance_pid,omitempty"`
	// Aside maps a database to where its old target directory was moved
	// (--overwrite); cancel puts it back, success removes it.
	Aside map[string]string `json:"aside,omitempty"`
	// MadeTo is what of a local To the session created (todir.go); cancel
	// removes it if it is still as made and empty.
	MadeTo *MadeDirs `json:"made_to,omitempty"`
	// TargetLeft lists the databases whose partial directories on a
	// target mover (Plan.Target) a cancel could not remove yet (the
	// target was unreachable): the next cancel asks again.
	TargetLeft []string `json:"target_left,omitempty"`
}

// Session is the journal record of one export.
type Session struct {
	ID        string    `json:"id"`
	State     State     `json:"state"`
	Created   time.Time `json:"created"`
	Updated   time.Time `json:"updated"`
	Plan      Plan      `json:"plan"`
	Steps     []*Step   `json:"steps"`
	Resources Resources `json:"resources"`
	// Reached is where a point-in-time export's recovery stopped (Plan.At).
	Reached *staging.Reached `json:"reached,omitempty"`
	Error   string           `json:"error,omitempty"`
	PID     int              `json:"pid,omitempty"` // the process running it, while it runs
	// Removed lists the directories of a local To that cancel removed:
	// those the session had created, found empty.
	Removed []string `json:"removed,omitempty"`
	// RemovedOnTarget lists the DEST.partial directories on the target
	// mover (Plan.Target) that cancel had it remove; TargetNotes says what
	// stays there and why (a target too old to remove them, one that
	// refused).
	RemovedOnTarget []string `json:"removed_on_target,omitempty"`
	TargetNotes     []string `json:"target_notes,omitempty"`
}

// Step returns the step named name, adding it if it is missing.
func (s *Session) Step(name string) *Step {
	for _, st := range s.Steps {
		if st.Name == name {
			return st
		}
	}
	st := &Step{Name: name, State: StepPending}
	s.Steps = append(s.Steps, st)
	return st
}

// Manifests maps each database whose transfer is done to the BLAKE3 (hex)
// of its committed manifest, where the journal holds one.
func (s *Session) Manifests() map[string]string {
	out := map[string]string{}
	for _, db := range s.Plan.Databases {
		for _, st := range s.Steps {
			if st.Name == TransferStep(db) && st.State == StepDone && st.Manifest != "" {
				out[db] = st.Manifest
			}
		}
	}
	return out
}

// SessionDir is where the session's staging files live: dumps, the
// copy-on-write layer and the instance's run directory.
func (s *Session) SessionDir() string { return s.Plan.StagingDir + "/" + s.ID }

// DumpDir is where the dump of db is written on the staging host.
func (s *Session) DumpDir(db string) string { return s.SessionDir() + "/dumps/" + dbDirName(db) }

// TargetDir is where db's dump lands on the target.
func (s *Session) TargetDir(db string) string { return s.Plan.To + "/" + dbDirName(db) }

// dbDirName is a database name as a directory name: names are matched
// exactly, but '/' and a leading '.' cannot be used as they are.
func dbDirName(db string) string {
	out := make([]rune, 0, len(db))
	for i, r := range db {
		switch {
		case r == '/' || r == 0:
			out = append(out, '_')
		case i == 0 && r == '.':
			out = append(out, '_')
		default:
			out = append(out, r)
		}
	}
	return string(out)
}

func newSessionID(now time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("x-%s-%s", now.UTC().Format("20060102-150405"), hex.EncodeToString(b[:]))
}
