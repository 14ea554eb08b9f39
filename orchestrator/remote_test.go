package orchestrator

import (
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pgporter/pgporter/chunkstore/chunk"
	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/protocol"
	stagingpkg "github.com/pgporter/pgporter/staging"
	"github.com/stretchr/testify/require"
)

// testMover is a mover daemon serving on loopback for a test.
type testMover struct {
	home string
	id   mover.PeerID
	addr string
}

func (m testMover) spec() string { return m.addr + "#" + m.id.String() }

func serveMover(t *testing.T, o mover.ServerOptions) testMover {
	t.Helper()
	if o.Home == "" {
		o.Home = t.TempDir()
	}
	_, _, err := mover.InitIdentity(o.Home)
	require.NoError(t, err)
	o.Listen = "127.0.0.1:0"
	srv, err := mover.NewServer(o)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return testMover{home: o.Home, id: srv.ID(), addr: srv.Addr().String()}
}

func identity(t *testing.T, home string) mover.PeerID {
	id, _, err := mover.InitIdentity(home)
	require.NoError(t, err)
	return id.ID
}

func trust(t *testing.T, home string, peer mover.PeerID, perms mover.Perm) {
	ts, err := mover.OpenTrust(home)
	require.NoError(t, err)
	require.NoError(t, ts.Trust(mover.TrustedPeer{ID: peer, Name: "test", Perms: perms, Added: time.Now()}))
}

// threeMovers serves f's repository, a staging mover (running jobs, whose
// home and staging directory it sets) and a target with root to, the
// staging mover trusted by the other two.
func threeMovers(t *testing.T, f *fixture, to string, jobs *StagingJobs) (repo, staging, target testMover) {
	t.Helper()
	stagingHome := t.TempDir()
	stagingID := identity(t, stagingHome)
	repo = serveMover(t, mover.ServerOptions{Repo: f.repo})
	target = serveMover(t, mover.ServerOptions{Roots: []string{to}})
	if jobs == nil {
		jobs = &StagingJobs{}
	}
	jobs.Home, jobs.StagingDir = stagingHome, stagingDir(t)
	staging = serveMover(t, mover.ServerOptions{Home: stagingHome, Jobs: jobs})
	trust(t, repo.home, stagingID, mover.PermRead)
	trust(t, target.home, stagingID, mover.PermSend)
	return repo, staging, target
}

// TestExportAcrossMovers runs an export with the repository, staging and
// target as three movers (over loopback QUIC) and the orchestrator as a
// fourth identity: the dumps arrive at the target and restore equal to the
// source.
func TestExportAcrossMovers(t *testing.T) {
	f := newFixture(t)
	to := t.TempDir()
	orch := t.TempDir()
	exportsDone := make(chan string, 4)
	var progMu sync.Mutex
	progress := map[string][2]int64{} // the last of each step
	var ended []string
	jobs := &StagingJobs{
		ExportDone: func(id string) { exportsDone <- id },
		ExportProgress: func(session, step string, done, total int64) {
			progMu.Lock()
			defer progMu.Unlock()
			progress[session+" "+step] = [2]int64{done, total}
		},
		ExportEnded: func(session string) {
			progMu.Lock()
			defer progMu.Unlock()
			ended = append(ended, session)
		},
	}
	repo, staging, target := threeMovers(t, f, to, jobs)
	stagingHome, stagingID := staging.home, staging.id
	orchID := identity(t, orch)

	r := newRunner(t, orch, nil)
	plan := Plan{RepoPeer: repo.spec(), Staging: staging.spec(), Target: target.spec(), RestorePoint: "latest",
		Databases: []string{"shop", "Weird DB"}, To: to}
	s, err := r.Create(t.Context(), plan)
	require.NoError(t, err)

	// Not yet trusted with orchestrate: refused, and told what to run.
	_, err = r.Run(context.Background(), s.ID)
	require.Error(t, err)
	require.Contains(t, err.Error(), "orchestrate")
	require.Contains(t, err.Error(), orchID.String())

	trust(t, staging.home, orchID, mover.PermOrchestrate)
	s, err = r.Run(context.Background(), s.ID)
	require.NoError(t, err)
	require.Equal(t, StateDone, s.State)
	for _, db := range plan.Databases {
		require.Equal(t, StepDone, s.Step(DumpStep(db)).State)
		st := s.Step(TransferStep(db))
		require.Equal(t, StepDone, st.State)
		require.Positive(t, st.Bytes)
		require.Positive(t, st.WireBytes)
	}
	f.restoreAndCompare(t, filepath.Join(to, "shop"), "shop")
	f.restoreAndCompare(t, filepath.Join(to, "Weird DB"), "Weird DB")

	// The staging mover reported each step's progress, each ending whole,
	// and the job's end, for its metrics.
	progMu.Lock()
	for _, db := range plan.Databases {
		for _, step := range []string{DumpStep(db), TransferStep(db)} {
			p, ok := progress[s.ID+" "+step]
			require.True(t, ok, "no progress of %s", step)
			require.Positive(t, p[1], step)
			require.Equal(t, p[1], p[0], "%s ends whole", step)
		}
	}
	require.Contains(t, ended, s.ID)
	progMu.Unlock()
	// The staging mover counted the export done, for its metrics.
	select {
	case id := <-exportsDone:
		require.Equal(t, s.ID, id)
	default:
		t.Fatal("StagingJobs.ExportDone was not called")
	}
	// Each mover recorded the build of the peers it talked to, both ways,
	// for 'mover peers'.
	require.Equal(t, mover.Software, mover.LoadPeersSeen(target.home)[stagingID].Software)
	require.Equal(t, mover.Software, mover.LoadPeersSeen(repo.home)[stagingID].Software)
	require.Equal(t, mover.Software, mover.LoadPeersSeen(stagingHome)[target.id].Software)
	require.Equal(t, mover.Software, mover.LoadPeersSeen(stagingHome)[orchID].Software)
	require.Equal(t, mover.Software, mover.LoadPeersSeen(orch)[staging.id].Software)

	// The staging mover journaled its half under the same ID, done.
	sj, err := OpenJournal(stagingHome)
	require.NoError(t, err)
	ss, err := sj.Get(s.ID)
	require.NoError(t, err)
	require.Equal(t, StateDone, ss.State)
	require.Equal(t, f.rp, ss.Plan.RestorePoint, "the staging side resolved latest once")
	// Both journals hold each dump's manifest hash: the BLAKE3 of the
	// pgporter-manifest.json the target committed.
	for _, db := range plan.Databases {
		man, err := os.ReadFile(filepath.Join(to, dbDirName(db), mover.ManifestName))
		require.NoError(t, err)
		sum := chunk.Sum(man)
		want := hex.EncodeToString(sum[:])
		require.Equal(t, want, s.Step(TransferStep(db)).Manifest, db)
		require.Equal(t, want, ss.Step(TransferStep(db)).Manifest, db)
		require.Equal(t, want, s.Manifests()[db])
	}
}

// TestCancelAcrossMovers: cancelling a session that failed on a staging
// mover releases what the staging mover holds for it.
func TestCancelAcrossMovers(t *testing.T) {
	f := newFixture(t)
	to, orch, stagingHome := t.TempDir(), t.TempDir(), t.TempDir()
	stagingID := identity(t, stagingHome)
	repo := serveMover(t, mover.ServerOptions{Repo: f.repo})
	target := serveMover(t, mover.ServerOptions{Roots: []string{to}})
	staging := serveMover(t, mover.ServerOptions{Home: stagingHome, Jobs: &StagingJobs{Home: stagingHome, StagingDir: stagingDir(t)}})
	trust(t, repo.home, stagingID, mover.PermRead)
	trust(t, target.home, stagingID, mover.PermSend)
	trust(t, staging.home, identity(t, orch), mover.PermOrchestrate)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newRunner(t, orch, func(e Event) {
		if e.Step == "dump:Weird DB" && e.Kind == protocol.EventStart {
			cancel() // the orchestrator goes away mid-dump
		}
	})
	plan := Plan{RepoPeer: repo.spec(), Staging: staging.spec(), Target: target.spec(), RestorePoint: "latest",
		Databases: []string{"shop", "Weird DB"}, To: to}
	s, err := r.Create(t.Context(), plan)
	require.NoError(t, err)
	_, err = r.Run(ctx, s.ID)
	require.Error(t, err)

	sj, err := OpenJournal(stagingHome)
	require.NoError(t, err)
	// The staging side notices the orchestrator left and fails its run.
	require.Eventually(t, func() bool {
		ss, err := sj.Get(s.ID)
		return err == nil && ss.State == StateFailed && ss.PID == 0
	}, time.Minute, 20*time.Millisecond)
	ss, err := sj.Get(s.ID)
	require.NoError(t, err)
	require.DirExists(t, ss.DumpDir("shop"), "the finished dump is kept for a retry")

	s, err = r.Cancel(context.Background(), s.ID)
	require.NoError(t, err)
	require.Equal(t, StateCancelled, s.State)
	ss, err = sj.Get(s.ID)
	require.NoError(t, err)
	require.Equal(t, StateCancelled, ss.State)
	require.NoDirExists(t, ss.SessionDir())
}

// TestExportAcrossMoversFiltered: export --table through a staging mover.
// The filter travels in the job; the staging mover checks each pattern
// against the restore point (a typo is an error naming the near match,
// before any dump) and dumps only what it matches.
func TestExportAcrossMoversFiltered(t *testing.T) {
	f := newFixture(t)
	to := t.TempDir()
	orch := t.TempDir()
	repo, staging, target := threeMovers(t, f, to, nil)
	trust(t, staging.home, identity(t, orch), mover.PermOrchestrate)
	r := newRunner(t, orch, nil)

	plan := Plan{RepoPeer: repo.spec(), Staging: staging.spec(), Target: target.spec(), RestorePoint: "latest",
		Databases: []string{"shop"}, To: to, Filter: &stagingpkg.DumpFilter{Tables: []string{"itemz"}}}
	s, err := r.Create(t.Context(), plan)
	require.NoError(t, err)
	_, err = r.Run(context.Background(), s.ID)
	require.Error(t, err)
	require.Contains(t, err.Error(), `"itemz"`)
	require.Contains(t, err.Error(), "items", "the near match is named")
	_, err = os.Stat(filepath.Join(to, "shop"))
	require.ErrorIs(t, err, os.ErrNotExist, "nothing was dumped or sent")

	plan.Filter = &stagingpkg.DumpFilter{Tables: []string{"items"}}
	s, err = r.Create(t.Context(), plan)
	require.NoError(t, err)
	s, err = r.Run(context.Background(), s.ID)
	require.NoError(t, err)
	require.Equal(t, StateDone, s.State)
	out, err := f.c.ClientCmd(context.Background(), "shop", filepath.Join(f.c.BinDir, "pg_restore"), "--list", filepath.Join(to, "shop")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "TABLE DATA public items")
	require.NotContains(t, string(out), "orders")
}
