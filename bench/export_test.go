package bench

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pgporter/pgporter/orchestrator"
	"github.com/stretchr/testify/require"
)

// doneSession is a finished export's journal record, marshalled from the
// orchestrator's own type so that a renamed JSON field fails here.
func doneSession(t *testing.T, state orchestrator.State, drop string) []byte {
	t0 := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	s := &orchestrator.Session{ID: "s1", State: state}
	at := t0
	for i, name := range []string{"mount", "instance", "check", "dump:shop", "transfer:shop", "verify:shop", "cleanup"} {
		if name == drop {
			continue
		}
		st := &orchestrator.Step{Name: name, Started: at, Ended: at.Add(time.Duration(i+1) * 100 * time.Millisecond)}
		if name == "dump:shop" {
			st.Bytes = 9_500_000
		}
		if name == "mount" {
			st.Bytes = 2_000_000
		}
		if name == "transfer:shop" {
			st.Bytes, st.WireBytes = 9_500_000, 120_000
		}
		at = st.Ended
		s.Steps = append(s.Steps, st)
	}
	b, err := json.Marshal(s)
	require.NoError(t, err)
	return b
}

func TestExportFigures(t *testing.T) {
	x, err := exportFigures(doneSession(t, orchestrator.StateDone, ""))
	require.NoError(t, err)
	want := map[string]float64{
		"mount_s": 0.1, "instance_s": 0.2, "check_s": 0.3, "dump_s": 0.4, "transfer_s": 0.5, "cleanup_s": 0.7,
		"dump_MB": 9.5, "wire_MB": 0.12, "cow_MB": 2,
	}
	require.Len(t, x, len(want), "verify:shop is not kept")
	for k, v := range want {
		require.InDelta(t, v, x[k], 1e-9, k)
	}

	_, err = exportFigures(doneSession(t, orchestrator.StateFailed, ""))
	require.ErrorContains(t, err, `is "failed", not done`)
	_, err = exportFigures(doneSession(t, orchestrator.StateDone, "check"))
	require.ErrorContains(t, err, "has no step check")
	_, err = exportFigures([]byte("session s1 done"))
	require.ErrorContains(t, err, "parsing sessions show --json")
}

func TestParseExportJSON(t *testing.T) {
	out := "session s1 done\n  \"shop\" /t/shop dump 9 MB\n" +
		`{"session":"s1","state":"done","databases":[{"name":"shop","path":"/t/shop","bytes":9500000,"wire_bytes":1,"seconds":0.4}]}` + "\n"
	r, err := parseExportJSON([]byte(out))
	require.NoError(t, err)
	require.Equal(t, "s1", r.Session)
	require.Equal(t, int64(9_500_000), r.Databases[0].Bytes)

	_, err = parseExportJSON([]byte(`{"session":"s1","state":"failed","databases":[]}`))
	require.ErrorContains(t, err, `session "s1" is "failed"`)
	_, err = parseExportJSON([]byte("no json"))
	require.ErrorContains(t, err, "parsing export --json")
}

func TestTableData(t *testing.T) {
	// pg_restore -l of a pgbench dump, abridged.
	list := `;
; Archive created at 2026-12-06 09:33:47 UTC
;     dbname: shop
;
3363; 1259 16398 TABLE public pgbench_accounts postgres
3364; 1259 16401 TABLE public pgbench_branches postgres
3370; 0 16398 TABLE DATA public pgbench_accounts postgres
3372; 0 16395 TABLE DATA public pgbench_tellers postgres
3371; 0 16401 TABLE DATA public pgbench_branches postgres
3215; 2606 16411 CONSTRAINT public pgbench_accounts pgbench_accounts_pkey postgres
;3373; 0 16392 TABLE DATA public pgbench_history postgres
`
	require.Equal(t, []string{"pgbench_accounts", "pgbench_branches", "pgbench_tellers"}, tableData(list),
		"TABLE DATA entries only, sorted; a commented-out entry is not restored")
	require.Empty(t, tableData(""))
}

func TestSpeedUpLine(t *testing.T) {
	f := &File{Cores: 2, Results: []Result{{
		Scenario: "export", Bytes: 1e9, Reps: 3, Tools: []string{"pgporter export", "pg_dump+rsync"},
		SpeedUp: &SpeedUp{Of: "pgporter export", Over: "pg_dump+rsync"},
		Runs: []Sample{
			{Tool: "pgporter export", Measure: Measure{Wall: 10 * time.Second}},
			{Tool: "pgporter export", Measure: Measure{Wall: 12 * time.Second}},
			{Tool: "pgporter export", Measure: Measure{Wall: 30 * time.Second}},
			{Tool: "pg_dump+rsync", Measure: Measure{Wall: 30 * time.Second}},
			{Tool: "pg_dump+rsync", Measure: Measure{Wall: 36 * time.Second}},
			{Tool: "pg_dump+rsync", Measure: Measure{Wall: 31 * time.Second}},
		},
	}}}
	x, ok := f.Results[0].SpeedUpRatio()
	require.True(t, ok)
	require.InDelta(t, 31.0/12, x, 1e-9, "the ratio of the medians, not of the means")
	var b strings.Builder
	require.NoError(t, WriteTables(&b, f))
	require.Contains(t, b.String(), "speed-up of pgporter export over pg_dump+rsync: 2.58x (ratio of median wall times)")

	f.Results[0].SpeedUp = nil
	b.Reset()
	require.NoError(t, WriteTables(&b, f))
	require.NotContains(t, b.String(), "speed-up")
	r := Result{SpeedUp: &SpeedUp{Of: "a", Over: "b"}}
	_, ok = r.SpeedUpRatio()
	require.False(t, ok, "no runs, no ratio")
}

func TestExportDefaults(t *testing.T) {
	full := (&Export{}).withDefaults(false)
	require.Equal(t, Export{Data: "pgbench", Scale: 70, Tables: 5000, Rows: 20, Jobs: 2, RefJobs: 1}, full, "the defaults of the script it replaced")
	smoke := (&Export{Settle: time.Second}).withDefaults(true)
	require.Equal(t, 1, smoke.Scale)
	require.Equal(t, 50, smoke.Tables)
	require.Equal(t, time.Second, smoke.Settle, "an explicit value is kept")
	require.Equal(t, 7, (&Export{Scale: 7}).withDefaults(true).Scale)
}

// TestExportLANSelection guards what --scenario export runs: the loopback
// scenario alone, as before export-lan existed (which needs netns and
// would double its time); export-lan only by its own name.
func TestExportLANSelection(t *testing.T) {
	all := scenarios(Options{Link: LinkOptions{Rate: "1gbit", SenderCPUs: "0", ReceiverCPUs: "1"}, Export: Export{BWLimit: "25M", Jobs: 3}}, &wanData{})
	for _, tc := range []struct {
		names []string
		want  []string
	}{
		{[]string{"export"}, []string{"export"}},
		{[]string{"export-lan"}, []string{"export-lan"}},
		{[]string{"export-lan", "export"}, []string{"export", "export-lan"}},
		{[]string{"export-mixed"}, []string{"export-mixed"}},
		{[]string{"lan"}, []string{"lan"}},
	} {
		got, err := selectScenarios(all, tc.names)
		require.NoError(t, err)
		var names []string
		for _, s := range got {
			names = append(names, s.Name())
		}
		require.Equal(t, tc.want, names, "%v", tc.names)
	}
	got, err := selectScenarios(all, []string{"export-lan"})
	require.NoError(t, err)
	e := got[0].(*Export)
	require.Equal(t, &LinkOptions{Rate: "1gbit", SenderCPUs: "0", ReceiverCPUs: "1"}, e.Link, "the lan scenario's link")
	require.Empty(t, e.BWLimit, "the link is the cap")
	require.Equal(t, 3, e.Jobs, "the export's other options")
	require.True(t, e.profiles())
}

func TestExportLANDefaults(t *testing.T) {
	o := (&Export{Link: &LinkOptions{}, BWLimit: "25M", Databases: 4}).withDefaults(true)
	require.Equal(t, &LinkOptions{Rate: "1gbit", SenderCPUs: "0", ReceiverCPUs: "1"}, o.Link)
	require.Empty(t, o.BWLimit)
	require.Zero(t, o.Databases)
	require.Equal(t, "export-lan", (&Export{Link: &LinkOptions{}}).Name())
	require.Equal(t, "multidb", (&Export{Databases: 2}).Name())
	require.Equal(t, "export", (&Export{}).Name())
	require.Equal(t, "export-mixed", (&Export{Mixed: true}).Name())
	mixed := (&Export{Mixed: true, Data: "tables"}).withDefaults(false)
	require.Equal(t, "mixed", mixed.Data, "export-mixed's data whatever --export-data says")
	require.Equal(t, 20, mixed.Scale)
	require.Equal(t, 1, (&Export{Mixed: true}).withDefaults(true).Scale)

	require.Equal(t, "pg_dump+rsync", (&refExportTool{}).Name())
	require.Equal(t, "pg_dump+rsync -z", (&refExportTool{name: "pg_dump+rsync -z", rsync: rsyncZstd}).Name())
}

// TestExportPinned checks that over the link the reference's processes run
// on the sender's CPUs, and on loopback as they are.
func TestExportPinned(t *testing.T) {
	j := &exportJob{}
	require.Equal(t, []string{"pg_dump", "-f", "x"}, j.pinned(context.Background(), "pg_dump", "-f", "x").Args)
	j.link = &Link{SenderCPUs: "0-1"}
	require.Equal(t, []string{"taskset", "-c", "0-1", "pg_dump", "-f", "x"}, j.pinned(context.Background(), "pg_dump", "-f", "x").Args)
}
