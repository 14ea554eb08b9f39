package orchestrator

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/internal/walproxy"
	"github.com/pgporter/pgporter/staging"
)

// PointInTime is the recovery target of a point-in-time export: at most one
// of Time, LSN and Name; none means the end of the WAL archive.
type PointInTime struct {
	Time time.Time `json:"time,omitzero"`
	LSN  string    `json:"lsn,omitempty"`
	Name string    `json:"name,omitempty"`
	// Timeline is the timeline recovery follows: "" (latest), "current"
	// (the restore point's), or a timeline ID.
	Timeline string `json:"timeline,omitempty"`
}

// recovery is the instance's recovery to t, fetching WAL with
// restoreCommand.
func (t *PointInTime) recovery(restoreCommand string) *staging.Recovery {
	r := &staging.Recovery{RestoreCommand: restoreCommand, LSN: t.LSN, Name: t.Name, Timeline: t.Timeline}
	if !t.Time.IsZero() {
		// UTC with microseconds: PostgreSQL reads it whatever its TimeZone.
		r.Time = t.Time.UTC().Format("2006-01-02 15:04:05.999999") + "+00"
	}
	return r
}

// ExitWALMissing is the exit code of 'pgporter wal-fetch' for a file the
// archive lacks (the CLI's not-found code).
const ExitWALMissing = 8

// walRecovery is the instance's recovery to at, fetching WAL from the
// repository at repo with self's wal-fetch (self empty: this process's
// executable), after checking that osUser can run it there.
// fetchesDirectly reports whether a point-in-time instance's
// restore_command may read the repository itself (wal-fetch --repo): only
// a plain directory. The instance's OS user cannot reach a repository
// mover (the mover identity is root's), nor an object store (the
// credentials and the cache are this process's), nor open an encrypted
// repository (its passphrase is this process's): this process then
// fetches for it, through the WAL proxy.
func fetchesDirectly(repo, repoPeer string, src Source) bool {
	if repoPeer != "" || chunkstore.IsRepoURL(repo) {
		return false
	}
	l, ok := src.(localSource)
	return ok && !l.r.Encrypted()
}

func walRecovery(ctx context.Context, at *PointInTime, self, repo, osUser string) (*staging.Recovery, error) {
	return walRecoveryFrom(ctx, at, self, "--repo "+shellQuote(repo), osUser)
}

// walRecoveryFrom is walRecovery with wal-fetch's source flags.
func walRecoveryFrom(ctx context.Context, at *PointInTime, self, from, osUser string) (*staging.Recovery, error) {
	if self == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("finding pgporter's executable for the instance's restore_command: %w", err)
		}
		self = shellQuote(exe)
	}
	rec := at.recovery(self + " wal-fetch " + from + " %f %p")
	if err := staging.CheckRestoreCommand(ctx, osUser, rec.RestoreCommand, ExitWALMissing); err != nil {
		return nil, err
	}
	return rec, nil
}

// takenBefore keeps, of rps, those a recovery to at can start from: for a
// time, the restore points taken before it; an error if none is.
func takenBefore(rps []chunkstore.RestorePoint, at *PointInTime, repo string) ([]chunkstore.RestorePoint, error) {
	if at.Time.IsZero() {
		return rps, nil
	}
	rps = slices.DeleteFunc(rps, func(rp chunkstore.RestorePoint) bool { return !rp.Time.Before(at.Time) })
	if len(rps) == 0 {
		return nil, fmt.Errorf("%w: no restore point in %s was taken before %s (see 'pgporter restore-points --repo %s')",
			chunkstore.ErrNoRestorePoint, repo, at.Time.Format(time.RFC3339), repo)
	}
	return rps, nil
}

// shellQuote quotes s as one word for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// pointBefore returns the ID of the newest restore point of src (the
// repository where names) taken before at's time; "latest" for a target
// that is not a time.
func pointBefore(ctx context.Context, src Source, at *PointInTime, where string) (string, error) {
	if at.Time.IsZero() {
		return "latest", nil
	}
	rps, err := src.List(ctx)
	if err != nil {
		return "", err
	}
	if rps, err = takenBefore(rps, at, where); err != nil {
		return "", err
	}
	return rps[len(rps)-1].ID, nil
}

// startWALProxy serves the WAL archive of src (a repository mover's, or a
// repository on object storage) to the instance's restore_command, run as
// osUser.
func startWALProxy(ctx context.Context, src Source, osUser string, log *slog.Logger) (*walproxy.Server, error) {
	f, ok := src.(interface {
		FetchWAL(ctx context.Context, name, dst string) error
	})
	if !ok {
		return nil, fmt.Errorf("the repository holds no WAL archive this build can read")
	}
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup(osUser)
		if err != nil {
			return nil, fmt.Errorf("the instance's OS user: %w", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}
	return walproxy.Start(ctx, f.FetchWAL, uid, gid, log)
}
