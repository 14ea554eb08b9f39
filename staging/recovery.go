package staging

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Recovery makes an instance replay archived WAL before it opens: a
// point-in-time start. The instance recovers to the target (or, with no
// target, to the end of the archive) and is then promoted, so it comes up
// read-write on a new timeline in the copy-on-write layer; the backup never
// changes.
type Recovery struct {
	// RestoreCommand is PostgreSQL's restore_command (%f and %p in it),
	// run by the instance's OS user.
	RestoreCommand string
	// At most one target; none means the end of the archive.
	Time string // recovery_target_time, e.g. "2026-12-01 14:32:00+00"
	LSN  string // recovery_target_lsn, e.g. "0/3000148"
	Name string // recovery_target_name (pg_create_restore_point)
	// Timeline is recovery_target_timeline: "" or "latest" (the newest
	// timeline in the archive), "current" (the backup's), or a timeline ID.
	Timeline string
}

// ErrTargetNotReached is matched by StartInstance's error when the archive
// ends before the recovery target.
var ErrTargetNotReached = errors.New("staging: the WAL archive ends before the recovery target")

var (
	lsnPattern      = regexp.MustCompile(`^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$`)
	timelinePattern = regexp.MustCompile(`^[1-9][0-9]{0,9}$`)
)

// Validate checks that r names at most one well-formed target.
func (r *Recovery) Validate() error {
	n := 0
	for _, v := range []string{r.Time, r.LSN, r.Name} {
		if v != "" {
			n++
		}
	}
	switch {
	case r.RestoreCommand == "":
		return errors.New("staging: recovery needs a restore_command")
	case n > 1:
		return errors.New("staging: recovery takes one target: a time, an LSN or a name")
	case r.LSN != "" && !lsnPattern.MatchString(r.LSN):
		return fmt.Errorf("staging: %q is not an LSN (like 0/3000148)", r.LSN)
	case r.Timeline != "" && r.Timeline != "latest" && r.Timeline != "current" && !timelinePattern.MatchString(r.Timeline):
		return fmt.Errorf("staging: %q is not a timeline: latest, current, or a timeline ID", r.Timeline)
	case strings.ContainsAny(r.Time+r.Name, "\x00\n'"):
		return errors.New("staging: a recovery target may not hold quotes, NUL or newlines")
	}
	return nil
}

// Target describes the target for people: "time 2026-…", "the end of the
// archive".
func (r *Recovery) Target() string {
	switch {
	case r.Time != "":
		return "time " + r.Time
	case r.LSN != "":
		return "LSN " + r.LSN
	case r.Name != "":
		return "restore point " + r.Name
	}
	return "the end of the archive"
}

// settings are the command-line settings of the recovery run for r.
func (r *Recovery) settings() []string {
	// Hot standby off: it would insist on the primary's replication
	// settings, which the instance turns off.
	tl := r.Timeline
	if tl == "" {
		tl = "latest"
	}
	s := []string{"restore_command=" + r.RestoreCommand, "recovery_target_timeline=" + tl, "hot_standby=off"}
	switch {
	case r.Time != "":
		s = append(s, "recovery_target_time="+r.Time)
	case r.LSN != "":
		s = append(s, "recovery_target_lsn="+r.LSN)
	case r.Name != "":
		s = append(s, "recovery_target_name="+r.Name)
	}
	if r.Time != "" || r.LSN != "" || r.Name != "" {
		s = append(s, "recovery_target_action=promote")
	}
	var args []string
	for _, kv := range s {
		args = append(args, "-c", kv)
	}
	return args
}

// signal writes recovery.signal into the data directory, owned by the
// instance's OS user.
func (r *Recovery) signal(dataDir string, cred *syscall.Credential) error {
	return writeSignal(dataDir, "recovery.signal", cred)
}

// writeSignal writes the empty signal file name (recovery.signal,
// standby.signal) into the data directory, owned by the instance's OS user.
func writeSignal(dataDir, name string, cred *syscall.Credential) error {
	p := filepath.Join(dataDir, name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		return fmt.Errorf("staging: writing %s: %w", name, err)
	}
	if cred != nil {
		if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
			return fmt.Errorf("staging: writing %s: %w", name, err)
		}
	}
	return nil
}

// Reached is the point a recovery stopped at.
type Reached struct {
	// Time is the commit time of the last transaction replayed; zero when
	// recovery replayed none.
	Time time.Time `json:"time,omitzero"`
	// LSN is the location of the last WAL record replayed.
	LSN string `json:"lsn"`
}

// String describes r for people.
func (r Reached) String() string {
	if r.Time.IsZero() {
		return "LSN " + r.LSN + " (no transaction replayed)"
	}
	return "LSN " + r.LSN + ", last transaction committed at " + r.Time.Format(time.RFC3339Nano)
}

// recoveredMarker prefixes the line of the single-user recovery run that
// recoverSingle reads.
const recoveredMarker = "pgporter-recovered:"

// recoverSingle replays the archive in a single-user run of postgres (with
// args, which carry the recovery settings), before anything else reads the
// catalog: the role settings scrub and the server itself then start from
// the recovered, promoted cluster. The same process reports where replay
// stopped.
func recoverSingle(ctx context.Context, bin, logFile string, cred *syscall.Credential, args []string) (Reached, error) {
	// Epoch seconds and the LSN's text do not depend on the backup's
	// DateStyle or locale.
	script := "SELECT '" + recoveredMarker + "' || coalesce(extract(epoch FROM pg_last_xact_replay_timestamp())::text, '') || '|' || coalesce(pg_last_wal_replay_lsn()::text, '')\n"
	values, stderr, err := singleUser(ctx, bin, logFile, "replaying the WAL archive", cred, args, script, recoveredMarker)
	if strings.Contains(stderr, "recovery ended before configured recovery target was reached") {
		return Reached{}, fmt.Errorf("%w: %s", ErrTargetNotReached, lastLines(stderr, 6))
	}
	if err == nil && len(values) > 0 {
		epoch, lsn, _ := strings.Cut(strings.TrimSpace(values[0]), "|")
		r := Reached{LSN: lsn}
		if epoch != "" {
			f, perr := strconv.ParseFloat(epoch, 64)
			if perr != nil {
				return Reached{}, fmt.Errorf("staging: reading where recovery stopped: %w", perr)
			}
			r.Time = time.Unix(0, int64(f*1e9)).UTC().Round(time.Microsecond)
		}
		return r, nil
	}
	lastErr := fmt.Sprintf("%v: %s", err, lastLines(stderr, 10))
	return Reached{}, fmt.Errorf("replaying the WAL archive in single-user mode: %s", lastErr)
}

// CheckRestoreCommand runs restoreCommand as osUser, the way the instance
// will, for a file no archive holds (a timeline history file of the last
// timeline there can be), before any recovery depends on it: a command
// that cannot run, or a repository the user cannot read, would otherwise
// look to PostgreSQL like the end of the archive. The command must fail
// with exitMissing, what it returns for a file the archive lacks.
func CheckRestoreCommand(ctx context.Context, osUser, restoreCommand string, exitMissing int) error {
	cred, err := osCredential(osUser)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "pgporter-restore-check-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return err
		}
	}
	cmdline := strings.NewReplacer("%f", "FFFFFFFF.history", "%p", filepath.Join(dir, "probe"), "%r", "", "%%", "%").Replace(restoreCommand)
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", cmdline)
	cmd.Env = []string{"LANG=C.UTF-8", "PATH=/usr/bin:/bin"}
	cmd.Dir = dir
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	out, err := cmd.CombinedOutput()
	if ee, ok := errors.AsType[*exec.ExitError](err); ok && ee.ExitCode() == exitMissing {
		return nil
	}
	return fmt.Errorf("staging: the %s OS user cannot fetch WAL with %q (%v): %s", osUser, cmdline, err, lastLines(string(out), 5))
}
