package orchestrator

import (
	"github.com/pgporter/pgporter/protocol"
	"github.com/pgporter/pgporter/staging"
)

// Conversions between the orchestrator's own types and the job messages of
// the wire (protocol.RunJob, protocol.JobEvent), which are defined by
// docs/PROTOCOL.md and change only with protocol.JobVersion. Plans and
// publications are journaled in their own form (journal.go), never in the
// wire's.

// planToWire is the plan as a mover is handed it. Staging and PasswordFile
// stay here: a mover hands no job on, and the password travels in the job.
func planToWire(p *Plan) *protocol.JobPlan {
	return &protocol.JobPlan{
		Repo:                p.Repo,
		RepoPeer:            p.RepoPeer,
		RestorePoint:        p.RestorePoint,
		Published:           p.Published,
		Databases:           p.Databases,
		To:                  p.To,
		Target:              p.Target,
		PGUser:              p.PGUser,
		Auth:                p.Auth,
		Jobs:                p.Jobs,
		Overwrite:           p.Overwrite,
		StagingDir:          p.StagingDir,
		OSUser:              p.OSUser,
		AllowMissingPreload: p.AllowMissingPreload,
		Globals:             p.Globals,
		BWLimit:             p.BWLimit,
		SplitTables:         p.SplitTables,
		UnpublishAfter:      p.UnpublishAfter,
		Filter:              filterToWire(p.Filter),
		At:                  atToWire(p.At),
	}
}

func atToWire(a *PointInTime) *protocol.JobPointInTime {
	if a == nil {
		return nil
	}
	return &protocol.JobPointInTime{Time: a.Time, LSN: a.LSN, Name: a.Name, Timeline: a.Timeline}
}

func atFromWire(w *protocol.JobPointInTime) *PointInTime {
	if w == nil {
		return nil
	}
	return &PointInTime{Time: w.Time, LSN: w.LSN, Name: w.Name, Timeline: w.Timeline}
}

func filterToWire(f *staging.DumpFilter) *protocol.JobFilter {
	if f.IsZero() {
		return nil
	}
	return &protocol.JobFilter{Tables: f.Tables, Schemas: f.Schemas, ExcludeTables: f.ExcludeTables, DataOnly: f.DataOnly, SchemaOnly: f.SchemaOnly}
}

func filterFromWire(w *protocol.JobFilter) *staging.DumpFilter {
	if w == nil {
		return nil
	}
	return &staging.DumpFilter{Tables: w.Tables, Schemas: w.Schemas, ExcludeTables: w.ExcludeTables, DataOnly: w.DataOnly, SchemaOnly: w.SchemaOnly}
}

// planFromWire is the plan a peer handed this mover, before the mover
// confines it (confinePlan, confineSessionPlan).
func planFromWire(w *protocol.JobPlan) Plan {
	return Plan{
		Repo:                w.Repo,
		RepoPeer:            w.RepoPeer,
		RestorePoint:        w.RestorePoint,
		Published:           w.Published,
		Databases:           w.Databases,
		To:                  w.To,
		Target:              w.Target,
		PGUser:              w.PGUser,
		Auth:                w.Auth,
		Jobs:                w.Jobs,
		Overwrite:           w.Overwrite,
		StagingDir:          w.StagingDir,
		OSUser:              w.OSUser,
		AllowMissingPreload: w.AllowMissingPreload,
		Globals:             w.Globals,
		BWLimit:             w.BWLimit,
		SplitTables:         w.SplitTables,
		UnpublishAfter:      w.UnpublishAfter,
		Filter:              filterFromWire(w.Filter),
		At:                  atFromWire(w.At),
	}
}

// publishToWire is a publish job's options; the serve command is the
// mover's own and does not travel.
func publishToWire(o PublishOptions) *protocol.PublishSpec {
	return &protocol.PublishSpec{
		Repo:         o.Repo,
		RepoPeer:     o.RepoPeer,
		RetryFor:     o.RetryFor,
		RestorePoint: o.RestorePoint,
		Listen:       o.Listen,
		Port:         o.Port,
		Auth:         o.Auth,
		StrictHBA:    o.StrictHBA,
		OSUser:       o.OSUser,
		OnRestart:    o.OnRestart,
		At:           atToWire(o.At),
	}
}

func publishFromWire(w *protocol.PublishSpec) PublishOptions {
	return PublishOptions{
		Repo:         w.Repo,
		RepoPeer:     w.RepoPeer,
		RetryFor:     w.RetryFor,
		RestorePoint: w.RestorePoint,
		Listen:       w.Listen,
		Port:         w.Port,
		Auth:         w.Auth,
		StrictHBA:    w.StrictHBA,
		OSUser:       w.OSUser,
		OnRestart:    w.OnRestart,
		At:           atFromWire(w.At),
	}
}

// eventToWire is a step event as a job reports it.
func eventToWire(e Event) *protocol.JobEvent {
	return &protocol.JobEvent{
		Kind:      e.Kind,
		Version:   protocol.JobVersion,
		Step:      e.Step,
		Done:      e.Done,
		Total:     e.Total,
		WireBytes: e.WireBytes,
		Text:      e.Text,
	}
}

func eventFromWire(w *protocol.JobEvent) Event {
	return Event{Step: w.Step, Kind: w.Kind, Done: w.Done, Total: w.Total, WireBytes: w.WireBytes, Text: w.Text}
}

// publicationToWire is a publication as its mover reports it: what the
// orchestrator shows and acts on, not what only this host can use (its
// serve process, directories and mount).
func publicationToWire(p *Publication) protocol.JobPublication {
	return protocol.JobPublication{
		ID:           p.ID,
		State:        string(p.State),
		Error:        p.Error,
		Repo:         p.Repo,
		RepoPeer:     p.RepoPeer,
		RetryFor:     p.RetryFor,
		RestorePoint: p.RestorePoint,
		Version:      p.Version,
		Listen:       p.Listen,
		Port:         p.Port,
		Auth:         p.Auth,
		OSUser:       p.OSUser,
		OnRestart:    p.OnRestart,
		Restarts:     p.Restarts,
		CowBytes:     p.CowSize,
		Created:      p.Created,
		UpSince:      p.UpSince,
		Updated:      p.Updated,
	}
}

// publicationFromWire is the record an orchestrator keeps of a publication
// that mover on runs.
func publicationFromWire(w *protocol.JobPublication, on string) *Publication {
	return &Publication{
		ID:           w.ID,
		State:        PubState(w.State),
		Error:        w.Error,
		Repo:         w.Repo,
		RepoPeer:     w.RepoPeer,
		RetryFor:     w.RetryFor,
		RestorePoint: w.RestorePoint,
		Version:      w.Version,
		Listen:       w.Listen,
		Port:         w.Port,
		Auth:         w.Auth,
		OSUser:       w.OSUser,
		OnRestart:    w.OnRestart,
		Restarts:     w.Restarts,
		CowSize:      w.CowBytes,
		Created:      w.Created,
		UpSince:      w.UpSince,
		Updated:      w.Updated,
		On:           on,
	}
}
