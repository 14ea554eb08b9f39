package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// The job messages of remote orchestration: an orchestrator trusted with
// orchestrate hands a mover a job (RunJob: the staging half of an export
// session, or a publication's), and the mover reports its events until the
// job ends (JobEvent). Both travel on the control stream as one bytes field
// holding a JSON object tagged with its kind and its version
// (docs/PROTOCOL.md, section 5, 22 and 23). They are the wire's own types:
// package orchestrator converts its plans, events and publications to and
// from them, and nothing else is journaled or shown in their form.
//
// A job message comes from a peer: Decode bounds its size, refuses a kind
// or a version this build does not know, a field it does not know, and any
// JSON but the one encoding Append writes.

// JobVersion is the version of the job messages' schema this build speaks.
// A change to a job message (a field added, removed or changed in meaning)
// is a new version; a receiver refuses a version it does not speak with an
// error matching ErrVersion.
//
// Version 2 added JobPlan.Filter (export --table and its kin), JobPlan.At
// (export --at) and PublishSpec.At (publish --on --at).
const JobVersion = 2

// MaxJobBody bounds the JSON body of RunJob and JobEvent.
const MaxJobBody = 64 << 10

// JobKind says what a RunJob asks for.
type JobKind string

// Job kinds.
const (
	// JobExport runs (or continues) the staging half of export session
	// Session with Plan; JobCancelExport cancels it.
	JobExport       JobKind = "export"
	JobCancelExport JobKind = "cancel-export"
	// JobExportPublished runs (or continues) export session Session from
	// a publication of the mover (Plan.Published); JobCancelExportPublished
	// cancels it.
	JobExportPublished       JobKind = "export-published"
	JobCancelExportPublished JobKind = "cancel-export-published"
	// JobPublish publishes a restore point on the mover (Publish);
	// JobListPublications lists its publications; JobUnpublish and
	// JobResume end and resume publication Publication.
	JobPublish          JobKind = "publish"
	JobListPublications JobKind = "list-publications"
	JobUnpublish        JobKind = "unpublish"
	JobResume           JobKind = "resume"
)

// jobNeeds is what each kind requires of a RunJob; a kind not listed is
// unknown.
var jobNeeds = map[JobKind]struct{ session, plan, publish, publication bool }{
	JobExport:                {session: true, plan: true},
	JobCancelExport:          {session: true},
	JobExportPublished:       {session: true, plan: true},
	JobCancelExportPublished: {session: true},
	JobPublish:               {publish: true},
	JobListPublications:      {},
	JobUnpublish:             {publication: true},
	JobResume:                {publication: true},
}

// EventKind says what a JobEvent reports.
type EventKind string

// Event kinds. The step events (start to warning) are those of a session's
// steps, as an orchestrator reports them to its user too.
const (
	EventStart    EventKind = "start"    // a step starts
	EventProgress EventKind = "progress" // a step's figures so far
	EventDone     EventKind = "done"     // a step is done, with its figures
	EventSkip     EventKind = "skip"     // a step was done by an earlier run
	EventWarning  EventKind = "warning"  // something the user should know
	// EventResult is the outcome of a publication job: the publication,
	// or the list of them.
	EventResult EventKind = "result"
	// EventEnd is the last event of every job, with the error if it failed.
	EventEnd EventKind = "end"
)

func (k EventKind) known() bool {
	switch k {
	case EventStart, EventProgress, EventDone, EventSkip, EventWarning, EventResult, EventEnd:
		return true
	}
	return false
}

// RunJob asks a mover to run a job. The mover answers with JobEvent
// messages, the last of which is of kind EventEnd.
type RunJob struct {
	Kind    JobKind `json:"kind"`
	Version int     `json:"v"` // JobVersion
	// Session is the ID of the export session, which the mover journals
	// under the same ID so that the same job sent again continues it.
	Session string   `json:"session,omitempty"`
	Plan    *JobPlan `json:"plan,omitempty"`
	// Password is the PostgreSQL user's, if the orchestrator found one.
	Password string `json:"password,omitempty"`
	// Publication is the ID of the publication to end or resume.
	Publication string       `json:"publication,omitempty"`
	Publish     *PublishSpec `json:"publish,omitempty"`
}

// JobPlan is an export session's plan as a mover is handed it: what to
// export and where to send it.
type JobPlan struct {
	Repo                string   `json:"repo,omitempty"`
	RepoPeer            string   `json:"repo_peer,omitempty"`
	RestorePoint        string   `json:"restore_point,omitempty"`
	Published           string   `json:"published,omitempty"`
	Databases           []string `json:"databases,omitempty"`
	To                  string   `json:"to,omitempty"`
	Target              string   `json:"target,omitempty"`
	PGUser              string   `json:"pg_user,omitempty"`
	Auth                string   `json:"auth,omitempty"`
	Jobs                int      `json:"jobs,omitempty"`
	Overwrite           bool     `json:"overwrite,omitempty"`
	StagingDir          string   `json:"staging_dir,omitempty"`
	OSUser              string   `json:"os_user,omitempty"`
	AllowMissingPreload bool     `json:"allow_missing_preload,omitempty"`
	Globals             bool     `json:"globals,omitempty"`
	BWLimit             int64    `json:"bwlimit,omitempty"`
	SplitTables         int64    `json:"split_tables,omitempty"`
	UnpublishAfter      bool     `json:"unpublish_after,omitempty"`
	// Filter narrows each dump; absent: whole databases.
	Filter *JobFilter `json:"filter,omitempty"`
	// At makes the export point-in-time: the instance recovers with the
	// repository's WAL archive to it; absent: as of the restore point.
	At *JobPointInTime `json:"at,omitempty"`
}

// JobPointInTime is a point-in-time export's recovery target: at most one
// of Time, LSN and Name (none: the end of the archive), and the timeline
// recovery follows.
type JobPointInTime struct {
	Time     time.Time `json:"time,omitzero"`
	LSN      string    `json:"lsn,omitempty"`
	Name     string    `json:"name,omitempty"`
	Timeline string    `json:"timeline,omitempty"`
}

// maxTargetText bounds JobPointInTime's text fields, in bytes.
const maxTargetText = 256

func (a *JobPointInTime) check() error {
	n := 0
	for _, v := range []string{a.LSN, a.Name, a.Timeline} {
		if len(v) > maxTargetText || strings.ContainsAny(v, "\x00\n'") || !utf8.ValidString(v) {
			return violation("a point-in-time target holds more than %d bytes, or a NUL, newline or quote", maxTargetText)
		}
	}
	for _, set := range []bool{!a.Time.IsZero(), a.LSN != "", a.Name != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		return violation("a point-in-time target names more than one of a time, an LSN and a name")
	}
	return nil
}

// JobFilter narrows each dump to some tables or schemas, with pg_dump's
// options and pattern rules (export --table, --schema, --exclude-table,
// --data-only, --schema-only).
type JobFilter struct {
	Tables        []string `json:"tables,omitempty"`
	Schemas       []string `json:"schemas,omitempty"`
	ExcludeTables []string `json:"exclude_tables,omitempty"`
	DataOnly      bool     `json:"data_only,omitempty"`
	SchemaOnly    bool     `json:"schema_only,omitempty"`
}

// MaxFilterPattern bounds a pattern of a JobFilter, in bytes.
const MaxFilterPattern = 1024

func (f *JobFilter) check() error {
	for _, list := range [][]string{f.Tables, f.Schemas, f.ExcludeTables} {
		for _, p := range list {
			if p == "" || len(p) > MaxFilterPattern || strings.ContainsRune(p, 0) || !utf8.ValidString(p) {
				return violation("a dump filter pattern is empty, longer than %d bytes, or not NUL-free UTF-8", MaxFilterPattern)
			}
		}
	}
	if f.DataOnly && f.SchemaOnly {
		return violation("a dump filter is data-only and schema-only")
	}
	return nil
}

// PublishSpec is what a publish job asks for.
type PublishSpec struct {
	Repo         string        `json:"repo,omitempty"`
	RepoPeer     string        `json:"repo_peer,omitempty"`
	RetryFor     time.Duration `json:"retry_for,omitempty"` // nanoseconds
	RestorePoint string        `json:"restore_point,omitempty"`
	Listen       string        `json:"listen,omitempty"`
	Port         int           `json:"port,omitempty"`
	Auth         string        `json:"auth,omitempty"`
	StrictHBA    bool          `json:"strict_hba,omitempty"`
	OSUser       string        `json:"os_user,omitempty"`
	OnRestart    string        `json:"on_restart,omitempty"`
	// At makes the publication point-in-time, as JobPlan.At an export.
	At *JobPointInTime `json:"at,omitempty"`
}

// JobEvent reports an event of a running job.
type JobEvent struct {
	Kind    EventKind `json:"kind"`
	Version int       `json:"v"` // JobVersion
	// Step names the session step of a step event.
	Step      string `json:"step,omitempty"`
	Done      int64  `json:"done,omitempty"`
	Total     int64  `json:"total,omitempty"`
	WireBytes int64  `json:"wire_bytes,omitempty"`
	Text      string `json:"text,omitempty"`
	// Manifest is, in a transfer step's done or skip event, the BLAKE3
	// (hex) of the manifest the target committed.
	Manifest string `json:"manifest_blake3,omitempty"`
	// Error, in the end event of a job that failed: its message, its
	// error code (section 8's name) and, when the job runner's own kind of
	// failure has one, its reason.
	Error  string `json:"error,omitempty"`
	Code   string `json:"code,omitempty"`
	Reason string `json:"reason,omitempty"`
	// In a result event.
	Publication  *JobPublication  `json:"publication,omitempty"`
	Publications []JobPublication `json:"publications,omitempty"`
}

// JobPublication is a publication as the mover that runs it reports it.
type JobPublication struct {
	ID           string        `json:"id,omitempty"`
	State        string        `json:"state,omitempty"`
	Error        string        `json:"error,omitempty"`
	Repo         string        `json:"repo,omitempty"`
	RepoPeer     string        `json:"repo_peer,omitempty"`
	RetryFor     time.Duration `json:"retry_for,omitempty"`
	RestorePoint string        `json:"restore_point,omitempty"`
	Version      string        `json:"version,omitempty"` // PostgreSQL's major version
	Listen       string        `json:"listen,omitempty"`
	Port         int           `json:"port,omitempty"`
	Auth         string        `json:"auth,omitempty"`
	OSUser       string        `json:"os_user,omitempty"`
	OnRestart    string        `json:"on_restart,omitempty"`
	Restarts     int           `json:"restarts,omitempty"`
	CowBytes     int64         `json:"cow_bytes,omitempty"`
	Created      time.Time     `json:"created,omitzero"`
	UpSince      time.Time     `json:"up_since,omitzero"`
	Updated      time.Time     `json:"updated,omitzero"`
}

func (*RunJob) Type() Type               { return TypeRunJob }
func (m *RunJob) Append(b []byte) []byte { return appendJSON(b, m) }
func (m *RunJob) decode(d *decoder)      { d.json("job", m) }

func (m *RunJob) check() error {
	if err := checkJob("job", m.Version, m); err != nil {
		return err
	}
	need, ok := jobNeeds[m.Kind]
	switch {
	case !ok:
		return violation("unknown job kind %q (this build speaks job version %d)", truncate(string(m.Kind), 64), JobVersion)
	case need.session != (m.Session != ""):
		return violation("job kind %q %s a session", m.Kind, needsOrNot(need.session))
	case need.plan != (m.Plan != nil):
		return violation("job kind %q %s a plan", m.Kind, needsOrNot(need.plan))
	case need.publish != (m.Publish != nil):
		return violation("job kind %q %s publish options", m.Kind, needsOrNot(need.publish))
	case need.publication != (m.Publication != ""):
		return violation("job kind %q %s a publication ID", m.Kind, needsOrNot(need.publication))
	case m.Password != "" && !need.plan:
		return violation("job kind %q does not take a password", m.Kind)
	case m.Plan != nil && m.Plan.Filter != nil:
		if err := m.Plan.Filter.check(); err != nil {
			return err
		}
	}
	if m.Plan != nil && m.Plan.At != nil {
		return m.Plan.At.check()
	}
	if m.Publish != nil && m.Publish.At != nil {
		return m.Publish.At.check()
	}
	return nil
}

func needsOrNot(need bool) string {
	if need {
		return "needs"
	}
	return "does not take"
}

func (*JobEvent) Type() Type               { return TypeJobEvent }
func (m *JobEvent) Append(b []byte) []byte { return appendJSON(b, m) }
func (m *JobEvent) decode(d *decoder)      { d.json("job event", m) }

func (m *JobEvent) check() error {
	if err := checkJob("job event", m.Version, m); err != nil {
		return err
	}
	if !m.Kind.known() {
		return violation("unknown job event kind %q (this build speaks job version %d)", truncate(string(m.Kind), 64), JobVersion)
	}
	if (m.Error != "" || m.Code != "" || m.Reason != "") && m.Kind != EventEnd {
		return violation("a job event of kind %q carries an error", m.Kind)
	}
	if (m.Publication != nil || m.Publications != nil) && m.Kind != EventResult {
		return violation("a job event of kind %q carries publications", m.Kind)
	}
	return nil
}

// appendJSON appends m's JSON as a bytes field.
func appendJSON(b []byte, m any) []byte { return appendBytes(b, jobBody(m)) }

// jobBody is the JSON of job message m. The job messages hold strings,
// numbers, times and lists of them: encoding cannot fail.
func jobBody(m any) []byte {
	body, err := json.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("protocol: encoding %T: %v", m, err))
	}
	return body
}

// json decodes a job message's body into m: a JSON object of version
// JobVersion with only m's fields, in the one encoding jobBody writes (so
// that, as every other field of the protocol, a message has exactly one
// encoding). The version is read first: a message of another version is
// an ErrVersion, whatever its fields.
func (d *decoder) json(field string, m any) {
	body := d.bytes(field, MaxJobBody)
	if d.err != nil {
		return
	}
	var tag struct {
		Version int `json:"v"`
	}
	if err := json.Unmarshal(body, &tag); err != nil {
		d.fail("%s is not a JSON object: %v", field, err)
		return
	}
	if err := checkVersion(field, tag.Version); err != nil {
		d.err = err
		return
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(m); err != nil {
		d.fail("%s is not a job message of version %d: %v", field, JobVersion, err)
		return
	}
	if !bytes.Equal(jobBody(m), body) {
		d.fail("%s is not in the encoding of docs/PROTOCOL.md (section 5, 22 and 23)", field)
	}
}

// checkVersion refuses a job message of a version this build does not
// speak, as ErrVersion.
func checkVersion(field string, v int) error {
	switch v {
	case JobVersion:
		return nil
	case 0:
		return fmt.Errorf("%w: %s of version 0, from a build before job versions (protocol 7); this build speaks job version %d", ErrVersion, field, JobVersion)
	}
	return fmt.Errorf("%w: %s of version %d; this build speaks job version %d", ErrVersion, field, v, JobVersion)
}

// checkJob checks what every job message shares: its version and its
// size.
func checkJob(field string, version int, m any) error {
	if err := checkVersion(field, version); err != nil {
		return err
	}
	if n := len(jobBody(m)); n > MaxJobBody {
		return violation("%s of %d bytes exceeds %d", field, n, MaxJobBody)
	}
	return nil
}
