package orchestrator

import (
	"encoding/binary"
	"encoding/json"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/pgporter/pgporter/protocol"
)

// FuzzOrchestratorRecords fuzzes, chosen by kind, the journal's records
// (sessions, publications) and what a staging mover and an orchestrator
// decode from each other (job bodies, job events): no panic, and what
// decodes survives a round trip. One target for all keeps the fuzz time of
// 'make test' short.
func FuzzOrchestratorRecords(f *testing.F) {
	for _, seed := range []struct {
		kind byte
		b    string
	}{
		{recSession, `{"id":"x-1","state":"failed","plan":{"databases":["shop","../etc","a/b",".hidden"],"staging_dir":"/var/tmp/pgporter"},"steps":[{"name":"dump:shop","state":"done"}]}`},
		{recSession, `{"plan":{"databases":[""]}}`},
		{recSession, `{"steps":[null]}`},
		{recPublication, `{"id":"p-1","repo":"/r","restore_point":"rp-1","port":5433,"state":"up","serve_pid":12}`},
		{recEvent, `{"kind":"done","v":2,"step":"dump:shop","done":5,"wire_bytes":3,"text":"ok"}`},
		{recEvent, `{"kind":"result","v":2,"publications":[{"id":"p-1","state":"up","port":5433,"created":"2026-12-06T13:00:00Z"}]}`},
		{recJob, `{"kind":"export","v":2,"session":"x-20261126-040210-950424","plan":{"databases":["shop"],"staging_dir":"/var/tmp/p"}}`},
		{recJob, `{"kind":"export","v":2,"session":"../../etc","plan":{"staging_dir":"/v"}}`},
		{recJob, `{"kind":"cancel-export","v":2,"session":"0"}`},
	} {
		f.Add(seed.kind, []byte(seed.b))
	}
	f.Fuzz(func(t *testing.T, kind byte, b []byte) {
		switch kind % recKinds {
		case recSession:
			fuzzSession(t, b)
		case recPublication:
			fuzzPublication(t, b)
		case recEvent:
			fuzzEvent(t, b)
		case recJob:
			fuzzJob(t, b)
		}
	})
}

const (
	recSession byte = iota
	recPublication
	recEvent
	recJob
	recKinds
)

// fuzzSession decodes b as a journaled session (what Journal.Get and List
// do) and uses it as a loaded session is used: no database's dump
// directory leaves the session's dumps directory, whatever its name.
func fuzzSession(t *testing.T, b []byte) {
	var s Session
	if json.Unmarshal(b, &s) != nil {
		return
	}
	for _, st := range s.Steps {
		if st != nil {
			s.Step(st.Name)
		}
	}
	dumps := filepath.Clean(s.SessionDir() + "/dumps")
	for _, db := range s.Plan.Databases {
		if db == "" {
			continue
		}
		if d := filepath.Clean(s.DumpDir(db)); filepath.Dir(d) != dumps {
			t.Fatalf("database %q dumps to %s, outside %s", db, d, dumps)
		}
	}
	enc, err := json.Marshal(&s)
	if err != nil {
		t.Fatalf("re-encoding: %v", err)
	}
	var s2 Session
	if err := json.Unmarshal(enc, &s2); err != nil || s2.ID != s.ID || s2.State != s.State || len(s2.Steps) != len(s.Steps) || len(s2.Plan.Databases) != len(s.Plan.Databases) {
		t.Fatalf("decode→encode→decode: %+v != %+v (%v)", s2, s, err)
	}
}

func fuzzPublication(t *testing.T, b []byte) {
	var p Publication
	if json.Unmarshal(b, &p) != nil {
		return
	}
	enc, err := json.Marshal(&p)
	if err != nil {
		t.Fatalf("re-encoding: %v", err)
	}
	var p2 Publication
	if err := json.Unmarshal(enc, &p2); err != nil || p2.ID != p.ID || p2.State != p.State || p2.Port != p.Port || p2.ServePID != p.ServePID {
		t.Fatalf("decode→encode→decode: %+v != %+v (%v)", p2, p, err)
	}
}

// wirePayload is b as the payload of a job message's frame.
func wirePayload(b []byte) []byte { return append(binary.AppendUvarint(nil, uint64(len(b))), b...) }

// fuzzEvent decodes b as an event a staging mover sends the orchestrator
// (a JobEvent body): what protocol accepts converts to an Event and back
// without loss, and to a Publication and back.
func fuzzEvent(t *testing.T, b []byte) {
	m, err := protocol.Decode(protocol.TypeJobEvent, wirePayload(b))
	if err != nil {
		return
	}
	ev := m.(*protocol.JobEvent)
	_, _, _ = ParseStep(ev.Step)
	if ev.Kind != protocol.EventResult && ev.Kind != protocol.EventEnd {
		back := eventToWire(eventFromWire(ev))
		back.Manifest = ev.Manifest
		if !reflect.DeepEqual(back, ev) {
			t.Fatalf("event→wire: %+v != %+v", back, ev)
		}
	}
	for i := range ev.Publications {
		w := &ev.Publications[i]
		if back := publicationToWire(publicationFromWire(w, "a#b")); !reflect.DeepEqual(&back, w) {
			t.Fatalf("publication→wire: %+v != %+v", back, *w)
		}
	}
}

// fuzzJob decodes b as the body of a job an orchestrator hands a staging
// mover, as the mover does before StagingJobs.RunJob runs anything: its
// plan converts without loss, and an accepted session ID is one directory
// name in the staging directory.
func fuzzJob(t *testing.T, b []byte) {
	m, err := protocol.Decode(protocol.TypeRunJob, wirePayload(b))
	if err != nil {
		return
	}
	jb := m.(*protocol.RunJob)
	if jb.Plan == nil {
		return
	}
	plan := planFromWire(jb.Plan)
	if back := planToWire(&plan); !reflect.DeepEqual(back, jb.Plan) {
		t.Fatalf("plan→wire: %+v != %+v", back, jb.Plan)
	}
	if !validSessionID(jb.Session) || !filepath.IsAbs(plan.StagingDir) {
		return // plans are made absolute when the orchestrator creates the session
	}
	s := &Session{ID: jb.Session, Plan: plan}
	if dir := filepath.Clean(s.SessionDir()); filepath.Base(dir) != jb.Session || filepath.Dir(dir) != filepath.Clean(plan.StagingDir) {
		t.Fatalf("session %q lives in %s, not in %s", jb.Session, dir, plan.StagingDir)
	}
}
