package orchestrator

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgporter/pgporter/mover"
	"github.com/pgporter/pgporter/protocol"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// A peer trusted only with orchestrate used to choose the staging mover's
// staging directory, session IDs, local --to, OS user, local repository
// and a publication's listen address (issue 15: "orchestrate is
// root-equivalent"). These tests replay each attack over real QUIC on
// loopback against a real mover and check that it is refused and that
// nothing outside the mover's roots is created or removed.

// hostileMover is a staging mover with its own settings, and a peer that
// it trusts with orchestrate only.
type hostileMover struct {
	m          testMover
	jobs       *StagingJobs
	root       string // the mover's only root
	stagingDir string // the mover's --staging-dir
	sender     *mover.Sender
}

func newHostileMover(t *testing.T) *hostileMover {
	t.Helper()
	home, peerHome := t.TempDir(), t.TempDir()
	h := &hostileMover{root: t.TempDir(), stagingDir: t.TempDir()}
	h.jobs = &StagingJobs{Home: home, Roots: []string{h.root}, StagingDir: h.stagingDir,
		Serve: ServeCommand{Args: []string{"/bin/false"}}}
	h.m = serveMover(t, mover.ServerOptions{Home: home, Roots: []string{h.root}, Jobs: h.jobs})
	trust(t, home, identity(t, peerHome), mover.PermOrchestrate)
	var err error
	h.sender, err = mover.NewSender(peerHome, nil)
	require.NoError(t, err)
	t.Cleanup(func() { h.sender.Close() })
	return h
}

// run hands the mover a job, as any orchestrator can.
func (h *hostileMover) run(t *testing.T, jb *protocol.RunJob) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return h.sender.RunJob(ctx, h.m.addr, h.m.id, jb, func(*protocol.JobEvent) {})
}

// exportJob is the job of export session id with plan p.
func exportJob(id string, p Plan) *protocol.RunJob {
	return &protocol.RunJob{Kind: protocol.JobExport, Version: protocol.JobVersion, Session: id, Plan: planToWire(&p)}
}

// cancelJob is the job that cancels export session id.
func cancelJob(id string) *protocol.RunJob {
	return &protocol.RunJob{Kind: protocol.JobCancelExport, Version: protocol.JobVersion, Session: id}
}

// victim is a directory with a file, outside every root of the mover.
func victim(t *testing.T, dir string) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	f := filepath.Join(dir, "precious")
	require.NoError(t, os.WriteFile(f, []byte("keep me"), 0o644))
	return f
}

// TestPeerStagingDirRefused: before, a job with staging_dir outside every
// root, then a cancel of it, removed STAGING_DIR/SESSION. Now the job is
// refused with the mover's setting named, and the cancel removes nothing.
func TestPeerStagingDirRefused(t *testing.T) {
	h := newHostileMover(t)
	outside := t.TempDir()
	id := newSessionID(time.Now())
	precious := victim(t, filepath.Join(outside, id))

	plan := Plan{RepoPeer: h.m.spec(), Target: h.m.spec(), RestorePoint: "latest", Databases: []string{"shop"}, To: "/srv/x", StagingDir: outside}
	err := h.run(t, exportJob(id, plan))
	require.ErrorContains(t, err, "staging_dir is set by the staging mover (--staging-dir)")
	require.NoError(t, h.run(t, cancelJob(id)), "nothing to cancel: it never started")
	require.FileExists(t, precious)

	// The built-in default, or the mover's own value, is no choice: it
	// passes this check (and fails later, on the unreachable repository).
	plan.StagingDir = h.stagingDir
	err = h.run(t, exportJob(id, plan))
	require.Error(t, err)
	require.NotContains(t, err.Error(), "staging_dir")
}

// TestPeerCancelUnmarkedDir: a session journaled with a staging directory
// the mover does not own (a journal from before this check, or a path
// swapped under it) is cancelled without removing a directory that lacks
// the session's marker.
func TestPeerCancelUnmarkedDir(t *testing.T) {
	h := newHostileMover(t)
	outside := t.TempDir()
	id := newSessionID(time.Now())
	precious := victim(t, filepath.Join(outside, id))
	j, err := OpenJournal(h.jobs.Home)
	require.NoError(t, err)
	require.NoError(t, j.Put(&Session{ID: id, State: StateFailed, Created: time.Now().UTC(),
		Plan: Plan{StagingDir: outside, RepoPeer: h.m.spec(), Target: h.m.spec(), To: "/srv/x", Databases: []string{"shop"}}}))

	err = h.run(t, cancelJob(id))
	require.ErrorContains(t, err, OwnerMarker)
	require.FileExists(t, precious)

	// A marker of another session does not do either.
	require.NoError(t, os.WriteFile(filepath.Join(outside, id, OwnerMarker), []byte(newSessionID(time.Now().Add(time.Hour))), 0o644))
	require.ErrorContains(t, h.run(t, cancelJob(id)), "not session "+id)
	require.FileExists(t, precious)

	// Its own marker: the directory is pgporter's, and goes.
	require.NoError(t, os.WriteFile(filepath.Join(outside, id, OwnerMarker), []byte(id), 0o644))
	require.NoError(t, h.run(t, cancelJob(id)))
	require.NoDirExists(t, filepath.Join(outside, id))
}

// TestPeerToOutsideRoots: before, a job whose local to (no target: the
// staging host is the target) lay outside every root created it. Now it is
// refused and not created, also through a link inside a root that points
// out of it.
func TestPeerToOutsideRoots(t *testing.T) {
	h := newHostileMover(t)
	outside := t.TempDir()
	require.NoError(t, os.Symlink(outside, filepath.Join(h.root, "escape")))
	for _, to := range []string{
		filepath.Join(outside, "made"),
		filepath.Join(h.root, "escape", "made"),
		filepath.Join(h.root, "escape"),
		h.root + "/../" + filepath.Base(outside) + "/made",
	} {
		t.Run(to, func(t *testing.T) {
			plan := Plan{RepoPeer: h.m.spec(), RestorePoint: "latest", Databases: []string{"shop"}, To: to}
			err := h.run(t, exportJob(newSessionID(time.Now()), plan))
			require.Error(t, err)
			require.Regexp(t, "outside this mover's roots|clean absolute path", err.Error())
			require.NoDirExists(t, filepath.Join(outside, "made"))
		})
	}
	// --overwrite from a peer would rename and then delete what is in a root.
	plan := Plan{RepoPeer: h.m.spec(), RestorePoint: "latest", Databases: []string{"shop"}, To: filepath.Join(h.root, "in"), Overwrite: true}
	require.ErrorContains(t, h.run(t, exportJob(newSessionID(time.Now()), plan)), "overwrite is not accepted from a peer")

	// The same for an export from a publication on this mover.
	pj := &protocol.RunJob{Kind: protocol.JobExportPublished, Version: protocol.JobVersion, Session: newSessionID(time.Now()), Plan: planToWire(&Plan{Published: "p-1", Databases: []string{"shop"}, To: filepath.Join(h.root, "escape", "made")})}
	require.ErrorContains(t, h.run(t, pj), "outside this mover's roots")
	require.NoDirExists(t, filepath.Join(outside, "made"))
}

// TestPeerSessionIDs: before, any word was a session ID ("etc", with a
// staging_dir of "/", named /etc). Only the IDs pgporter makes pass now.
func TestPeerSessionIDs(t *testing.T) {
	h := newHostileMover(t)
	for _, id := range []string{"etc", "../x", "x-1", "", "x-20261126-040210-95042/", "x-20261126-040210-../../", "x-20261399-040210-950424", "x-20261126-040210-95042G", "X-20261126-040210-950424"} {
		t.Run(id, func(t *testing.T) {
			require.False(t, validSessionID(id))
			plan := Plan{RepoPeer: h.m.spec(), Target: h.m.spec(), To: "/srv/x", Databases: []string{"shop"}}
			cancelPublished := &protocol.RunJob{Kind: protocol.JobCancelExportPublished, Version: protocol.JobVersion, Session: id}
			for _, jb := range []*protocol.RunJob{exportJob(id, plan), cancelJob(id), cancelPublished} {
				err := h.run(t, jb)
				if id == "" {
					// A job of these kinds names a session: this one is not sent.
					require.ErrorIs(t, err, protocol.ErrProtocol)
					require.ErrorContains(t, err, "needs a session")
					continue
				}
				require.ErrorContains(t, err, "bad session ID")
			}
		})
	}
	require.True(t, validSessionID(newSessionID(time.Now())))
	require.True(t, validSessionID("x-20261126-040210-950424"))
}

// TestPeerHostSettingsRefused: the OS user, a local repository and a
// publication's listen address are the mover's; a peer's values are
// refused with the mover's flag named.
func TestPeerHostSettingsRefused(t *testing.T) {
	h := newHostileMover(t)
	repo := t.TempDir()
	exp := func(p Plan) *protocol.RunJob {
		p.Databases, p.RestorePoint = []string{"shop"}, "latest"
		if p.Target == "" {
			p.Target = h.m.spec()
		}
		p.To = "/srv/x"
		return exportJob(newSessionID(time.Now()), p)
	}
	for name, tc := range map[string]struct {
		job  *protocol.RunJob
		want string
	}{
		"export os_user":           {exp(Plan{RepoPeer: h.m.spec(), OSUser: "root"}), "os_user is set by the staging mover (--os-user)"},
		"export repo":              {exp(Plan{Repo: repo}), "repo is set by the staging mover (--job-repo)"},
		"export repo beside peer":  {exp(Plan{Repo: repo, RepoPeer: h.m.spec()}), "not a local repo"},
		"session staging_dir":      {&protocol.RunJob{Kind: protocol.JobExportPublished, Version: protocol.JobVersion, Session: newSessionID(time.Now()), Plan: planToWire(&Plan{Published: "p-1", Databases: []string{"a"}, To: h.root, StagingDir: "/"})}, "staging_dir is set by the staging mover (--staging-dir)"},
		"publish os_user":          {&protocol.RunJob{Kind: protocol.JobPublish, Version: protocol.JobVersion, Publish: publishToWire(PublishOptions{RepoPeer: h.m.spec(), Port: 5999, OSUser: "root"})}, "os_user is set by the staging mover (--os-user)"},
		"publish listen":           {&protocol.RunJob{Kind: protocol.JobPublish, Version: protocol.JobVersion, Publish: publishToWire(PublishOptions{RepoPeer: h.m.spec(), Port: 5999, Listen: "*"})}, "listen is set by the staging mover (--publish-listen)"},
		"publish repo":             {&protocol.RunJob{Kind: protocol.JobPublish, Version: protocol.JobVersion, Publish: publishToWire(PublishOptions{Repo: repo, Port: 5999})}, "repo is set by the mover (--job-repo)"},
		"publish repo not the one": {&protocol.RunJob{Kind: protocol.JobPublish, Version: protocol.JobVersion, Publish: publishToWire(PublishOptions{Repo: "/", Port: 5999})}, "repo is set by the mover (--job-repo)"},
	} {
		t.Run(name, func(t *testing.T) {
			err := h.run(t, tc.job)
			require.ErrorContains(t, err, tc.want)
		})
	}
	sessions, err := h.jobs.journal(t).List()
	require.NoError(t, err)
	require.Empty(t, sessions, "no refused job journaled a session")
	pubs, err := h.jobs.journal(t).ListPublications()
	require.NoError(t, err)
	require.Empty(t, pubs, "no refused job journaled a publication")

	// With --job-repo, a job may name that repository (links resolved),
	// and a job naming none gets it.
	h.jobs.Repo = repo
	link := filepath.Join(t.TempDir(), "repo-link")
	require.NoError(t, os.Symlink(repo, link))
	p := Plan{Repo: link, Target: h.m.spec()}
	require.NoError(t, h.jobs.confinePlan(&p))
	require.Equal(t, repo, p.Repo)
	p = Plan{To: filepath.Join(h.root, "new")}
	require.NoError(t, h.jobs.confinePlan(&p))
	require.Equal(t, filepath.Join(h.root, "new"), p.To)
	require.Equal(t, repo, p.Repo)
	require.Equal(t, h.stagingDir, p.StagingDir)
	require.Equal(t, "postgres", p.OSUser)
	o := PublishOptions{Repo: link, Listen: "127.0.0.1", OSUser: "postgres"}
	require.NoError(t, h.jobs.confinePublish(&o))
	require.Equal(t, repo, o.Repo)
}

func (j *StagingJobs) journal(t *testing.T) *Journal {
	jr, err := OpenJournal(j.Home)
	require.NoError(t, err)
	return jr
}

// TestOwnedDir: a directory is made with its session's marker, taken over
// by the same session only, and removed only with the marker.
func TestOwnedDir(t *testing.T) {
	base := t.TempDir()
	id, other := "x-20261126-040210-950424", "x-20261126-040210-950425"
	dir := filepath.Join(base, "staging", id)
	require.NoError(t, makeOwnedDir(dir, id))
	entries, err := os.ReadDir(filepath.Dir(dir))
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary directory is left")
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o755), fi.Mode().Perm())
	require.NoError(t, makeOwnedDir(dir, id), "a retry takes its own directory over")
	// An empty directory made by someone else is not taken over either.
	empty := filepath.Join(base, "staging", other)
	require.NoError(t, os.Mkdir(empty, 0o755))
	require.ErrorIs(t, makeOwnedDir(empty, other), ErrNotOwned)
	require.ErrorIs(t, makeOwnedDir(dir, other), ErrNotOwned)
	require.ErrorIs(t, removeOwned(dir, other), ErrNotOwned)
	require.DirExists(t, dir)
	require.NoError(t, removeOwned(dir, id))
	require.NoDirExists(t, dir)
	require.NoError(t, removeOwned(dir, id), "gone already")

	// A link planted where the session directory goes is not followed.
	target := t.TempDir()
	precious := victim(t, target)
	require.NoError(t, os.Symlink(target, dir))
	require.ErrorIs(t, makeOwnedDir(dir, id), ErrNotOwned)
	require.ErrorIs(t, removeOwned(dir, id), ErrNotOwned)
	require.NoError(t, os.WriteFile(filepath.Join(target, OwnerMarker), []byte(id), 0o644))
	require.ErrorIs(t, removeOwned(dir, id), ErrNotOwned, "a link to a marked directory is still a link")
	require.FileExists(t, precious)
}

// TestRemoveOwnedTree: removeOwned removes a staging directory of many
// files, nested directories and links (unlinking the files several at a
// time), and removes links as links: what they point at stays.
func TestRemoveOwnedTree(t *testing.T) {
	base := t.TempDir()
	id := "x-20261206-090000-000001"
	dir := filepath.Join(base, "staging", id)
	require.NoError(t, makeOwnedDir(dir, id))
	outside := t.TempDir()
	precious := victim(t, outside)
	for _, sub := range []string{"shop", "shop/deep/er", "crm"} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, sub), 0o755))
	}
	for i := range 700 {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "shop", fmt.Sprintf("%d.dat", i)), []byte("row"), 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "shop/deep/er/toc.dat"), nil, 0o600))
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, "shop/link-to-dir")))
	require.NoError(t, os.Symlink(precious, filepath.Join(dir, "crm/link-to-file")))
	require.NoError(t, removeOwned(dir, id))
	require.NoDirExists(t, dir)
	require.FileExists(t, precious)
	ents, err := os.ReadDir(outside)
	require.NoError(t, err)
	require.Len(t, ents, 1, "nothing beside the link's target was touched")
}

// TestRemoveOwnedKilled guards against a removal killed halfway leaving a
// staging directory without its marker, which the retried cleanup and a
// cancel then refused as not pgporter's: the marker goes last, so a kill
// before leaves the directory marked and one after leaves it empty, and an
// empty one is removed.
func TestRemoveOwnedKilled(t *testing.T) {
	base := t.TempDir()
	id := "x-20261207-120000-000001"
	dir := filepath.Join(base, "staging", id)
	require.NoError(t, makeOwnedDir(dir, id))
	for _, sub := range []string{"shop/deep", "crm"} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, sub), 0o755))
	}
	for i := range 200 {
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("%d.dat", i)), []byte("row"), 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "shop/deep/toc.dat"), nil, 0o600))
	var left []string
	markerRemoving = func(dir string) {
		ents, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, e := range ents {
			left = append(left, e.Name())
		}
	}
	t.Cleanup(func() { markerRemoving = nil })
	require.NoError(t, removeOwned(dir, id))
	require.Equal(t, []string{OwnerMarker}, left, "the marker is the last thing removed")
	require.NoDirExists(t, dir)

	// What a kill just after the marker's removal leaves.
	require.NoError(t, os.Mkdir(dir, 0o755))
	require.NoError(t, removeOwned(dir, id))
	require.NoDirExists(t, dir)

	// And a cancel of the session finds it so.
	home, to := t.TempDir(), t.TempDir()
	r := newRunner(t, home, nil)
	id = newSessionID(time.Now())
	require.NoError(t, r.j.Put(&Session{ID: id, State: StateFailed, Created: time.Now().UTC(),
		Plan: Plan{Repo: "/nonexistent", To: to, StagingDir: filepath.Join(base, "staging"), Databases: []string{"shop"}}}))
	require.NoError(t, os.Mkdir(filepath.Join(base, "staging", id), 0o755))
	s, err := r.Cancel(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, StateCancelled, s.State)
	require.NoDirExists(t, filepath.Join(base, "staging", id))
}

// TestCancelLeavesWhatIsNotOurs: a local cancel removes a session's
// staging directory only with its marker, and a link planted at a
// target's .partial only as a link: what it points at stays.
func TestCancelLeavesWhatIsNotOurs(t *testing.T) {
	home, to, sd := t.TempDir(), t.TempDir(), t.TempDir()
	r := newRunner(t, home, nil)
	id := newSessionID(time.Now())
	put := func() {
		require.NoError(t, r.j.Put(&Session{ID: id, State: StateFailed, Created: time.Now().UTC(),
			Plan: Plan{Repo: "/nonexistent", To: to, StagingDir: sd, Databases: []string{"shop"}}}))
	}
	put()
	precious := victim(t, filepath.Join(sd, id))
	_, err := r.Cancel(context.Background(), id)
	require.ErrorIs(t, err, ErrNotOwned)
	require.FileExists(t, precious)

	require.NoError(t, os.RemoveAll(filepath.Join(sd, id)))
	elsewhere := t.TempDir()
	precious = victim(t, elsewhere)
	require.NoError(t, os.Symlink(elsewhere, filepath.Join(to, "shop.partial")))
	s, err := r.Cancel(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, StateCancelled, s.State)
	require.FileExists(t, precious)
	_, err = os.Lstat(filepath.Join(to, "shop.partial"))
	require.NoError(t, err, "a link pgporter did not make is left")
}

// TestCancelPublishedLeavesUnmarkedDir: cancelling an export from a
// publication removes its staging dir only if the session marked it as its
// own; before, it ran RemoveAll on whatever stood at StagingDir/ID.
func TestCancelPublishedLeavesUnmarkedDir(t *testing.T) {
	home, sd := t.TempDir(), t.TempDir()
	r := newRunner(t, home, nil)
	id := newSessionID(time.Now())
	require.NoError(t, r.j.Put(&Session{ID: id, State: StateFailed, Created: time.Now().UTC(),
		Plan: Plan{Published: "p-gone", To: t.TempDir(), StagingDir: sd, Databases: []string{"shop"}}}))
	precious := victim(t, filepath.Join(sd, id))
	_, err := r.Cancel(context.Background(), id)
	require.ErrorIs(t, err, ErrNotOwned)
	require.FileExists(t, precious)

	require.NoError(t, os.RemoveAll(filepath.Join(sd, id)))
	require.NoError(t, makeOwnedDir(filepath.Join(sd, id), id))
	s, err := r.Cancel(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, StateCancelled, s.State)
	require.NoDirExists(t, filepath.Join(sd, id), "its own marked dir is removed")
}

// The plan's auth reaches a staging mover over the wire and is journaled
// there: a job with auth backup-hba makes a session with it, an unknown
// value is refused before anything is journaled.
func TestPeerAuthCarried(t *testing.T) {
	h := newHostileMover(t)
	p := Plan{RepoPeer: h.m.spec(), Target: h.m.spec(), To: "/srv/x", Databases: []string{"shop"}, RestorePoint: "latest", Auth: AuthBackupHBA, Staging: "x"}
	require.Equal(t, AuthBackupHBA, peerPlan(&p).Auth)
	p.Staging = ""

	err := h.run(t, exportJob(newSessionID(time.Now()), Plan{RepoPeer: p.RepoPeer, Target: p.Target, To: p.To, Databases: p.Databases, RestorePoint: "latest", Auth: "bogus"}))
	require.ErrorContains(t, err, `--auth "bogus" is neither`)
	sessions, err := h.jobs.journal(t).List()
	require.NoError(t, err)
	require.Empty(t, sessions)

	id := newSessionID(time.Now())
	_ = h.run(t, exportJob(id, p)) // fails later: the mover holds no repository
	s, err := h.jobs.journal(t).Get(id)
	require.NoError(t, err)
	require.Equal(t, AuthBackupHBA, s.Plan.Auth)
}

// TestPeerCancelMadeToConfined: a mover cancelling a session for a peer
// removes a --to the session created only inside its roots, never a root
// itself, and only the directory the record identifies: a journal whose
// record points elsewhere (from an older version, or swapped under it)
// removes nothing else.
func TestPeerCancelMadeToConfined(t *testing.T) {
	h := newHostileMover(t)
	j, err := OpenJournal(h.jobs.Home)
	require.NoError(t, err)
	made := func(t *testing.T, dir string) MadeDir {
		t.Helper()
		d, err := dirIdentity(unix.AT_FDCWD, dir)
		require.NoError(t, err)
		d.Path = dir
		return d
	}
	cancelWith := func(t *testing.T, to string, dirs ...MadeDir) {
		t.Helper()
		id := newSessionID(time.Now())
		require.NoError(t, j.Put(&Session{ID: id, State: StateFailed, Created: time.Now().UTC(),
			Plan:      Plan{StagingDir: h.stagingDir, To: to, Databases: []string{"shop"}},
			Resources: Resources{MadeTo: &MadeDirs{Dirs: dirs}}}))
		require.NoError(t, h.run(t, cancelJob(id)))
	}

	outside := filepath.Join(t.TempDir(), "empty")
	require.NoError(t, os.Mkdir(outside, 0o755))
	cancelWith(t, outside, made(t, outside))
	require.DirExists(t, outside, "outside every root")

	cancelWith(t, h.root, made(t, h.root))
	require.DirExists(t, h.root, "a root itself")

	inside := filepath.Join(h.root, "new")
	require.NoError(t, os.Mkdir(inside, 0o755))
	other := made(t, outside)
	other.Path = inside
	cancelWith(t, inside, other)
	require.DirExists(t, inside, "another directory's identity")

	cancelWith(t, filepath.Join(inside, "x"), made(t, inside))
	require.NoDirExists(t, inside, "made by the session, inside a root, empty: removed")
}
