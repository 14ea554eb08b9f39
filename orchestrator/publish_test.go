package orchestrator

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pgporter/pgporter/chunkstore"
	"github.com/pgporter/pgporter/protocol"
)

func TestPublishJournal(t *testing.T) {
	j, err := OpenJournal(t.TempDir())
	require.NoError(t, err)
	_, err = j.GetPublication("p-nope")
	require.ErrorIs(t, err, ErrNoPublication)

	t0 := time.Now().UTC()
	require.NoError(t, j.PutPublication(&Publication{ID: "p-a", Port: 1, State: PubUp, Created: t0}))
	require.NoError(t, j.PutPublication(&Publication{ID: "p-b", Port: 2, State: PubStarting, Created: t0.Add(time.Second)}))
	// Sessions live beside publications and do not show up among them.
	require.NoError(t, j.Put(&Session{ID: "x-1", Created: t0}))
	require.NoError(t, j.UpdatePublication("p-a", func(p *Publication) { p.InstancePID = 42 }))

	p, err := j.GetPublication("p-a")
	require.NoError(t, err)
	require.Equal(t, 42, p.InstancePID)
	require.Equal(t, 1, p.Port)
	require.Equal(t, PubUp, p.State)
	list, err := j.ListPublications()
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, "p-b", list[0].ID) // newest first
	sessions, err := j.List()
	require.NoError(t, err)
	require.Len(t, sessions, 1)
}

func TestPublishOptionsValidate(t *testing.T) {
	ok := PublishOptions{Repo: "r", Port: 5433, Serve: []string{"x"}}
	for _, tc := range []struct {
		name string
		mod  func(*PublishOptions)
		err  string
	}{
		{"ok", func(*PublishOptions) {}, ""},
		{"all addresses", func(o *PublishOptions) { o.Listen = "*" }, ""},
		{"ipv6", func(o *PublishOptions) { o.Listen = "::1" }, ""},
		{"no repo", func(o *PublishOptions) { o.Repo = "" }, "repository"},
		{"no port", func(o *PublishOptions) { o.Port = 0 }, "not a TCP port"},
		{"big port", func(o *PublishOptions) { o.Port = 70000 }, "not a TCP port"},
		{"host name", func(o *PublishOptions) { o.Listen = "db.example" }, "not an IP address"},
		{"no serve", func(o *PublishOptions) { o.Serve = nil }, "serve command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := ok
			tc.mod(&o)
			err := o.Validate()
			if tc.err == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tc.err)
			}
		})
	}
}

func TestPublishListenNetworks(t *testing.T) {
	require.Equal(t, []string{"127.0.0.0/8"}, listenNetworks("127.0.0.1"))
	require.Equal(t, []string{"0.0.0.0/0", "::/0"}, listenNetworks("*"))
	require.Equal(t, []string{"0.0.0.0/0", "::/0"}, listenNetworks("0.0.0.0"))
	require.Equal(t, []string{"192.0.2.7/32"}, listenNetworks("192.0.2.7")) // on no interface here
}

func TestPublishPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	require.ErrorIs(t, checkPort("127.0.0.1", port), ErrPortInUse)

	pb, err := NewPublisher(t.TempDir(), nil)
	require.NoError(t, err)
	_, err = pb.Publish(context.Background(), PublishOptions{Repo: t.TempDir(), Port: port, Serve: []string{"/bin/true"}})
	require.ErrorIs(t, err, ErrPortInUse)
	list, err := pb.List(true)
	require.NoError(t, err)
	require.Empty(t, list)
}

// pubRepo is a repository with one restore point of a small fake data
// directory: Publish only resolves it, the fake serve commands never mount.
func pubRepo(t *testing.T) (dir, rp string) {
	t.Helper()
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "PG_VERSION"), []byte("15\n"), 0o600))
	require.NoError(t, os.Mkdir(filepath.Join(src, "global"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(src, "global", "pg_control"), make([]byte, 8192), 0o600))
	dir = filepath.Join(t.TempDir(), "repo")
	r, err := chunkstore.OpenRepo(context.Background(), dir, nil)
	require.NoError(t, err)
	defer r.Close()
	p, err := r.Backup(context.Background(), src, chunkstore.BackupOptions{})
	require.NoError(t, err)
	return dir, p.ID
}

func freeTestPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestPublishServeFails: the reason a serve process gives, or its log when
// it dies without one, is Publish's error.
func TestPublishServeFails(t *testing.T) {
	repo, rp := pubRepo(t)
	pb, err := NewPublisher(t.TempDir(), nil)
	require.NoError(t, err)
	for _, tc := range []struct {
		name, script, err string
	}{
		{"reason", `printf 'error: the restore point is broken\nin two lines' >&4`, "the restore point is broken\nin two lines"},
		{"died", `echo "panic: oops" >&2; exit 2`, "the serve process exited before the instance was up:\npanic: oops"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pb.Publish(context.Background(), PublishOptions{
				Repo: repo, RestorePoint: rp, Port: freeTestPort(t), Serve: []string{"/bin/sh", "-c", tc.script, "sh"},
			})
			require.EqualError(t, err, tc.err)
		})
	}
	_, err = pb.Publish(context.Background(), PublishOptions{Repo: repo, RestorePoint: "rp-nope", Port: freeTestPort(t), Serve: []string{"/bin/true"}})
	require.ErrorIs(t, err, chunkstore.ErrNoRestorePoint)
}

// TestPublishLifecycle drives Publish, List and Unpublish with a stand-in
// serve process: a shell that reports ready and waits, holding the lock.
// Unpublish stops a live one by SIGTERM; a killed one is reported dead and
// cleaned up directly.
func TestPublishLifecycle(t *testing.T) {
	repo, rp := pubRepo(t)
	home := t.TempDir()
	pb, err := NewPublisher(home, nil)
	require.NoError(t, err)
	serve := []string{"/bin/sh", "-c", `printf 'ready\n' >&4; exec 4>&-; exec sleep 600`, "sh"}
	start := func() *Publication {
		p, err := pb.Publish(context.Background(), PublishOptions{Repo: repo, Port: freeTestPort(t), Serve: serve})
		require.NoError(t, err)
		require.Equal(t, rp, p.RestorePoint)
		require.Positive(t, p.ServePID)
		t.Cleanup(func() { _ = syscall.Kill(p.ServePID, syscall.SIGKILL) })
		// Stand-ins for what a real serve process leaves: a CoW layer.
		require.NoError(t, os.MkdirAll(p.CowDir, 0o700))
		require.NoError(t, os.WriteFile(filepath.Join(p.CowDir, "1"), []byte("x"), 0o600))
		return p
	}
	state := func(id string) PubState {
		list, err := pb.List(true)
		require.NoError(t, err)
		for _, p := range list {
			if p.ID == id {
				return p.State
			}
		}
		t.Fatalf("publication %s not listed", id)
		return ""
	}

	t.Run("signalled", func(t *testing.T) {
		p := start()
		require.Equal(t, PubStarting, state(p.ID)) // the stand-in never journals "up"
		require.Positive(t, CowBytes(p))
		got, err := pb.Unpublish(context.Background(), p.ID)
		require.NoError(t, err)
		require.Equal(t, PubGone, got.State)
		require.NoDirExists(t, p.CowDir)
		got, err = pb.Unpublish(context.Background(), p.ID) // idempotent
		require.NoError(t, err)
		require.Equal(t, PubGone, got.State)
		list, err := pb.List(false)
		require.NoError(t, err)
		require.Empty(t, list)
	})
	t.Run("killed", func(t *testing.T) {
		p := start()
		require.NoError(t, syscall.Kill(p.ServePID, syscall.SIGKILL))
		deadline := time.Now().Add(30 * time.Second)
		for state(p.ID) != PubDead {
			require.True(t, time.Now().Before(deadline), "not reported dead")
			time.Sleep(5 * time.Millisecond) // polling another process's exit
		}
		got, err := pb.Unpublish(context.Background(), p.ID)
		require.NoError(t, err)
		require.Equal(t, PubGone, got.State)
		require.NoDirExists(t, p.CowDir)
	})
	_, err = pb.Unpublish(context.Background(), "p-nope")
	require.ErrorIs(t, err, ErrNoPublication)
}

func TestPublishRemoteHelpers(t *testing.T) {
	roots := []string{"/srv/dumps", "/data"}
	for _, tc := range []struct {
		dir string
		ok  bool
	}{
		{"/srv/dumps", true},
		{"/srv/dumps/a/b", true},
		{"/srv/dumpsX/a", false},
		{"/srv/dumps/../etc", false},
		{"relative/dir", false},
		{"/etc", false},
	} {
		_, err := confine(tc.dir, roots)
		require.Equal(t, tc.ok, err == nil, "%s: %v", tc.dir, err)
		if !tc.ok {
			require.ErrorIs(t, err, ErrBadPlan)
		}
	}
	_, err := confine("/srv/dumps", nil)
	require.Error(t, err)

	// A publication ID from the wire cannot name a file outside the journal.
	home := t.TempDir()
	jobs := &StagingJobs{Home: home, Serve: ServeCommand{Args: []string{"/bin/true"}}}
	for _, kind := range []protocol.JobKind{protocol.JobUnpublish, protocol.JobResume} {
		err := jobs.RunJob(context.Background(), &protocol.RunJob{Kind: kind, Version: protocol.JobVersion, Publication: "../../escape"}, func(*protocol.JobEvent) {})
		require.ErrorIs(t, err, ErrBadPlan, kind)
	}
	err = jobs.RunJob(context.Background(), &protocol.RunJob{Kind: protocol.JobResume, Version: protocol.JobVersion, Publication: "p-nope"}, func(*protocol.JobEvent) {})
	require.ErrorIs(t, err, ErrNoPublication)
	locks, err := filepath.Glob(filepath.Join(home, "orchestrator", "locks", "*"))
	require.NoError(t, err)
	require.Empty(t, locks)
	require.NoFileExists(t, filepath.Join(home, "escape.lock"))
}

// TestPublishResumeRecover drives Resume and Recover with the stand-in
// serve process of TestPublishLifecycle: a running publication is not
// resumed; a dead one is (same port, restarts counted); a failed resume
// that kept its layer may be resumed again, a failure without one not;
// Recover resumes dead publications with on-restart restart and removes
// those with cleanup.
func TestPublishResumeRecover(t *testing.T) {
	repo, _ := pubRepo(t)
	pb, err := NewPublisher(t.TempDir(), nil)
	require.NoError(t, err)
	serve := ServeCommand{Args: []string{"/bin/sh", "-c", `printf 'ready\n' >&4; exec 4>&-; exec sleep 600`, "sh"}}
	start := func(onRestart string) *Publication {
		p, err := pb.Publish(context.Background(), PublishOptions{Repo: repo, Port: freeTestPort(t), Serve: serve.Args, OnRestart: onRestart})
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(p.UpperDir(), 0o700)) // what a real serve process leaves
		return p
	}
	kill := func(p *Publication) {
		q, err := pb.j.GetPublication(p.ID)
		require.NoError(t, err)
		require.NoError(t, syscall.Kill(q.ServePID, syscall.SIGKILL))
		deadline := time.Now().Add(30 * time.Second)
		for pb.j.lockHeld(p) {
			require.True(t, time.Now().Before(deadline), "not dead")
			time.Sleep(5 * time.Millisecond) // polling another process's exit
		}
	}
	t.Cleanup(func() {
		list, _ := pb.j.ListPublications()
		for _, p := range list {
			if p.ServePID > 0 {
				_ = syscall.Kill(p.ServePID, syscall.SIGKILL)
			}
		}
	})
	ctx := context.Background()

	a := start(OnRestartRestart)
	_, err = pb.Resume(ctx, a.ID, serve)
	require.ErrorIs(t, err, ErrNotDead)
	kill(a)
	got, err := pb.Resume(ctx, a.ID, serve)
	require.NoError(t, err)
	require.Equal(t, a.Port, got.Port)
	require.Equal(t, 1, got.Restarts)
	require.DirExists(t, a.UpperDir())

	// A resume that failed keeps its layer, and may be tried again.
	kill(a)
	require.NoError(t, pb.j.UpdatePublication(a.ID, func(p *Publication) { p.State, p.Error = PubFailed, "resume failed" }))
	got, err = pb.Resume(ctx, a.ID, serve)
	require.NoError(t, err)
	require.Equal(t, 2, got.Restarts)
	kill(a)

	b := start(OnRestartCleanup)
	kill(b)
	c := start(OnRestartRestart)
	require.NoError(t, pb.j.UpdatePublication(c.ID, func(p *Publication) { p.State = PubFailed }))
	kill(c) // failed without a resume: nothing to resume on
	_, err = pb.Resume(ctx, c.ID, serve)
	require.ErrorIs(t, err, ErrNotDead)

	res, err := pb.Recover(ctx, serve)
	require.NoError(t, err)
	actions := map[string]string{}
	for _, r := range res {
		require.NoError(t, r.Err, r.ID)
		actions[r.ID] = r.Action
	}
	require.Equal(t, map[string]string{a.ID: OnRestartRestart, b.ID: OnRestartCleanup}, actions)
	got, err = pb.j.GetPublication(a.ID)
	require.NoError(t, err)
	require.Equal(t, 3, got.Restarts)
	require.True(t, pb.j.lockHeld(got))
	got, err = pb.j.GetPublication(b.ID)
	require.NoError(t, err)
	require.Equal(t, PubGone, got.State)
	require.NoDirExists(t, b.CowDir)
	got, err = pb.j.GetPublication(c.ID)
	require.NoError(t, err)
	require.Equal(t, PubFailed, got.State)
}
