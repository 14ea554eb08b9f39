package orchestrator

import (
	"encoding/json"
	"path/filepath"
	"testing"
)

// FuzzJournalRecord decodes its input as a journaled session (what
// Journal.Get and List do) and uses it as a loaded session is used: no
// panic, a round trip keeps it, and no database's dump directory leaves
// the session's dumps directory, whatever the database is called.
func FuzzJournalRecord(f *testing.F) {
	f.Add([]byte(`{"id":"x-1","state":"failed","plan":{"databases":["shop","../etc","a/b",".hidden"],"staging_dir":"/var/tmp/pgporter"},"steps":[{"name":"dump:shop","state":"done"}]}`))
	f.Add([]byte(`{"plan":{"databases":[""]}}`))
	f.Add([]byte(`{"steps":[null]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
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
	})
}

// FuzzPublicationRecord decodes its input as a journaled publication: no
// panic, and a round trip keeps it.
func FuzzPublicationRecord(f *testing.F) {
	f.Add([]byte(`{"id":"p-1","repo":"/r","restore_point":"rp-1","port":5433,"state":"up","serve_pid":12}`))
	f.Add([]byte(`{"port":-1,"state":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
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
	})
}

// FuzzJobEvent decodes its input as an event a staging mover sends the
// orchestrator (a JobEvent body): no panic, and a round trip keeps it.
func FuzzJobEvent(f *testing.F) {
	f.Add([]byte(`{"step":"dump:shop","kind":"done","done":5,"wire_bytes":3,"text":"ok"}`))
	f.Add([]byte(`{"kind":"end","error":"x","code":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Event
		if json.Unmarshal(b, &e) != nil {
			return
		}
		enc, err := json.Marshal(&e)
		if err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		var e2 Event
		if err := json.Unmarshal(enc, &e2); err != nil || e2 != e {
			t.Fatalf("decode→encode→decode: %+v != %+v (%v)", e2, e, err)
		}
	})
}

// FuzzJobBody decodes its input as the body of a job an orchestrator hands
// a staging mover, as StagingJobs.RunJob does before it runs anything: no
// panic, and an accepted session ID is one directory name.
func FuzzJobBody(f *testing.F) {
	f.Add([]byte(`{"session":"x-20261126-040210-950424","plan":{"databases":["shop"],"staging_dir":"/var/tmp/p"}}`))
	f.Add([]byte(`{"session":"../../etc"}`))
	f.Add([]byte(`{"kind":"publish"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = pubJobKind(b)
		var jb job
		if json.Unmarshal(b, &jb) != nil || !validSessionID(jb.Session) || !filepath.IsAbs(jb.Plan.StagingDir) {
			return // plans are made absolute when the orchestrator creates the session
		}
		s := &Session{ID: jb.Session, Plan: jb.Plan}
		if dir := filepath.Clean(s.SessionDir()); filepath.Base(dir) != jb.Session || filepath.Dir(dir) != filepath.Clean(jb.Plan.StagingDir) {
			t.Fatalf("session %q lives in %s, not in %s", jb.Session, dir, jb.Plan.StagingDir)
		}
	})
}
