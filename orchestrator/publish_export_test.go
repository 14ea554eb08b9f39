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

// TestPublishExport serves a publication in this process, exports a
// database from it while another client writes into it, and checks the
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

	to := t.TempDir()
	res, err := pb.Export(context.Background(), PublishedExportOptions{ID: p.ID, Databases: []string{"shop", "Weird DB"}, To: to, Password: superPassword})
	cancel()
	wg.Wait()
	require.NoError(t, err)
	require.NoError(t, clientErr)
	require.Positive(t, queries)
	require.Len(t, res, 2)
	for _, d := range res {
		require.Equal(t, filepath.Join(to, d.Name), d.Path)
		require.Positive(t, d.Bytes)
		f.restoreAndCompare(t, d.Path, d.Name)
	}

	// Refusals: an existing target; a database the backup lacks; a bad password.
	_, err = pb.Export(context.Background(), PublishedExportOptions{ID: p.ID, Databases: []string{"shop"}, To: to, Password: superPassword})
	require.ErrorContains(t, err, "exists already")
	_, err = pb.Export(context.Background(), PublishedExportOptions{ID: p.ID, Databases: []string{"nope"}, To: t.TempDir(), Password: superPassword})
	require.ErrorContains(t, err, `"nope"`)
	_, err = pb.Export(context.Background(), PublishedExportOptions{ID: p.ID, Databases: []string{"shop"}, To: t.TempDir(), Password: "wrong"})
	require.Error(t, err)

	t.Run("retry and cancel", func(t *testing.T) { testPublishedExportRetryCancel(t, f, pb, p) })

	require.NoError(t, stop())
	got, err := pb.j.GetPublication(p.ID)
	require.NoError(t, err)
	require.Equal(t, PubGone, got.State)
	require.NoDirExists(t, p.BaseDir)
	require.NoDirExists(t, p.CowDir)
	_, err = pb.Export(context.Background(), PublishedExportOptions{ID: p.ID, Databases: []string{"shop"}, To: t.TempDir(), Password: superPassword})
	require.ErrorIs(t, err, ErrNotUp)
}
