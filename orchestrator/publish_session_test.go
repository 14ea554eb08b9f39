package orchestrator

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
)

// servePublication runs ServePublication in this process, as the serve
// process of 'publish' would, and returns the publication once it is up and
// a stop function that ends it and returns ServePublication's error.
func servePublication(t *testing.T, pb *Publisher, repo string) (*Publication, func() error) {
	t.Helper()
	id := newPubID(time.Now())
	p := &Publication{
		ID: id, Repo: repo, RestorePoint: "latest", Listen: "127.0.0.1", Port: freeTestPort(t), OSUser: "postgres",
		State: PubStarting, Created: time.Now().UTC(),
		BaseDir: filepath.Join(os.TempDir(), "pgporter-"+id), CowDir: filepath.Join(pb.Dir(id), "cow"),
	}
	require.NoError(t, pb.j.PutPublication(p))
	lock, err := pb.j.Lock(id)
	require.NoError(t, err)
	rd, wr, err := os.Pipe()
	require.NoError(t, err)
	defer rd.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- pb.ServePublication(ctx, id, lock.f, wr)
		lock.Unlock()
	}()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		// As Unpublish does before its signal: the layer is dropped.
		require.NoError(t, pb.j.UpdatePublication(id, func(p *Publication) { p.Unpublishing = true }))
		cancel()
		return <-done
	}
	t.Cleanup(func() { _ = stop() })
	b, err := io.ReadAll(rd)
	require.NoError(t, err)
	require.Equal(t, "ready\n", string(b))
	p, err = pb.j.GetPublication(id)
	require.NoError(t, err)
	require.Equal(t, PubUp, p.State)
	return p, stop
}

// TestPublishExport serves a publication in this process, exports two
// databases from it (export --published) while another client writes into it, and checks the
// dump restores to the backed-up data; stopping the publication releases
// everything.
func TestPublishExport(t *testing.T) {
	f := newFixture(t)
	pb, err := NewPublisher(t.TempDir(), nil)
	require.NoError(t, err)
	p, stop := servePublication(t, pb, f.repo)
	require.True(t, pb.j.lockHeld(p))

	// Another client works on the publication throughout the export.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var queries int
	var clientErr error
	wg.Go(func() {
		c, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d dbname=unused user=postgres password=%s sslmode=disable", p.Port, superPassword))
		if err != nil {
			clientErr = err
			return
		}
		defer c.Close(context.Background())
		if _, clientErr = c.Exec(ctx, `CREATE TABLE busy(v int)`); clientErr != nil {
			return
		}
		for ctx.Err() == nil {
			if _, err := c.Exec(ctx, `INSERT INTO busy SELECT generate_series(1, 100)`); err != nil && ctx.Err() == nil {
				clientErr = err
				return
			}
			queries++
		}
	})

	r, err := NewRunner(Options{Home: pb.home, Password: superPassword})
	require.NoError(t, err)
	dbs := []string{"shop", "Weird DB"}
	to := t.TempDir()
	s, err := r.Create(t.Context(), Plan{Published: p.ID, Databases: dbs, To: to, StagingDir: t.TempDir()})
	require.NoError(t, err)
	s, err = r.Run(t.Context(), s.ID)
	cancel()
	wg.Wait()
	require.NoError(t, err)
	require.NoError(t, clientErr)
	require.Positive(t, queries)
	for _, db := range dbs {
		require.Positive(t, s.Step(DumpStep(db)).Bytes)
		f.restoreAndCompare(t, filepath.Join(to, db), db)
	}

	// Refusals: a database the backup lacks; a bad password.
	for _, c := range []struct {
		name, db, password, want string
	}{
		{"missing database", "nope", superPassword, `"nope"`},
		{"bad password", "shop", "wrong", "password"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := NewRunner(Options{Home: pb.home, Password: c.password})
			require.NoError(t, err)
			s, err := r.Create(t.Context(), Plan{Published: p.ID, Databases: []string{c.db}, To: t.TempDir(), StagingDir: t.TempDir()})
			require.NoError(t, err)
			_, err = r.Run(t.Context(), s.ID)
			require.ErrorContains(t, err, c.want)
		})
	}
	// Planned while the publication is up, run once it is gone.
	late, err := r.Create(t.Context(), Plan{Published: p.ID, Databases: []string{"shop"}, To: t.TempDir(), StagingDir: t.TempDir()})
	require.NoError(t, err)

	t.Run("retry and cancel", func(t *testing.T) { testPublishedExportRetryCancel(t, f, pb, p) })

	require.NoError(t, stop())
	got, err := pb.j.GetPublication(p.ID)
	require.NoError(t, err)
	require.Equal(t, PubGone, got.State)
	require.NoDirExists(t, p.BaseDir)
	require.NoDirExists(t, p.CowDir)
	_, err = r.Run(t.Context(), late.ID)
	require.ErrorIs(t, err, ErrNotUp)
}

// testPublishedExportRetryCancel: an export from a publication is a
// session. One that fails after a database was delivered is continued by a
// retry (Run again) without dumping again what it had dumped; one that is
// cancelled loses its leftovers but keeps what it delivered, and the
// publication stays up through both.
//
// It runs within TestPublishExport, on its publication: a fixture and a
// publication of its own would double its cost.
func testPublishedExportRetryCancel(t *testing.T, f *fixture, pb *Publisher, p *Publication) {
	home := pb.home
	var mu sync.Mutex
	var skipped []string
	r, err := NewRunner(Options{Home: home, Password: superPassword, Events: func(e Event) {
		mu.Lock()
		defer mu.Unlock()
		if e.Kind == protocol.EventSkip {
			skipped = append(skipped, e.Step)
		}
	}})
	require.NoError(t, err)
	ctx := context.Background()
	dbs := []string{"shop", "Weird DB"}

	// Something takes Weird DB's place after the session was planned: its
	// commit fails, after shop was delivered.
	to := t.TempDir()
	s, err := r.Create(t.Context(), Plan{Published: p.ID, Databases: dbs, To: to, StagingDir: t.TempDir()})
	require.NoError(t, err)
	require.Equal(t, p.RestorePoint, s.Plan.RestorePoint)
	require.NoError(t, os.Mkdir(filepath.Join(to, "Weird DB"), 0o755))
	_, err = r.Run(ctx, s.ID)
	require.ErrorContains(t, err, "exists")
	got, err := r.j.Get(s.ID)
	require.NoError(t, err)
	require.Equal(t, StateFailed, got.State)
	for _, st := range []string{"dump:shop", "transfer:shop", "dump:Weird DB"} {
		require.Equal(t, StepDone, got.Step(st).State, st)
	}
	require.Equal(t, StepFailed, got.Step("transfer:Weird DB").State)
	require.DirExists(t, hiddenDumpDir(got, "Weird DB"))

	require.NoError(t, os.Remove(filepath.Join(to, "Weird DB")))
	got, err = r.Run(ctx, s.ID) // what 'pgporter retry' does
	require.NoError(t, err)
	require.Equal(t, StateDone, got.State)
	require.Subset(t, skipped, []string{"check", "dump:shop", "transfer:shop", "dump:Weird DB"})
	left, err := filepath.Glob(filepath.Join(to, ".pgporter-*"))
	require.NoError(t, err)
	require.Empty(t, left)
	f.restoreAndCompare(t, filepath.Join(to, "Weird DB"), "Weird DB")

	// Cancel of a session failed the same way.
	to2 := t.TempDir()
	s2, err := r.Create(t.Context(), Plan{Published: p.ID, Databases: dbs, To: to2, StagingDir: t.TempDir()})
	require.NoError(t, err)
	require.NoError(t, os.Mkdir(filepath.Join(to2, "Weird DB"), 0o755))
	_, err = r.Run(ctx, s2.ID)
	require.Error(t, err)
	require.DirExists(t, hiddenDumpDir(s2, "Weird DB"))
	got, err = r.Cancel(ctx, s2.ID)
	require.NoError(t, err)
	require.Equal(t, StateCancelled, got.State)
	require.NoDirExists(t, hiddenDumpDir(s2, "Weird DB"))
	require.FileExists(t, filepath.Join(to2, "shop", "toc.dat"), "a delivered dump stays")
	_, err = r.Run(ctx, s2.ID)
	require.ErrorContains(t, err, "cancelled")

	up, err := pb.j.GetPublication(p.ID)
	require.NoError(t, err)
	require.Equal(t, PubUp, up.State)
	require.True(t, pb.j.lockHeld(p))

	// Refused when planned: a publication that does not exist; a target
	// directory that exists.
	_, err = r.Create(t.Context(), Plan{Published: "p-nope", Databases: dbs, To: t.TempDir()})
	require.ErrorIs(t, err, ErrBadPlan)
	_, err = r.Create(t.Context(), Plan{Published: p.ID, Databases: []string{"shop"}, To: to})
	require.ErrorIs(t, err, ErrBadPlan)
}
