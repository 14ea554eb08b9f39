package orchestrator

import (
	"context"
	"fmt"

	"github.com/pgporter/pgporter/internal/bytesize"
	"github.com/pgporter/pgporter/protocol"
	"github.com/pgporter/pgporter/staging"
)

// The check and dump steps run on an instance: the one an export brings up
// on its restore point (stage), or a publication's (runPublished). What
// differs between the two is in checkSpec and in what each caller does
// around a dump.

// checkSpec is what the check step varies by.
type checkSpec struct {
	in       *staging.Instance
	password string // PostgreSQL's; none with --auth backup-hba
	dumpDir  string // where the dumps go: its free space is checked
	// mount, if set, is the restore point under the instance: a failed
	// read through it fails the check, and it sizes the tables from its
	// tree. A publication's is not checked.
	mount  *staging.Mounted
	filter *staging.DumpFilter
	tgt    *targetMover // if set, asked for the free space at the plan's To
	detail string       // added to the step's detail
	warn   bool         // the report's warnings become events
}

// check is the check step: what the instance holds is complete, the
// databases are there, and the dump directory and the target have room for
// the estimated dumps.
func (x *sessionRun) check(ctx context.Context, c checkSpec, out *stepOutcome) error {
	p := x.plan()
	co := staging.CheckOptions{Databases: p.Databases, User: p.PGUser, Password: c.password, DumpDir: c.dumpDir, Filter: c.filter}
	if c.mount != nil {
		// The start read the WAL and more through the mount; PostgreSQL
		// takes some failed reads (of WAL: its end) in its stride.
		if err := mountReadErr(c.mount); err != nil {
			return err
		}
		co.SizeOf = c.mount.FileSize
	}
	if tgt := c.tgt; tgt != nil {
		co.TargetFree = func(ctx context.Context) (int64, error) {
			free, _, err := tgt.sender.Space(ctx, tgt.addr, tgt.peer, p.To)
			return int64(free), err
		}
	}
	rep, err := c.in.Check(ctx, co)
	if err != nil {
		return err
	}
	var total int64
	for _, n := range rep.Estimate {
		total += n
	}
	out.Bytes = total
	out.Detail = "estimated dump size " + bytesize.Format(total) + c.detail
	for _, pr := range rep.Problems {
		if pr.Warning && c.warn {
			x.r.emit(Event{Step: StepCheck, Kind: protocol.EventWarning, Text: pr.String()})
		}
	}
	return rep.Err()
}

// dumpDB runs pg_dump -Fd of db from in with o, its database, user, jobs,
// table splitting and progress events filled in from the plan.
func (x *sessionRun) dumpDB(ctx context.Context, in *staging.Instance, db, password string, o staging.DumpOptions) (*staging.DumpResult, error) {
	p, step := x.plan(), DumpStep(db)
	o.DB, o.User, o.Password, o.Jobs, o.SplitTableBytes = db, p.PGUser, password, p.Jobs, p.SplitTables
	o.Progress = func(done, total int) {
		x.r.emit(Event{Step: step, Kind: protocol.EventProgress, Done: int64(done), Total: int64(total)})
	}
	return in.Dump(ctx, o)
}

// dumped puts a finished dump's size and tables into out.
func (out *stepOutcome) dumped(res *staging.DumpResult) {
	out.Bytes, out.Detail = res.Bytes, fmt.Sprintf("%d tables", res.Tables)
}
