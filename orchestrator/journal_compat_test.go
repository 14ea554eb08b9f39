package orchestrator

import (
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/stretchr/testify/require"
)

// Journal records are the orchestrator's own encoding (Session, Plan,
// Step, Publication with their JSON tags), not the wire's: the typed job
// messages (protocol 7) changed what travels, not what is journaled. These
// records are as main wrote them before that change, a session of a staging
// mover's export and a publication recorded from a mover's answer
// (publication records then held the mover's whole record, with its serve
// process and directories): they must still read, and a session's steps
// parse.
const (
	oldSessionRecord = `{"id":"x-20261205-101500-a1b2c3","state":"failed","created":"2026-12-05T10:15:00.123Z","updated":"2026-12-05T10:17:02Z",` +
		`"plan":{"repo":"","restore_point":"rp-20261205T000000Z-00aa11","databases":["shop","Weird DB"],"to":"/srv/dumps","pg_user":"postgres","jobs":2,` +
		`"staging_dir":"/var/tmp/pgporter","os_user":"postgres","repo_peer":"10.0.0.5:7700#ABCD-EFGH","globals":true,"bwlimit":1000000,"split_tables":1073741824,"target":"10.0.0.6:7700#IJKL-MNOP","auth":"backup-hba"},` +
		`"steps":[{"name":"mount","state":"done","started":"2026-12-05T10:15:01Z","ended":"2026-12-05T10:15:02Z"},` +
		`{"name":"dump:shop","state":"done","started":"2026-12-05T10:15:05Z","ended":"2026-12-05T10:16:05Z","bytes":123456,"detail":"12 tables","attempts":1},` +
		`{"name":"transfer:shop","state":"done","bytes":123456,"wire_bytes":4567,"manifest_blake3":"00ff"},` +
		`{"name":"dump:Weird DB","state":"failed","error":"pg_dump: boom","attempts":2},{"name":"cleanup","state":"pending"}],` +
		`"resources":{"mountpoint":"/tmp/pgporter-x/data","instance_pid":4242},"error":"dump of \"Weird DB\" failed","pid":77}`
	oldPublicationRecord = `{"id":"p-20261205-101500-a1b2c3","repo":"","repo_peer":"10.0.0.5:7700#ABCD-EFGH","retry_for":120000000000,"restore_point":"rp-1","listen":"*","port":5433,` +
		`"os_user":"postgres","on_restart":"restart","on":"10.0.0.7:7700#QRST-UVWX","cow_bytes":8192,"state":"up","created":"2026-12-05T10:15:00Z","up_since":"2026-12-05T10:15:09Z",` +
		`"updated":"2026-12-05T10:15:09Z","serve_pid":999,"instance_pid":1000,"version":"15","base_dir":"/var/tmp/pgporter/p-20261205-101500-a1b2c3","cow_dir":"/var/tmp/pgporter/cow","mounted":true}`
)

func TestJournalReadsOldRecords(t *testing.T) {
	j, err := OpenJournal(t.TempDir())
	require.NoError(t, err)
	const sid, pid = "x-20261205-101500-a1b2c3", "p-20261205-101500-a1b2c3"
	require.NoError(t, j.with(func(db *pebble.DB) error {
		if err := db.Set(sessionKey(sid), []byte(oldSessionRecord), pebble.Sync); err != nil {
			return err
		}
		return db.Set(pubKey(pid), []byte(oldPublicationRecord), pebble.Sync)
	}))

	s, err := j.Get(sid)
	require.NoError(t, err)
	require.Equal(t, StateFailed, s.State)
	require.Equal(t, Plan{RestorePoint: "rp-20261205T000000Z-00aa11", Databases: []string{"shop", "Weird DB"}, To: "/srv/dumps", PGUser: "postgres", Jobs: 2,
		StagingDir: "/var/tmp/pgporter", OSUser: "postgres", RepoPeer: "10.0.0.5:7700#ABCD-EFGH", Globals: true, BWLimit: 1000000, SplitTables: 1 << 30,
		Target: "10.0.0.6:7700#IJKL-MNOP", Auth: AuthBackupHBA}, s.Plan)
	require.Equal(t, map[string]string{"shop": "00ff"}, s.Manifests())
	require.Equal(t, 4242, s.Resources.InstancePID)
	require.Equal(t, 2, s.Step(DumpStep("Weird DB")).Attempts)
	require.Equal(t, 60.0, s.Step(DumpStep("shop")).Seconds())
	for _, st := range s.Steps {
		kind, db, ok := ParseStep(st.Name)
		require.True(t, ok, st.Name)
		if db != "" {
			require.Contains(t, s.Plan.Databases, db)
			require.Equal(t, st.Name, map[string]func(string) string{StepDump: DumpStep, StepTransfer: TransferStep}[kind](db))
		}
	}
	list, err := j.List()
	require.NoError(t, err)
	require.Len(t, list, 1)

	p, err := j.GetPublication(pid)
	require.NoError(t, err)
	require.Equal(t, PubUp, p.State)
	require.Equal(t, "10.0.0.7:7700#QRST-UVWX", p.On)
	require.Equal(t, 2*time.Minute, p.RetryFor)
	require.Equal(t, int64(8192), CowBytes(p))
	require.Equal(t, "10.0.0.7", p.Host())
	require.Equal(t, 999, p.ServePID)
}
